package relay

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ztgate/ztgate/catalog"
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
// takes effect at the next start; [[pin]] tables that start would refuse
// fail the reload (checkPinsAtStart).
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

// applyReload checks that next's state_dir is free (checkStateDirFree)
// and next's [[pin]] tables against the VIP state the
// next start opens (checkPinsAtStart), then switches the credentials to
// the TLS files next names when their paths changed, and returns the
// configuration the relay then runs: the one it started with, with the
// TLS files in use. A change of insecure_allow_unauthenticated waits for
// the restart, and so do the paths that change with it (they are for the
// other mode): those are loaded and checked as the start will load them,
// and a failure fails the reload.
func (r *Relay) applyReload(next *conf.Relay) (*conf.Relay, error) {
	if err := checkStateDirFree(r.cfg.StateDir, next.StateDir); err != nil {
		return nil, err
	}
	if err := r.checkPinsAtStart(next); err != nil {
		return nil, err
	}
	running := *r.cfg
	f := r.creds.Files()
	running.Cert, running.Key, running.CA = f.Cert, f.Key, f.CA
	keys := running.OwnTLS().ChangedFiles(next.OwnTLS())
	if len(keys) == 0 {
		return &running, nil
	}
	if next.Insecure != running.Insecure {
		if _, err := tunnel.NewCredentials(tunnel.CredentialsConfig{
			CertFile: next.Cert, KeyFile: next.Key, CAFile: next.CA, Insecure: next.Insecure, Role: tunnel.RoleRelay,
		}, nil); err != nil {
			return nil, fmt.Errorf("%s: %w", strings.Join(keys, ", "), err)
		}
		return &running, nil
	}
	if err := r.creds.ReloadFiles(tunnel.Files{Cert: next.Cert, Key: next.Key, CA: next.CA}); err != nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(keys, ", "), err)
	}
	running.Cert, running.Key, running.CA = next.Cert, next.Key, next.CA
	return &running, nil
}

// checkStateDirFree refuses a relay.state_dir (restart-only) that a
// reload moves to a directory whose lock another process holds: the next
// start would refuse it (catalog.ErrStateDirInUse), after the reload named
// it for the restart. The same directory under another spelling is the one
// this relay holds; a directory not there yet is the start's to judge.
func checkStateDirFree(cur, next string) error {
	if err := catalog.ProbeStateDir(cur, next); err != nil {
		return fmt.Errorf("relay.state_dir: the relay would not start with it: %w", err)
	}
	return nil
}

// checkPinsAtStart refuses next's [[pin]] tables when the relay would not
// start with them: New allocates the pins in the VIP state of the state
// directory before any service registers, and refuses a pin on a VIP that
// state holds for another service (allocated, or released within its
// hold-down), e.g. a pin moved from one service to another. A reload
// names the changed pins for the restart, so it must not take a file the
// restart then refuses. The check runs New's allocation on a copy of the
// state file, in a directory of its own, and changes nothing; it is
// skipped, with a warning, when no copy can be made. Pins that are the
// running ones in the running pool are reserved already.
func (r *Relay) checkPinsAtStart(next *conf.Relay) error {
	cur := r.cfg
	if len(next.Pins) == 0 || (slices.Equal(next.Pins, cur.Pins) && next.Pool == cur.Pool &&
		next.Pool6 == cur.Pool6 && next.StateDir == cur.StateDir && next.VIPHoldDown == cur.VIPHoldDown) {
		return nil
	}
	dir, err := os.MkdirTemp("", "ztgate-relay-pins-")
	if err != nil {
		r.log.Warn("reload: the pins are not checked against the VIP state", "err", err)
		return nil
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(next.StateDir, catalog.StateFileName)
	state, err := os.ReadFile(file)
	switch {
	case errors.Is(err, fs.ErrNotExist): // a fresh state: nothing held
	case err != nil:
		return fmt.Errorf("relay.state_dir: %w", err)
	default:
		if err := os.WriteFile(filepath.Join(dir, catalog.StateFileName), state, 0o600); err != nil {
			r.log.Warn("reload: the pins are not checked against the VIP state", "err", err)
			return nil
		}
	}
	pool, _, err := catalog.OpenPool(catalog.PoolConfig{
		Prefix: next.Pool, Prefix6: next.Pool6, StateDir: dir, HoldDown: next.VIPHoldDown, Now: r.opts.Now,
	})
	if err != nil {
		return fmt.Errorf("relay.state_dir: %s (checked as a copy): %w", file, err)
	}
	defer pool.Close()
	if err := acquirePins(pool, pinPairs(next.Pins)); err != nil {
		return fmt.Errorf("pin: the relay would not start with them: %w", err)
	}
	return nil
}
