package gateway

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// TestSyncHealth follows the checks of one service through table swaps:
// each step gives the service's backends and health type (or removes the
// service) and expects the checked backends.
func TestSyncHealth(t *testing.T) {
	tcp := catalog.Health{Type: catalog.HealthTCP, Port: 80, Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
	slower := tcp
	slower.Interval = 2 * time.Second
	none := catalog.Health{Type: catalog.HealthNone}
	type step struct {
		name     string
		backends []string // nil: the service is not in the table
		health   catalog.Health
		checked  []string
		restart  []string // checks that must be new ones
	}
	steps := []step{
		{"start checks every backend", []string{"192.0.2.10", "192.0.2.11"}, tcp, []string{"192.0.2.10", "192.0.2.11"}, []string{"192.0.2.10", "192.0.2.11"}},
		{"same table changes nothing", []string{"192.0.2.10", "192.0.2.11"}, tcp, []string{"192.0.2.10", "192.0.2.11"}, nil},
		{"a backend leaves, one arrives", []string{"192.0.2.11", "192.0.2.12"}, tcp, []string{"192.0.2.11", "192.0.2.12"}, []string{"192.0.2.12"}},
		{"changed settings restart checks", []string{"192.0.2.11", "192.0.2.12"}, slower, []string{"192.0.2.11", "192.0.2.12"}, []string{"192.0.2.11", "192.0.2.12"}},
		{"type none checks nothing", []string{"192.0.2.11", "192.0.2.12"}, none, nil, nil},
		{"checks come back", []string{"192.0.2.11"}, tcp, []string{"192.0.2.11"}, []string{"192.0.2.11"}},
		{"service removed", nil, tcp, nil, nil},
	}
	g, _ := newUnitGateway(t)
	clk := newFakeClock()
	st := g.state("web")
	st.health.clock = clk
	prev := map[string]chan struct{}{}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			tbl := &table{byName: map[string]*service{}}
			if s.backends != nil {
				var addrs []backendAddr
				for _, a := range s.backends {
					addrs = append(addrs, backendAddr{addr: netip.MustParseAddr(a), origin: a})
				}
				st.setBackends(addrs, false)
				tbl.byName["web"] = &service{spec: catalog.Service{Name: "web", Health: s.health}, st: st}
			}
			g.tbl.Store(tbl)
			g.syncHealth()
			clk.waitPending(t, len(s.checked))
			st.health.mu.Lock()
			defer st.health.mu.Unlock()
			now := map[string]chan struct{}{}
			for b, e := range st.health.entries {
				if e.cancel != nil {
					now[b.addr.String()] = e.done
				}
			}
			var got []string
			for a, done := range now {
				got = append(got, a)
				if fresh := prev[a] != done; fresh != slices.Contains(s.restart, a) {
					t.Errorf("%s: new check %v, want %v", a, fresh, !fresh)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, s.checked) {
				t.Fatalf("checked %v, want %v", got, s.checked)
			}
			if s.backends == nil && len(st.health.entries) != 0 {
				t.Fatalf("%d entries left for a removed service", len(st.health.entries))
			}
			prev = now
		})
	}
	if v := metricValue(t, g, "ztgate_backend_healthy", "backend", "192.0.2.10", "service", "web"); v != -1 {
		t.Fatalf("gauge of a removed backend still exported: %v", v)
	}
}

func TestSyncHealthForgetsWhenChecksStop(t *testing.T) {
	g, logs := newUnitGateway(t)
	st := g.state("web")
	st.health.clock = newFakeClock()
	st.setBackends([]backendAddr{{addr: netip.MustParseAddr("192.0.2.10")}}, false)
	b := st.backends.Load().list[0]
	b.record("refused", 1, 1, time.Now())
	tbl := &table{byName: map[string]*service{"web": {spec: catalog.Service{Name: "web"}, st: st}}}
	g.tbl.Store(tbl)
	g.syncHealth()
	if b.state != stateUnknown || !b.usable() {
		t.Fatalf("state %s after checks were turned off, want unknown", b.state)
	}
	if v := metricValue(t, g, "ztgate_backend_healthy", "backend", "192.0.2.10", "service", "web"); v != 1 {
		t.Fatalf("gauge %v, want 1", v)
	}
	if want := "from=down to=unknown"; !strings.Contains(logs.String(), want) {
		t.Fatalf("log lacks %q:\n%s", want, logs.String())
	}
}

// checkedService returns a unit gateway whose table has service web with
// one backend (192.0.2.10) checked by TCP every second on a fake clock,
// its check started (one timer pending).
func checkedService(t *testing.T) (*Gateway, *service, *fakeClock) {
	t.Helper()
	g, _ := newUnitGateway(t)
	clk := newFakeClock()
	st := g.state("web")
	st.health.clock = clk
	st.setBackends([]backendAddr{{addr: netip.MustParseAddr("192.0.2.10")}}, false)
	h := catalog.Health{Type: catalog.HealthTCP, Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
	svc := &service{spec: catalog.Service{Name: "web", Health: h}, st: st}
	g.tbl.Store(&table{byName: map[string]*service{"web": svc}})
	g.syncHealth()
	clk.waitPending(t, 1)
	return g, svc, clk
}

func TestSyncHealthAfterClose(t *testing.T) {
	g, svc, clk := checkedService(t)
	st, tbl := svc.st, g.tbl.Load()
	g.closing.Store(true)
	g.stopHealth()
	clk.waitPending(t, 0)
	g.tbl.Store(tbl)
	g.syncHealth()
	if n := clk.pending(); n != 0 || len(st.health.entries) != 0 {
		t.Fatalf("after stopHealth: %d timers, %d entries", n, len(st.health.entries))
	}
}
