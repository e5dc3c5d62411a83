package agent

import (
	"errors"
	"fmt"

	"github.com/ztgate/ztgate/conf"
)

// errNotFromFile: Reload of an agent started from a configuration in
// memory.
var errNotFromFile = errors.New("the agent was not started from a file")

// Reload reads the configuration file again (SIGHUP) and validates it off
// to the side: on any error the running configuration stays and every
// error is logged and returned. The agent applies none of the file's keys
// live — ReloadCredentials re-reads the files its [tunnel] cert, key and ca
// name; the server, the TUN device and the DNS listeners are set up once —
// so a valid file is compared with the running configuration and every key
// that differs is named in one warning: it takes effect at the next start.
func (a *Agent) Reload() error {
	if a.cfg.Path == "" {
		return fmt.Errorf("agent: reload: %w", errNotFromFile)
	}
	err := conf.ReloadStatic(a.cfg, a.cfg.Path, conf.LoadAgent, a.log)
	if err != nil {
		a.m.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("agent: reload: %w", err)
	}
	a.m.reloads.WithLabelValues("ok").Inc()
	return nil
}
