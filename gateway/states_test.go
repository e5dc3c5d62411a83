package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// seriesCount is what the gateway's registry exports: the number of
// ztgate_ series, and the number by service label value.
type seriesCount struct {
	total     int
	byService map[string]int
}

func gatherSeries(t *testing.T, g *Gateway) seriesCount {
	t.Helper()
	mfs, err := g.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	c := seriesCount{byService: map[string]int{}}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "ztgate_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			c.total++
			for _, l := range m.GetLabel() {
				if l.GetName() == "service" {
					c.byService[l.GetValue()]++
				}
			}
		}
	}
	return c
}

func (g *Gateway) stateCount() int {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	return len(g.states)
}

func (g *Gateway) stateOf(name string) *serviceState {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	return g.states[name]
}

// churnService is a [[service]] of the churn test, in TOML or JSON: TCP
// port 7 to target on 127.0.0.1, with TCP checks every 20 ms when checked
// (so that the health series exist too), else none.
func churnService(name string, target int, checked, json bool) string {
	health := `type = "none"`
	jsonHealth := `{"type": "none"}`
	if checked {
		health = "type = \"tcp\"\n  interval = \"20ms\"\n  timeout = \"20ms\""
		jsonHealth = `{"type": "tcp", "interval": "20ms", "timeout": "20ms"}`
	}
	if json {
		return fmt.Sprintf(`{"name": %q, "tenants": ["acme"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 7, "target": %d}], "health": %s}`,
			name, target, jsonHealth)
	}
	return fmt.Sprintf(`
[[service]]
name = %q
tenants = ["acme"]
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "tcp"
  port = 7
  target = %d
  [service.health]
  %s
`, name, target, health)
}

// TestRemovedServicesFreed adds services and removes them again, round
// after round under new names, by reloads and through the API: each
// service gets a flow, a failed dial and health checks, so that every
// kind of series exists. Once removed (with no flow left), their states
// and every series naming them are gone at once, and the gateway's state
// and /metrics are back to where they started.
func TestRemovedServicesFreed(t *testing.T) {
	const rounds, perRound = 3, 4
	for _, via := range []string{"reload", "api"} {
		t.Run(via, func(t *testing.T) {
			echo := startLineEcho(t, "echo")
			closed := int(closedPort(t).Port())
			base := reloadConfig(echo, `"acme"`, "")
			h := newFileHarness(t, base)
			api := h.gw.apiHandler("")
			apply := func(add bool, names []string) {
				t.Helper()
				if via == "reload" {
					cfg := base
					if add {
						for i, name := range names {
							// The last one's backend refuses: a failed dial.
							if i == len(names)-1 {
								cfg += churnService(name, closed, false, false)
							} else {
								cfg += churnService(name, echo, i == 0, false)
							}
						}
					}
					h.write(t, cfg)
					if _, err := h.gw.Reload(); err != nil {
						t.Fatal(err)
					}
					return
				}
				for i, name := range names {
					var status int
					if add {
						target, checked := echo, i == 0
						if i == len(names)-1 {
							target, checked = closed, false
						}
						status, _ = apiCall(t, api, "POST", "/v1/services", []byte(churnService(name, target, checked, true)))
					} else {
						status, _ = apiCall(t, api, "DELETE", "/v1/services/"+name, nil)
					}
					if want := map[bool]int{true: 201, false: 204}[add]; status != want {
						t.Fatalf("%s %s: status %d, want %d", map[bool]string{true: "add", false: "delete"}[add], name, status, want)
					}
				}
			}

			states, series := h.gw.stateCount(), gatherSeries(t, h.gw)
			for r := range rounds {
				var names []string
				for i := range perRound {
					names = append(names, fmt.Sprintf("churn-%d-%d", r, i))
				}
				apply(true, names)
				tbl := h.gw.tbl.Load()
				for i, name := range names {
					dst := tbl.byName[name].vip.String() + ":7"
					if i == len(names)-1 {
						if err := h.dial(t, acmeClient, netip.MustParseAddrPort(dst), time.Second); err == nil {
							t.Fatalf("%s: a flow to a closed port was accepted", name)
						}
						continue
					}
					lc := h.dialLines(t, acmeClient, dst)
					if got := lc.roundTrip(t, "x"); got != "echo: x" {
						t.Fatalf("%s: %q", name, got)
					}
					lc.c.Close()
				}
				checked := names[0]
				waitFor(t, 3*time.Second, "health checks of "+checked, func() bool {
					return metricValue(t, h.gw, "ztgate_health_checks_total", "result", "ok", "service", checked) > 0
				})
				if v := metricValue(t, h.gw, "ztgate_dial_errors_total", "backend", "127.0.0.1", "service", names[len(names)-1]); v < 1 {
					t.Fatalf("no dial error counted: %v", v)
				}
				if got := h.gw.stateCount(); got != states+perRound {
					t.Fatalf("round %d: %d states with the services in, want %d", r, got, states+perRound)
				}
				waitFor(t, 3*time.Second, "the flows to end", func() bool { return h.gw.flows.len() == 0 })

				apply(false, names)
				if got := h.gw.stateCount(); got != states {
					t.Fatalf("round %d: %d states after the removal, want %d", r, got, states)
				}
				now := gatherSeries(t, h.gw)
				for _, name := range names {
					if n := now.byService[name]; n != 0 {
						t.Errorf("round %d: %d series of removed service %s", r, n, name)
					}
				}
				if now.total != series.total {
					t.Fatalf("round %d: %d series after the removal, want %d as at start", r, now.total, series.total)
				}
			}
		})
	}
}

