package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// lockedBuffer is a log destination safe for a writer and a reader on
// different goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// receive waits for one value on c, failing the test after a generous
// deadline instead of hanging.
func receive[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// TestServeUntil drives the runner's loop through its SIGHUP channel: every
// SIGHUP is one reload, a failing reload does not stop the loop, and the
// end of the context ends it.
func TestServeUntil(t *testing.T) {
	errBroken := errors.New("config broken")
	cases := []struct {
		name    string
		hups    int
		results []error // what the reloads return, in turn; nil when they succeed
	}{
		{"no SIGHUP, no reload", 0, nil},
		{"one SIGHUP, one reload", 1, nil},
		{"each SIGHUP reloads", 3, nil},
		{"a failing reload keeps serving", 3, []error{errBroken, nil, errBroken}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs lockedBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			hup := make(chan os.Signal)
			reloaded := make(chan int)
			n := 0
			reload := func() error {
				n++
				reloaded <- n
				if n <= len(tc.results) {
					return tc.results[n-1]
				}
				return nil
			}
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			done := make(chan struct{})
			go func() {
				defer close(done)
				serveUntil(ctx, log, hup, reload)
			}()
			for i := 1; i <= tc.hups; i++ {
				hup <- syscall.SIGHUP
				if got := receive(t, reloaded, "a reload"); got != i {
					t.Fatalf("SIGHUP %d made reload %d", i, got)
				}
			}
			cancel(errors.New("SIGTERM"))
			receive(t, done, "serveUntil to return after the context ended")
			if n != tc.hups {
				t.Fatalf("%d reloads for %d SIGHUPs", n, tc.hups)
			}
			out := logs.String()
			if got := strings.Count(out, "SIGHUP: reloading"); got != tc.hups {
				t.Errorf("%d reload lines for %d SIGHUPs:\n%s", got, tc.hups, out)
			}
			if !strings.Contains(out, "shutting down") || !strings.Contains(out, "SIGTERM") {
				t.Errorf("no shutdown line naming its cause:\n%s", out)
			}
		})
	}
}

// stubRole records what the runner does to it.
type stubRole struct {
	started chan struct{}
	closed  atomic.Bool
}

func (r *stubRole) Start() error { close(r.started); return nil }
func (r *stubRole) Close() error { r.closed.Store(true); return nil }

// TestRunSignals runs a role command to the end with real signals sent to
// the process: SIGHUP reloads the running role (also when a reload fails),
// SIGTERM and SIGINT shut it down cleanly.
func TestRunSignals(t *testing.T) {
	cases := []struct {
		name      string
		hups      int
		reloadErr error
		end       syscall.Signal
	}{
		{"SIGHUPs, then SIGTERM", 2, nil, syscall.SIGTERM},
		{"failing reloads, then SIGTERM", 2, errors.New("config broken"), syscall.SIGTERM},
		{"SIGINT without SIGHUP", 0, nil, syscall.SIGINT},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &stubRole{started: make(chan struct{})}
			reloaded := make(chan struct{}, 1)
			var reloads atomic.Int32
			rc := roleCommand[struct{}]{
				name: "stub", defaultConfig: "stub.toml",
				load: func(string) (*struct{}, error) { return &struct{}{}, nil },
				build: func(*struct{}, *slog.Logger) (role, func() error, error) {
					return r, func() error {
						reloads.Add(1)
						reloaded <- struct{}{}
						return tc.reloadErr
					}, nil
				},
			}
			var stderr lockedBuffer
			code := make(chan int, 1)
			go func() { code <- rc.run([]string{"-log-format", "text"}, &stderr) }()
			receive(t, r.started, "the role to start")
			for i := range tc.hups {
				if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
				receive(t, reloaded, fmt.Sprintf("reload %d", i+1))
			}
			if err := syscall.Kill(os.Getpid(), tc.end); err != nil {
				t.Fatal(err)
			}
			if c := receive(t, code, "run to return"); c != 0 {
				t.Fatalf("exit code %d:\n%s", c, stderr.String())
			}
			if got := int(reloads.Load()); got != tc.hups {
				t.Fatalf("%d reloads for %d SIGHUPs", got, tc.hups)
			}
			if !r.closed.Load() {
				t.Fatal("the role was not closed")
			}
			if got := strings.Count(stderr.String(), "SIGHUP: reloading"); got != tc.hups {
				t.Fatalf("%d reload lines for %d SIGHUPs:\n%s", got, tc.hups, stderr.String())
			}
		})
	}
}
