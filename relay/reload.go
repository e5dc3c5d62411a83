package relay

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// errNotFromFile: Reload of a relay started from a configuration in
// memory.
var errNotFromFile = errors.New("the relay was not started from a file")

// Reload reads the configuration file again (SIGHUP) and validates it off
// to the side: on any error the running configuration stays and every
// error is logged and returned. The relay applies live of the file's keys
// only the paths of its TLS files: when cert, key or ca name other files,
// new handshakes use those, once all three loaded and passed the checks
// of the start (a failure is the reload's, and keeps the files in use);
// ReloadCredentials re-reads the files in use. Every other key that
// differs from the running configuration is named in one warning: it
// takes effect at the next start.
func (r *Relay) Reload() error {
	if r.cfg.Path == "" {
		return fmt.Errorf("relay: reload: %w", errNotFromFile)
	}
	err := conf.ReloadRole(r.cfg.Path, conf.LoadRelay, r.applyReload, r.log)
	if err != nil {
		r.m.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("relay: reload: %w", err)
	}
	r.m.reloads.WithLabelValues("ok").Inc()
	return nil
}

// applyReload switches the credentials to the TLS files next names when
// their paths changed, and returns the configuration the relay then runs:
// the one it started with, with the TLS files in use. A change of
// insecure_allow_unauthenticated waits for the restart, and so do the
// paths that change with it (they are for the other mode).
func (r *Relay) applyReload(next *conf.Relay) (*conf.Relay, error) {
	running := *r.cfg
	f := r.creds.Files()
	running.Cert, running.Key, running.CA = f.Cert, f.Key, f.CA
	keys := running.OwnTLS().ChangedFiles(next.OwnTLS())
	if len(keys) == 0 || next.Insecure != running.Insecure {
		return &running, nil
	}
	if err := r.creds.ReloadFiles(tunnel.Files{Cert: next.Cert, Key: next.Key, CA: next.CA}); err != nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(keys, ", "), err)
	}
	running.Cert, running.Key, running.CA = next.Cert, next.Key, next.CA
	return &running, nil
}
