package main

import (
	"io"
	"log/slog"

	"github.com/ztgate/ztgate/agent"
	"github.com/ztgate/ztgate/conf"
)

func runAgent(args []string, stdout, stderr io.Writer) int {
	return roleCommand[conf.Agent]{
		name: "agent", defaultConfig: "/etc/ztgate/agent.toml", load: conf.LoadAgent,
		build: func(cfg *conf.Agent, log *slog.Logger) (role, func() error, error) {
			a, err := agent.New(cfg, agent.Options{}, log)
			if err != nil {
				return nil, nil, err
			}
			return a, a.ReloadCredentials, nil // SIGHUP: certificate, key and CA
		},
	}.run(args, stderr)
}
