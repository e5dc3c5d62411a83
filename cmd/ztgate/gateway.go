package main

import (
	"errors"
	"io"
	"log/slog"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/gateway"
)

func runGateway(args []string, stdout, stderr io.Writer) int {
	return roleCommand[conf.Gateway]{
		name: "gateway", defaultConfig: "/etc/ztgate/gateway.toml", load: conf.LoadGateway,
		build: func(cfg *conf.Gateway, log *slog.Logger) (role, func() error, error) {
			gw, err := gateway.New(cfg, gateway.Options{}, log)
			if err != nil {
				return nil, nil, err
			}
			// SIGHUP reloads the configuration and the tunnel credentials.
			return gw, func() error {
				_, err := gw.Reload()
				return errors.Join(err, gw.ReloadCredentials())
			}, nil
		},
	}.run(args, stderr)
}