// TestRemovedServiceStateLivesWithItsFlows: a removed service whose flow
// still runs (drain_timeout is long) keeps its state and series until the
// flow ends; then both go. Added back before that, it takes up the same
// state (its backends, their health and drains) and keeps it after the
// flow ends.
func TestRemovedServiceStateLivesWithItsFlows(t *testing.T) {
	cases := []struct {
		name      string
		addBack   bool
		wantState bool // after the flow ended
	}{
		{"removed: freed when its last flow ends", false, false},
		{"added back while the flow runs: same state, kept", true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			echo, web := startLineEcho(t, "echo"), startLineEcho(t, "web")
			config := func(withWeb bool) string {
				c := strings.Replace(reloadConfig(echo, `"acme"`, ""), `drain_timeout = "1s"`, `drain_timeout = "1h"`, 1)
				if withWeb {
					c += webService(web)
				}
				return c
			}
			h := newFileHarness(t, config(true))
			st := h.gw.stateOf("web")
			live := h.dialLines(t, acmeClient, "10.100.0.8:7")
			if got := live.roundTrip(t, "x"); got != "web: x" {
				t.Fatalf("before: %q", got)
			}
			b := st.backends.Load().list[0]
			h.gw.drainBackends(st, []*backend{b}, 0) // a state the service must find again

			h.write(t, config(false))
			if _, err := h.gw.Reload(); err != nil {
				t.Fatal(err)
			}
			if h.gw.stateOf("web") != st {
				t.Fatal("the state of a removed service with a live flow was freed")
			}
			if v := metricValue(t, h.gw, "ztgate_flows_active", "protocol", "tcp", "service", "web", "tenant", "acme"); v != 1 {
				t.Fatalf("flows_active of the draining service: %v, want 1", v)
			}
			if got := live.roundTrip(t, "draining"); got != "web: draining" {
				t.Fatalf("the removed service's flow: %q", got)
			}

			if tc.addBack {
				h.write(t, config(true))
				if _, err := h.gw.Reload(); err != nil {
					t.Fatal(err)
				}
				if s := h.gw.tbl.Load().byName["web"]; s.st != st || s.st.backends.Load().list[0] != b {
					t.Fatal("the service added back did not take up its state")
				}
				if !b.isDraining() {
					t.Fatal("the service added back lost its backend's drain")
				}
			}

			live.c.Close()
			waitFor(t, 3*time.Second, "the flow to end", func() bool { return h.gw.flows.len() == 0 })
			if tc.wantState {
				if h.gw.stateOf("web") != st {
					t.Fatal("the state of a service in the table was freed")
				}
				if n := gatherSeries(t, h.gw).byService["web"]; n == 0 {
					t.Fatal("the series of a service in the table were deleted")
				}
				return
			}
			if h.gw.stateOf("web") != nil {
				t.Fatal("the state outlived the last flow of its removed service")
			}
			if n := gatherSeries(t, h.gw).byService["web"]; n != 0 {
				t.Fatalf("%d series of the removed service outlived its last flow", n)
			}
		})
	}
}

// isDraining reports whether the backend was drained.
func (b *backend) isDraining() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.draining
}

