package main

import (
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
			return r, r.ReloadCredentials, nil // SIGHUP: certificate, key and CA
		},
	}.run(args, stderr)
}
