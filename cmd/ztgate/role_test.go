package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/testlog"
)

// lockedBuffer is a log destination safe for a writer and a reader on
// different goroutines.
type lockedBuffer = testlog.Buffer

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

// slowRole is a role whose Close takes closeFor.
type slowRole struct{ closeFor time.Duration }

func (slowRole) Start() error   { return nil }
func (r slowRole) Close() error { time.Sleep(r.closeFor); return nil }

// TestRoleProcessChild is the process TestRoleSignals starts: a role
// command whose build takes a second (a gateway's first lookups) and whose
// Close takes ZTGATE_TEST_CLOSE. It is skipped in a normal run.
func TestRoleProcessChild(t *testing.T) {
	if os.Getenv("ZTGATE_TEST_CHILD") == "" {
		t.Skip("the child process of TestRoleSignals")
	}
	closeFor, _ := time.ParseDuration(os.Getenv("ZTGATE_TEST_CLOSE"))
	rc := roleCommand[struct{}]{name: "stub", defaultConfig: "x",
		load: func(string) (*struct{}, error) { return &struct{}{}, nil },
		build: func(*struct{}, *slog.Logger) (role, func() error, error) {
			time.Sleep(time.Second)
			return slowRole{closeFor}, func() error { return nil }, nil
		}}
	os.Exit(rc.run([]string{"-log-format", "text"}, os.Stderr))
}

// TestRoleSignals runs a role command in a child process (a copy of this
// test binary, stopped by its PID): a SIGHUP while it is still being built
// does not kill it, and a second SIGTERM or SIGINT during a slow shutdown
// ends it at once.
func TestRoleSignals(t *testing.T) {
	type child struct {
		p    *os.Process
		done chan struct{} // closed once it has exited, with err
		err  error
	}
	start := func(t *testing.T, closeFor string) *child {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestRoleProcessChild$")
		cmd.Env = append(os.Environ(), "ZTGATE_TEST_CHILD=1", "ZTGATE_TEST_CLOSE="+closeFor)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c := &child{p: cmd.Process, done: make(chan struct{})}
		go func() {
			c.err = cmd.Wait()
			close(c.done)
		}()
		t.Cleanup(func() {
			c.p.Kill()
			<-c.done
		})
		return c
	}
	wait := func(t *testing.T, c *child, d time.Duration) error {
		t.Helper()
		select {
		case <-c.done:
			return c.err
		case <-time.After(d):
			t.Fatalf("the process did not exit within %v", d)
			return nil
		}
	}
	t.Run("SIGHUP while building", func(t *testing.T) {
		c := start(t, "0s")
		time.Sleep(300 * time.Millisecond)
		c.p.Signal(syscall.SIGHUP)
		time.Sleep(1500 * time.Millisecond) // built and running by now
		c.p.Signal(syscall.SIGTERM)
		err := wait(t, c, 10*time.Second)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws := ee.Sys().(syscall.WaitStatus); ws.Signaled() {
				t.Fatalf("killed by %v", ws.Signal())
			}
		}
		if err != nil {
			t.Fatalf("exit: %v, want 0", err)
		}
	})
	t.Run("a second signal during a slow shutdown", func(t *testing.T) {
		c := start(t, "30s")
		time.Sleep(1500 * time.Millisecond)
		c.p.Signal(syscall.SIGTERM)
		time.Sleep(300 * time.Millisecond)
		second := time.Now()
		c.p.Signal(syscall.SIGINT)
		wait(t, c, 3*time.Second)
		if d := time.Since(second); d > time.Second {
			t.Errorf("exited %v after the second signal", d.Round(10*time.Millisecond))
		}
	})
}

// TestRoleMissingDefaultConfig: a role started without -config whose
// default file is not there says that the path is -config's default and
// what to do ("conf: open /etc/ztgate/gateway.toml: no such file or
// directory" was all); a -config that names a missing file gets no hint
// about defaults.
func TestRoleMissingDefaultConfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gateway.toml")
	rc := roleCommand[conf.Gateway]{name: "gateway", defaultConfig: missing, load: conf.LoadGateway}
	var stderr bytes.Buffer
	if code := rc.run(nil, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr.String())
	}
	want := "ztgate gateway: no configuration at " + missing + ", the default of -config: write it there, or pass -config FILE"
	if !strings.Contains(stderr.String(), "no such file or directory") || !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q, want the error and %q", stderr.String(), want)
	}
	stderr.Reset()
	if code := rc.run([]string{"-config", missing}, &stderr); code != 1 || strings.Contains(stderr.String(), "default") {
		t.Errorf("-config of a missing file: exit %d, stderr %q; want 1 and no word of defaults", code, stderr.String())
	}
}