// TestStateFreeRaces runs the steps of a service's removal against a flow
// of it, in every order the data path allows, and checks the outcome: a
// flow reserved before the free holds the state until it is released; one
// that comes after is refused (no_service) and makes no series; a state
// taken up again before the last release stays.
func TestStateFreeRaces(t *testing.T) {
	cases := []struct {
		name  string
		steps []string // reserve, release, remove, addBack
		// after the steps: whether the state is still there and the
		// reservations that were refused
		wantState bool
		refused   int
	}{
		{"removed without flows: freed at once", []string{"remove"}, false, 0},
		{"a flow after the free is refused", []string{"remove", "reserve"}, false, 1},
		{"the last flow frees it", []string{"reserve", "remove", "release"}, false, 0},
		{"two flows: the second release frees it", []string{"reserve", "reserve", "remove", "release", "release"}, false, 0},
		{"added back before the last flow ends", []string{"reserve", "remove", "addBack", "release"}, true, 0},
		{"removed again after coming back", []string{"reserve", "remove", "addBack", "remove", "release"}, false, 0},
		{"in the table: never freed", []string{"reserve", "release"}, true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newUnitGateway(t)
			g.limits = newFlowLimits()
			st := g.state("web")
			svc := &service{spec: catalog.Service{Name: "web"}, st: st}
			in := &table{byName: map[string]*service{"web": svc}}
			g.reconcileStates(in)
			refused := 0
			var open []*flowMetrics // the series of the flows reserved
			for _, s := range tc.steps {
				switch s {
				case "reserve":
					if st.reserveFlow(0) != "" {
						refused++
						continue
					}
					g.limits.takeTenant("acme", tenantFlows, 0)
					g.flowCount.Add(1)
					fm, _ := st.m.flowStarted("acme", "tcp")
					open = append(open, fm)
				case "release":
					st.m.flowEnded(open[len(open)-1])
					open = open[:len(open)-1]
					g.release(svc, "acme")
				case "remove":
					g.reconcileStates(&table{byName: map[string]*service{}})
				case "addBack":
					if g.state("web") != st {
						t.Fatal("added back with a new state")
					}
					g.reconcileStates(in)
				}
			}
			if got := g.stateOf("web") == st; got != tc.wantState {
				t.Fatalf("state kept %v, want %v", got, tc.wantState)
			}
			if refused != tc.refused {
				t.Fatalf("%d reservations refused, want %d", refused, tc.refused)
			}
			if n := gatherSeries(t, g).byService["web"]; (n > 0) != tc.wantState {
				t.Fatalf("%d series of web, want them only while the state lives", n)
			}
		})
	}
}

// TestStateFreeRacesConcurrent races flows against the removal of their
// service and its return, under the race detector: when the dust settles
// and the service is out, its state and series are gone, whatever the
// order was.
func TestStateFreeRacesConcurrent(t *testing.T) {
	g, _ := newUnitGateway(t)
	g.limits = newFlowLimits()
	empty := &table{byName: map[string]*service{}}
	for range 200 {
		st := g.state("web")
		svc := &service{spec: catalog.Service{Name: "web"}, st: st}
		in := &table{byName: map[string]*service{"web": svc}}
		g.reconcileStates(in)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if d := (decision{svc: svc, peer: peer{tenant: "acme"}}); g.admit(in, d) == "" {
					fm, _ := st.m.flowStarted("acme", "tcp")
					st.m.flowEnded(fm)
					g.release(svc, "acme")
				}
			})
		}
		wg.Go(func() {
			g.reconcileStates(empty)
			g.state("web")
			g.reconcileStates(in)
			g.reconcileStates(empty)
		})
		wg.Wait()
		if s := g.stateOf("web"); s != nil {
			t.Fatalf("state left after removal: %d flows", s.flows.Load())
		}
		if n := gatherSeries(t, g).byService["web"]; n != 0 {
			t.Fatalf("%d series left after removal", n)
		}
	}
}

// TestBackendSeriesFreed: a backend that leaves a service that stays loses
// its series (health and dial errors), and a late failed dial of a flow
// still bound to it does not make them again; a backend that stays keeps
// them, also one on the same address as the one that left (SRV targets
// on several ports: the series are labelled by address and port).
func TestBackendSeriesFreed(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	cases := []struct {
		name   string
		before []backendAddr
		after  []backendAddr
		gone   []string // backends (labels) without series after
		kept   []string // backends (labels) with series after
	}{
		{"backend removed", []backendAddr{{addr: a}, {addr: b}}, []backendAddr{{addr: b}}, []string{"192.0.2.10"}, []string{"192.0.2.11"}},
		{"SRV backend moved to another port", []backendAddr{{addr: a, port: 80}, {addr: b}}, []backendAddr{{addr: a, port: 81}, {addr: b}}, []string{"192.0.2.10:80"}, []string{"192.0.2.11"}},
		{"one of two SRV backends on one address removed", []backendAddr{{addr: a, port: 80}, {addr: a, port: 81}, {addr: b}}, []backendAddr{{addr: a, port: 81}, {addr: b}}, []string{"192.0.2.10:80"}, []string{"192.0.2.10:81", "192.0.2.11"}},
		{"every backend removed", []backendAddr{{addr: a}, {addr: b}}, nil, []string{"192.0.2.10", "192.0.2.11"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newUnitGateway(t)
			st := g.state("web")
			svc := &service{spec: catalog.Service{Name: "web", Health: catalog.Health{Type: catalog.HealthNone}}, st: st}
			g.tbl.Store(&table{byName: map[string]*service{"web": svc}})
			st.setBackends(tc.before, false)
			g.syncHealth()
			old := st.backends.Load().list
			for _, be := range old {
				g.countDialError("web", be)
			}
			st.setBackends(tc.after, false)
			g.syncHealth()
			for _, be := range old { // flows still bound to the old backends
				g.countDialError("web", be)
				g.passiveFailure(svc, be, fmt.Errorf("refused"))
				g.setHealthGauge("web", be)
			}
			for _, label := range tc.gone {
				for _, name := range []string{"ztgate_backend_healthy", "ztgate_dial_errors_total"} {
					if v := metricValue(t, g, name, "backend", label, "service", "web"); v != -1 {
						t.Errorf("%s of removed backend %s: %v", name, label, v)
					}
				}
			}
			for _, label := range tc.kept {
				for _, name := range []string{"ztgate_backend_healthy", "ztgate_dial_errors_total"} {
					if v := metricValue(t, g, name, "backend", label, "service", "web"); v == -1 {
						t.Errorf("%s of backend %s deleted", name, label)
					}
				}
			}
		})
	}
}

