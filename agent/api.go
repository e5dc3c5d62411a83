package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// startAPI serves the agent's local API on [api] listen (off by default):
// GET /healthz and GET /metrics, both open like on every role. The agent
// has no /v1/ API, so [api] token_file protects nothing here.
func (a *Agent) startAPI() error {
	if !a.cfg.API.Listen.IsValid() {
		return nil
	}
	l, err := net.Listen("tcp", a.cfg.API.Listen.String())
	if err != nil {
		return fmt.Errorf("agent: api: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	a.api = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	a.apiL = l
	a.wg.Go(func() {
		if err := a.api.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("api stopped", "err", err)
		}
	})
	a.log.Info("api listening", "addr", l.Addr().String())
	return nil
}

// APIAddr returns the address the local API listens on, or "" when off.
func (a *Agent) APIAddr() string {
	if a.apiL == nil {
		return ""
	}
	return a.apiL.Addr().String()
}

// stopAPI shuts the local API down, waiting at most a second for requests.
func (a *Agent) stopAPI() {
	if a.api == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.api.Shutdown(ctx)
}
