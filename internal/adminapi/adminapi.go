// Package adminapi is the HTTP plumbing the roles' admin APIs share: a
// server with timeouts on every phase of a request, /healthz and /metrics
// open, the bearer token (compared in constant time) in front of /v1/ and
// the profiles, the refusal of what a web page could make a browser send
// (browsers.go), the JSON answers, and the bounded reading of request
// bodies. It counts what it refuses: rejected requests and connections cut
// off by a timeout (metrics.go, conn.go). The roles own their /v1/ routes.
package adminapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ztgate/ztgate/internal/listenaddr"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures a Server.
type Config struct {
	Listen    netip.AddrPort // invalid: no server
	TokenFile string         // "" : /v1/ is open
	Registry  *prometheus.Registry
	// V1 serves /v1/...; nil serves /healthz and /metrics only.
	V1  http.Handler
	Log *slog.Logger
}

// Server is a running admin API.
type Server struct {
	srv    *http.Server
	l      net.Listener
	wg     sync.WaitGroup
	active atomic.Int64 // requests in a handler
}

// Start listens and serves; it returns a nil Server when cfg.Listen is
// invalid (the API is off).
func Start(cfg Config) (*Server, error) {
	if !cfg.Listen.IsValid() {
		return nil, nil
	}
	token, err := readToken(cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, err
	}
	l, err := listenaddr.Listen(cfg.Listen.String())
	if err != nil {
		return nil, err
	}
	s := serve(l, newServer(handler(token, cfg.Registry, cfg.V1, m), m, defaultTimeouts()), cfg.Log)
	if cfg.Log != nil {
		cfg.Log.Info("api listening", "addr", l.Addr().String(), "token", token != "")
		if token == "" && cfg.V1 != nil && !cfg.Listen.Addr().IsLoopback() {
			cfg.Log.Warn("the API listens beyond loopback without a token: anyone who reaches it can use /v1/; set [api] token_file",
				"addr", l.Addr().String())
		}
	}
	return s, nil
}

// serve serves srv on l until Shutdown.
func serve(l net.Listener, srv *http.Server, log *slog.Logger) *Server {
	s := &Server{l: l, srv: srv}
	h := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.active.Add(1)
		defer s.active.Add(-1)
		h.ServeHTTP(w, r)
	})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(listener{l}); err != nil && !errors.Is(err, http.ErrServerClosed) && log != nil {
			log.Error("api stopped", "err", err)
		}
	}()
	return s
}

// ReadHeaderTimeout bounds how long a client may take to send a request's
// headers.
const ReadHeaderTimeout = 5 * time.Second

// timeouts bound each phase of a request (http.Server's fields of the
// same names).
type timeouts struct {
	readHeader, read, write, idle time.Duration
}

func defaultTimeouts() timeouts {
	return timeouts{readHeader: ReadHeaderTimeout, read: 10 * time.Second, write: 30 * time.Second, idle: 60 * time.Second}
}

// newServer is an http.Server with timeouts on every phase, so that a slow
// or stalled client holds only its own connection, and for a bounded time;
// it counts the connections it cuts off in m. Its connections must come
// from a listener{} for that.
func newServer(h http.Handler, m *metrics, t timeouts) *http.Server {
	return &http.Server{
		Handler:           inHandler(h),
		ReadHeaderTimeout: t.readHeader,
		ReadTimeout:       t.read,
		WriteTimeout:      t.write,
		IdleTimeout:       t.idle,
		MaxHeaderBytes:    64 << 10,
		ConnState:         m.connState,
		ConnContext:       connContext,
	}
}

// Addr is the address the server listens on; "" for a nil Server.
func (s *Server) Addr() string {
	if s == nil {
		return ""
	}
	return s.l.Addr().String()
}

// Shutdown stops the server within ctx and waits for it: requests still
// running when ctx is done (a CPU profile of 30 s, say) have their
// connections closed, which cancels their contexts, and are waited for up
// to handlerGrace more.
func (s *Server) Shutdown(ctx context.Context) {
	if s == nil {
		return
	}
	if s.srv.Shutdown(ctx) != nil {
		s.srv.Close()
	}
	s.wg.Wait()
	for deadline := time.Now().Add(handlerGrace); s.active.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// handlerGrace bounds the wait for handlers whose connections Shutdown
// closed: each returns once it notices its request's context is done.
const handlerGrace = 5 * time.Second

// Handler routes /healthz and /metrics (open), v1 and the Go profiles
// (behind the token when there is one), and counts the requests it
// rejects in reg. It refuses the requests a web page could make a
// browser send (GuardBrowsers). Like prometheus.MustRegister, it panics when reg holds
// other collectors under the API's metric names.
func Handler(token string, reg *prometheus.Registry, v1 http.Handler) http.Handler {
	m, err := newMetrics(reg)
	if err != nil {
		panic(err)
	}
	return handler(token, reg, v1, m)
}

func handler(token string, reg *prometheus.Registry, v1 http.Handler, m *metrics) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "ok")
	})
	if reg != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	if v1 != nil {
		mux.Handle("/v1/", requireToken(token, routed(v1)))
	}
	mux.Handle("/debug/pprof/", requireToken(token, ProfileHandler()))
	return withMetrics(m, GuardBrowsers(token, routed(mux)))
}

// ProfileHandler serves Go's profiles under /debug/pprof/: the index (and
// the named profiles through it), a CPU profile and an execution trace.
// It checks no token: the caller puts it behind one, or on loopback.
func ProfileHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// readToken reads a bearer token file; no file means no token.
func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return t, nil
}

// requireToken checks the bearer token in constant time; behind Handler,
// it counts the requests it refuses.
func requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ztgate"`)
			Reject(w, r, http.StatusUnauthorized, Unauthorized, errors.New("missing or wrong bearer token"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// WriteJSON answers v as indented JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Bounds of an errors answer: a body of 1 MiB naming 250,000 bad backends
// made 250,000 errors, 28 MiB of answer (and one error may quote a value
// of nearly 1 MiB), built in memory and written to a client that need not
// read it.
const (
	maxErrors   = 64   // errors listed; one last entry counts the rest
	maxErrorLen = 1024 // bytes of one error's message, cut on a rune
)

// WriteErrors answers {"errors": [...]}: at most maxErrors of errs, each cut
// to maxErrorLen bytes, and how many more there were.
func WriteErrors(w http.ResponseWriter, status int, errs ...error) {
	WriteJSON(w, status, map[string][]string{"errors": errorMessages(errs)})
}

// errorMessages are the messages WriteErrors lists.
func errorMessages(errs []error) []string {
	msgs := make([]string, 0, min(len(errs), maxErrors+1))
	for _, e := range errs[:min(len(errs), maxErrors)] {
		msgs = append(msgs, cutMessage(e.Error(), maxErrorLen))
	}
	if more := len(errs) - maxErrors; more > 0 {
		msgs = append(msgs, fmt.Sprintf("… and %d more errors", more))
	}
	return msgs
}

// cutMessage cuts s to at most n bytes, on a rune boundary, marking the cut.
func cutMessage(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
