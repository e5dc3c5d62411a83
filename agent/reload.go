package agent

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// errNotFromFile: Reload of an agent started from a configuration in
// memory.
var errNotFromFile = errors.New("the agent was not started from a file")

// Reload reads the configuration file again (SIGHUP) and validates it off
// to the side: on any error the running configuration stays and every
// error is logged and returned. The agent applies live of the file's keys
// only the paths of its [tunnel] cert, key and ca: when they name other
// files, the next connection to the server (and every direct path dialled
// from then on) uses those, once all three loaded and passed the checks
// of the start (a failure is the reload's, and keeps the files in use);
// ReloadCredentials re-reads the files in use. The server, the TUN device
// and the DNS listeners are set up once: every other key that differs
// from the running configuration is named in one warning, and takes
// effect at the next start.
func (a *Agent) Reload() error {
	if a.cfg.Path == "" {
		return fmt.Errorf("agent: reload: %w", errNotFromFile)
	}
	err := conf.ReloadRole(a.cfg.Path, conf.LoadAgent, a.applyReload, a.log)
	if err != nil {
		a.m.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("agent: reload: %w", err)
	}
	a.m.reloads.WithLabelValues("ok").Inc()
	return nil
}

// applyReload checks next's tun.address against the server's pool
// (checkAddress), then switches the credentials to the TLS files next
// names when their paths changed, and returns the configuration the agent
// then runs: the one it started with, with the TLS files in use. A change
// of insecure_allow_unauthenticated waits for the restart, and so do the
// paths that change with it (they are for the other mode): those are
// loaded and checked as the start will load them, and a failure fails the
// reload. So do the paths that change with tunnel.server: the server is
// dialled again only at the restart, and the new CA, applied now, would
// be checked against the server the agent runs with (the session's
// recheck may end it, and the redial to that server be refused): the
// agent would be cut off until the restart. ReloadCredentials then leaves
// the files' contents alone too, for the same reason.
func (a *Agent) applyReload(next *conf.Agent) (*conf.Agent, error) {
	if err := a.checkAddress(next); err != nil {
		return nil, err
	}
	running := *a.cfg
	f := a.creds.Files()
	running.Tunnel.Cert, running.Tunnel.Key, running.Tunnel.CA = f.Cert, f.Key, f.CA
	nt := next.Tunnel
	// The server it dials, by address or by the name it verifies.
	moves := nt.Server != running.Tunnel.Server || nt.ServerName != running.Tunnel.ServerName
	if err := a.applyTunnelFiles(&running, next, moves); err != nil {
		return nil, err
	}
	a.serverMoves.Store(moves) // once the reload succeeded
	return &running, nil
}

// applyTunnelFiles switches the credentials to the files next names when
// their paths changed, and records them in running; paths that wait for
// the restart (with a change of insecure_allow_unauthenticated, or with
// the server: waiting) are loaded and checked as the start will load them.
func (a *Agent) applyTunnelFiles(running, next *conf.Agent, waiting bool) error {
	nt := next.Tunnel
	keys := running.OwnTLS().ChangedFiles(next.OwnTLS())
	if len(keys) == 0 {
		return nil
	}
	if nt.Insecure != running.Tunnel.Insecure || waiting {
		if _, err := tunnel.NewCredentials(tunnel.CredentialsConfig{
			CertFile: nt.Cert, KeyFile: nt.Key, CAFile: nt.CA, Insecure: nt.Insecure, Role: tunnel.RoleAgent,
		}, nil); err != nil {
			return fmt.Errorf("%s: %w", strings.Join(keys, ", "), err)
		}
		return nil
	}
	if err := a.creds.ReloadFiles(tunnel.Files{Cert: nt.Cert, Key: nt.Key, CA: nt.CA}); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(keys, ", "), err)
	}
	running.Tunnel.Cert, running.Tunnel.Key, running.Tunnel.CA = nt.Cert, nt.Key, nt.CA
	return nil
}

// checkAddress refuses a new tun.address inside the VIP pool the server
// pushes: the file is validated against the default pool (the agent's
// pool comes with the directory), but the next start, with the same
// server, would refuse the server's pool for holding the agent's address
// (poolProblem), and every service in it. With another server the pool
// to come is unknown, and the address waits for the restart.
func (a *Agent) checkAddress(next *conf.Agent) error {
	addr := next.TUN.Address
	if addr == a.cfg.TUN.Address || next.Tunnel.Server != a.cfg.Tunnel.Server {
		return nil
	}
	if pool := a.dir.Load().pool; pool.Contains(addr) {
		return fmt.Errorf("tun.address: %s is inside the VIP pool %s the server pushes: the agent would refuse that pool, and its services, at the next start", addr, pool)
	}
	return nil
}