// TestFreedStateStaysQuiet: freeing a state stops its running checks, and
// what still holds the state afterwards (a health sync that read the old
// table, a drain request that looked the service up just before) starts
// no check or deadline and makes no series.
func TestFreedStateStaysQuiet(t *testing.T) {
	g, svc, clk := checkedService(t)
	st := svc.st

	g.reconcileStates(&table{byName: map[string]*service{}})
	clk.waitPending(t, 0)
	bs := st.backends.Load().list
	g.syncChecks(st, bs, svc.spec.Health)
	g.drainBackends(st, bs, 30*time.Second)
	g.undrainBackends(st, bs)
	if n := clk.pending(); n != 0 || len(st.health.entries) != 0 {
		t.Fatalf("freed state: %d timers, %d entries", n, len(st.health.entries))
	}
	if n := gatherSeries(t, g).byService["web"]; n != 0 {
		t.Fatalf("freed state: %d series", n)
	}
}

// TestSetBackendsDeparted: a backend that leaves the set while flows are
// bound to it is kept, and the same object comes back when its address
// does (its flows, counts and health with it), each move counted in
// departures; one without flows is forgotten, and a kept one once its
// flows have ended.
func TestSetBackendsDeparted(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	both, onlyB := []backendAddr{{addr: a}, {addr: b}}, []backendAddr{{addr: b}}
	st := newServiceState("web")
	st.setBackends(both, false)
	A, B := st.backends.Load().list[0], st.backends.Load().list[1]
	A.active.Add(1) // a flow bound to A

	steps := []struct {
		name       string
		set        []backendAddr
		gone       []*backend
		departures uint64 // A's after the step
		kept       bool   // A in departed
		sameA      bool   // the set's backend at a is A
	}{
		{"A leaves with a flow: kept", onlyB, []*backend{A}, 1, true, false},
		{"A comes back: the same object", both, nil, 2, false, true},
		{"A leaves again", onlyB, []*backend{A}, 3, true, false},
		{"its flow ends: forgotten at the next change", onlyB, nil, 3, false, false},
		{"its address comes back: a new backend", both, nil, 3, false, false},
	}
	for _, s := range steps {
		if s.name == "its flow ends: forgotten at the next change" {
			A.active.Add(-1)
		}
		_, gone := st.setBackends(s.set, false)
		st.mu.Lock()
		kept := st.departed[A.key()] == A
		st.mu.Unlock()
		var atA *backend
		for _, x := range st.backends.Load().list {
			if x.addr == a {
				atA = x
			}
		}
		switch {
		case !slices.Equal(gone, s.gone):
			t.Errorf("%s: gone %v, want %v", s.name, addrList(gone), addrList(s.gone))
		case A.departures.Load() != s.departures:
			t.Errorf("%s: departures %d, want %d", s.name, A.departures.Load(), s.departures)
		case kept != s.kept:
			t.Errorf("%s: kept %v, want %v", s.name, kept, s.kept)
		case (atA == A) != s.sameA:
			t.Errorf("%s: the backend at %s is A: %v, want %v", s.name, a, atA == A, s.sameA)
		}
	}
	st.setBackends(nil, false) // B leaves without a flow: not kept
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.departed[B.key()] != nil || len(st.departed) != 0 {
		t.Errorf("departed %v after every backend without flows left", st.departed)
	}
}
