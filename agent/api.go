package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
)

// startAPI serves the agent's local API on [api] listen (off by default):
// GET /healthz and GET /metrics, both open like on every role, and
// GET /v1/status (Status) and the Go profiles, behind [api] token_file when
// one is set.
func (a *Agent) startAPI() error {
	api, err := adminapi.Start(adminapi.Config{
		Listen: a.cfg.API.Listen, TokenFile: a.cfg.API.TokenFile, Registry: a.m.reg, Log: a.log, V1: a.v1(),
	})
	if err != nil {
		return fmt.Errorf("agent: api: %w", err)
	}
	a.api = api
	return nil
}

// APIAddr returns the address the local API listens on, or "" when off.
func (a *Agent) APIAddr() string { return a.api.Addr() }

// stopAPI shuts the local API down, waiting at most a second for requests.
func (a *Agent) stopAPI() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.api.Shutdown(ctx)
}
