package relay

import (
	"errors"
	"fmt"

	"github.com/ztgate/ztgate/conf"
)

// errNotFromFile: Reload of a relay started from a configuration in
// memory.
var errNotFromFile = errors.New("the relay was not started from a file")

// Reload reads the configuration file again (SIGHUP) and validates it off
// to the side: on any error the running configuration stays and every
// error is logged and returned. The relay applies none of the file's keys
// live — ReloadCredentials re-reads the files its cert, key and ca name —
// so a valid file is compared with the running configuration and every key
// that differs is named in one warning: it takes effect at the next start.
func (r *Relay) Reload() error {
	if r.cfg.Path == "" {
		return fmt.Errorf("relay: reload: %w", errNotFromFile)
	}
	err := conf.ReloadStatic(r.cfg, r.cfg.Path, conf.LoadRelay, r.log)
	if err != nil {
		r.m.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("relay: reload: %w", err)
	}
	r.m.reloads.WithLabelValues("ok").Inc()
	return nil
}
