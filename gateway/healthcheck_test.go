package gateway

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// scriptProber answers checks from a script ('+' success, '-' failure;
// past its end, success) and tells the test about each call.
type scriptProber struct {
	mu     sync.Mutex
	script string
	calls  int
	closed bool
}

func (p *scriptProber) probe(ctx context.Context, target netip.AddrPort) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := p.calls
	p.calls++
	if i < len(p.script) && p.script[i] == '-' {
		return errors.New("scripted failure")
	}
	return nil
}

func (p *scriptProber) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
}

func TestCheckerDelays(t *testing.T) {
	const interval = 10 * time.Second
	cases := []struct {
		name        string
		randN       func(n int64) int64
		first, next time.Duration
	}{
		{"lowest draw", func(int64) int64 { return 0 }, 0, 9 * time.Second},
		{"highest draw", func(n int64) int64 { return n - 1 }, interval - 1, 11 * time.Second},
		{"middle draw", func(n int64) int64 { return n / 2 }, interval / 2, interval},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &checker{spec: catalog.Health{Interval: interval}, randN: tc.randN}
			if got := c.firstDelay(); got != tc.first {
				t.Errorf("first delay %v, want %v", got, tc.first)
			}
			if got := c.nextDelay(); got != tc.next {
				t.Errorf("next delay %v, want %v", got, tc.next)
			}
		})
	}
	t.Run("real draws stay in bounds", func(t *testing.T) {
		c := &checker{spec: catalog.Health{Interval: interval}, randN: defaultRandN}
		for range 1000 {
			if d := c.firstDelay(); d < 0 || d >= interval {
				t.Fatalf("first delay %v outside [0, %v)", d, interval)
			}
			if d := c.nextDelay(); d < 9*time.Second || d > 11*time.Second {
				t.Fatalf("next delay %v outside interval ± 10%%", d)
			}
		}
	})
}

// TestCheckerSchedule runs a checker on a fake clock: checks come at the
// jittered times, results drive the backend's state machine, and stop
// waits for the checker and closes its prober.
func TestCheckerSchedule(t *testing.T) {
	cases := []struct {
		name   string
		script string
		rise   int
		fall   int
		states string // after each check, as in TestBackendStateMachine
	}{
		{"healthy backend comes up", "+++", 2, 3, "uUU"},
		{"dead backend goes down and recovers", "---++", 2, 3, "uuDDU"},
		{"flapping within fall stays up", "++-+-+", 2, 2, "uUUUUU"},
	}
	letter := map[backendState]byte{stateUnknown: 'u', stateUp: 'U', stateDown: 'D'}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			const interval = time.Second
			clk := newFakeClock()
			p := &scriptProber{script: tc.script}
			b := &backend{addr: netip.MustParseAddr("192.0.2.10")}
			spec := catalog.Health{Type: catalog.HealthTCP, Interval: interval, Timeout: interval / 2, Rise: tc.rise, Fall: tc.fall}
			reports := make(chan time.Time, len(tc.script))
			c := &checker{
				target: netip.MustParseAddrPort("192.0.2.10:80"),
				spec:   spec,
				probe:  p,
				clock:  clk,
				randN:  func(n int64) int64 { return n / 4 },
				report: func(err error, took time.Duration) {
					msg := ""
					if err != nil {
						msg = err.Error()
					}
					b.record(msg, spec.Rise, spec.Fall, clk.Now())
					reports <- clk.Now()
				},
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				c.run(ctx)
			}()
			start := clk.Now()
			want := []time.Duration{interval / 4} // first: randN(interval)
			for i := 1; i < len(tc.script); i++ {
				// then interval - 10% + randN(20% + 1)
				want = append(want, want[i-1]+interval-interval/10+(2*interval/10+1)/4)
			}
			var got []byte
			for i := range tc.script {
				clk.waitPending(t, 1)
				d, _ := clk.nextDeadline()
				clk.Advance(d)
				select {
				case at := <-reports:
					if at.Sub(start) != want[i] {
						t.Fatalf("check %d at %v, want %v", i, at.Sub(start), want[i])
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("check %d did not run", i)
				}
				got = append(got, letter[b.state])
			}
			if string(got) != tc.states {
				t.Fatalf("states %q, want %q", got, tc.states)
			}
			clk.waitPending(t, 1)
			cancel()
			<-done
			if !p.closed || p.calls != len(tc.script) {
				t.Fatalf("after stop: prober closed %v, %d calls, want %d", p.closed, p.calls, len(tc.script))
			}
		})
	}
}

// blockingProber never answers until its context ends.
type blockingProber struct{ started chan struct{} }

func (p blockingProber) probe(ctx context.Context, _ netip.AddrPort) error {
	close(p.started)
	<-ctx.Done()
	return ctx.Err()
}

func (blockingProber) close() {}

func TestCheckerStopDuringProbe(t *testing.T) {
	clk := newFakeClock()
	p := blockingProber{started: make(chan struct{})}
	reported := false
	c := &checker{
		spec:   catalog.Health{Interval: time.Second, Timeout: time.Hour},
		probe:  p,
		clock:  clk,
		randN:  func(int64) int64 { return 0 },
		report: func(error, time.Duration) { reported = true },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(ctx)
	}()
	clk.waitPending(t, 1)
	clk.Advance(0)
	<-p.started
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("checker did not stop while a probe was running")
	}
	if reported {
		t.Fatal("an abandoned probe was reported as a result")
	}
}
