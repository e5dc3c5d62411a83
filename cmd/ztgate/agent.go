package main

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"runtime"

	"github.com/ztgate/ztgate/agent"
	"github.com/ztgate/ztgate/conf"
)

// agentProcs is how many OS threads run the agent's Go code at once,
// unless GOMAXPROCS in its environment says otherwise. An agent carries one
// session, and each packet passes through a chain of goroutines (TUN
// reader, quic-go's connection and socket goroutines, the datagram reader):
// with more than one, each hand-off may wake another core, and on a host
// whose cores the agent shares with its applications that costs more than
// it gains. Measured (docs/performance.md, "The agent on one core"): round
// trips 16–19 % shorter and throughput the same or higher on 2 cores; one
// core carries more than 1 Gbit/s. Links faster than that want
// GOMAXPROCS=2 or more.
const agentProcs = 1

func runAgent(args []string, stdout, stderr io.Writer) int {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(agentProcs)
	}
	return roleCommand[conf.Agent]{
		name: "agent", defaultConfig: "/etc/ztgate/agent.toml", load: conf.LoadAgent,
		build: func(cfg *conf.Agent, log *slog.Logger) (role, func() error, error) {
			a, err := agent.New(cfg, agent.Options{}, log)
			if err != nil {
				return nil, nil, err
			}
			// SIGHUP re-reads the configuration file (new paths of the
			// certificate, key and CA apply; any other change names the keys
			// that wait for a restart) and the certificate, key and CA.
			return a, func() error { return errors.Join(a.Reload(), a.ReloadCredentials()) }, nil
		},
	}.run(args, stderr)
}
