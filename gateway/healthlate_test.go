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

// TestLateCheckResultAfterReload: a check's probe fails; before its result
// is applied, a reload stops its checker (turns the service's checks off,
// or replaces them with other settings). The result belongs to no check
// any more and must be dropped: applied, it took the backend down (fall
// 1) — for good when checks were turned off, as nothing checks it then.
//
// The probe's result is held between the checker's last look at its
// context and the report (the checker reads the clock there), and let go
// once the reload has stopped the checker.
func TestLateCheckResultAfterReload(t *testing.T) {
	tcp := catalog.Health{Type: catalog.HealthTCP, Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
	tests := []struct {
		name string
		next catalog.Health
	}{
		{"checks off", catalog.Health{Type: catalog.HealthNone}},
		{"check replaced", catalog.Health{Type: catalog.HealthTCP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 1, Fall: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newUnitGateway(t)
			clk := &holdingClock{fakeClock: newFakeClock(), held: make(chan struct{}), release: make(chan struct{})}
			st := g.state("web")
			st.health.clock = clk
			st.health.randN = func(int64) int64 { return 0 }
			st.health.newProber = func(h catalog.Health, _ uint16, _, _ string) prober {
				if h.Type == catalog.HealthNone {
					return nil
				}
				return armingProbe{clk}
			}
			st.setBackends([]backendAddr{{addr: netip.MustParseAddr("192.0.2.10")}}, false)
			b := st.backends.Load().list[0]
			g.tbl.Store(&table{byName: map[string]*service{"web": {spec: catalog.Service{Name: "web", Health: tcp}, st: st}}})
			g.syncHealth()
			clk.waitPending(t, 1)
			clk.Advance(0) // the first check: its probe fails, its result is held
			<-clk.held

			g.tbl.Store(&table{byName: map[string]*service{"web": {spec: catalog.Service{Name: "web", Health: tc.next}, st: st}}})
			synced := make(chan struct{})
			go func() { defer close(synced); g.syncHealth() }() // returns once the old checker has
			waitFor(t, 5*time.Second, "the reload to stop the checker", func() bool {
				st.health.mu.Lock()
				defer st.health.mu.Unlock()
				e := st.health.entries[b]
				return e != nil && e.synced && e.spec == tc.next
			})
			close(clk.release)
			<-synced

			if !b.usable() {
				t.Fatalf("backend in state %s after a result of a stopped check (%s)", b.state, b.lastErr)
			}
		})
	}
}

// holdingClock is a fake clock whose first Now after arm blocks until
// release: the checker reads the clock after its probe, so its result is
// held there.
type holdingClock struct {
	*fakeClock
	mu      sync.Mutex
	armed   bool
	held    chan struct{}
	release chan struct{}
}

func (c *holdingClock) arm() {
	c.mu.Lock()
	c.armed = true
	c.mu.Unlock()
}

func (c *holdingClock) Now() time.Time {
	c.mu.Lock()
	hold := c.armed
	c.armed = false
	c.mu.Unlock()
	if hold {
		close(c.held)
		<-c.release
	}
	return c.fakeClock.Now()
}

// armingProbe fails at once and arms its clock, so that the result is held.
type armingProbe struct{ clk *holdingClock }

func (p armingProbe) probe(context.Context, netip.AddrPort) error {
	p.clk.arm()
	return errors.New("connection refused")
}

func (armingProbe) close() {}
