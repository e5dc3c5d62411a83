package main

import (
	"errors"
	"io"
	"log/slog"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/relay"
)

func runRelay(args []string, stdout, stderr io.Writer) int {
	return roleCommand[conf.Relay]{
		name: "relay", defaultConfig: "/etc/ztgate/relay.toml", load: conf.LoadRelay,
		build: func(cfg *conf.Relay, log *slog.Logger) (role, func() error, error) {
			r, err := relay.New(cfg, relay.Options{}, log)
			if err != nil {
				return nil, nil, err
			}
			// SIGHUP re-reads the configuration file (new paths of the
			// certificate, key and CA apply; any other change names the keys
			// that wait for a restart) and the certificate, key and CA.
			return r, func() error { return errors.Join(r.Reload(), r.ReloadCredentials()) }, nil
		},
	}.run(args, stderr)
}
