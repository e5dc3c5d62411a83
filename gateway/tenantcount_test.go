package gateway

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ztgate/ztgate/catalog"
)

// held is what tenant holds now of slot s: 0 when it has no entry.
func (l *flowLimits) held(name string, s tenantSlot) int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	c := l.tenants[name]
	if c == nil {
		return 0
	}
	n, _ := c.counts(s)
	return n.Load()
}

// entries lists the tenants' entries as "tenant:flows/handshakes", sorted.
func (l *flowLimits) entries() string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []string
	for name, c := range l.tenants {
		out = append(out, fmt.Sprintf("%s:%d/%d", name, c.flows.Load(), c.handshakes.Load()))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// TestTenantEntryFreed: a tenant's entry lives while it holds a flow or a
// handshake, goes with the last of them, whichever ends last, and comes
// back with its next flow; a reservation refused by a limit, the tenant's
// or the service's, leaves no entry of its own behind.
func TestTenantEntryFreed(t *testing.T) {
	type step struct{ op, tenant, want string } // want: entries after the step
	cases := []struct {
		name                  string
		tenantMax, serviceMax int // max_flows of acme and web
		serviceHandshakes     int // max_inflight_handshakes of web
		steps                 []step
	}{
		{name: "TCP flow, then the next one", steps: []step{
			{"admit", "acme", "acme:1/0"},
			{"begin", "acme", "acme:1/1"},
			{"end", "acme", "acme:1/0"},
			{"release", "acme", ""},
			{"admit", "acme", "acme:1/0"},
			{"release", "acme", ""},
		}},
		{name: "the handshake ends last", steps: []step{
			{"admit", "acme", "acme:1/0"},
			{"begin", "acme", "acme:1/1"},
			{"release", "acme", "acme:0/1"},
			{"end", "acme", ""},
		}},
		{name: "tenants apart", steps: []step{
			{"admit", "acme", "acme:1/0"},
			{"admit", "globex", "acme:1/0 globex:1/0"},
			{"release", "acme", "globex:1/0"},
			{"release", "globex", ""},
		}},
		{name: "refused by the tenant's max_flows", tenantMax: 1, steps: []step{
			{"admit", "acme", "acme:1/0"},
			{"admit refused", "acme", "acme:1/0"},
			{"release", "acme", ""},
		}},
		{name: "refused by the service's max_flows", serviceMax: 1, steps: []step{
			{"admit", "acme", "acme:1/0"},
			{"admit refused", "globex", "acme:1/0"},
			{"release", "acme", ""},
		}},
		{name: "refused by the service's handshakes", serviceHandshakes: 1, steps: []step{
			{"admit", "acme", "acme:1/0"},
			{"begin", "acme", "acme:1/1"},
			{"admit", "globex", "acme:1/1 globex:1/0"},
			{"begin refused", "globex", "acme:1/1 globex:1/0"},
			{"release", "globex", "acme:1/1"},
			{"end", "acme", "acme:1/0"},
			{"release", "acme", ""},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newUnitGateway(t)
			g.limits = newFlowLimits()
			g.cfg.Limits.MaxInflightHandshake = 8
			spec := catalog.Service{Name: "web", FlowLimits: catalog.FlowLimits{
				MaxFlows: tc.serviceMax, MaxInflightHandshakes: tc.serviceHandshakes,
			}}
			svc := &service{spec: spec, st: g.state("web")}
			tbl := &table{
				byName:  map[string]*service{"web": svc},
				tenants: newTenantTable([]catalog.Tenant{{Name: "acme", FlowLimits: catalog.FlowLimits{MaxFlows: tc.tenantMax}}}),
			}
			for i, s := range tc.steps {
				d := decision{svc: svc, peer: peer{tenant: s.tenant, identity: "lan"}}
				var reason string
				switch strings.TrimSuffix(s.op, " refused") {
				case "admit":
					reason = g.admit(tbl, d)
				case "begin":
					reason = g.beginHandshake(tbl, d)
				case "end":
					g.endHandshake(d)
				case "release":
					g.release(svc, s.tenant)
				}
				if refused := strings.HasSuffix(s.op, " refused"); (reason != "") != refused {
					t.Fatalf("step %d, %s %s: refusal %q", i, s.op, s.tenant, reason)
				}
				if got := g.limits.entries(); got != s.want {
					t.Fatalf("step %d, %s %s: entries %q, want %q", i, s.op, s.tenant, got, s.want)
				}
			}
		})
	}
}

// TestTenantEntryRaces takes and gives back flows and handshakes of a few
// tenants from many goroutines, some over the tenants' bound, under the
// race detector: a reservation held always finds its count (its entry is
// never freed under it), and once all are given back no entry is left.
func TestTenantEntryRaces(t *testing.T) {
	l := newFlowLimits()
	tenants := []string{"acme", "globex", "initech"}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				name, s := tenants[(w+i)%len(tenants)], tenantSlot(i%2)
				if !l.takeTenant(name, s, 1+i%3) {
					continue
				}
				if n := l.held(name, s); n < 1 || n > 3 {
					t.Errorf("%s holds %d of slot %d while a reservation is held, want 1 to 3", name, n, s)
					return
				}
				l.giveTenant(name, s)
			}
		})
	}
	wg.Wait()
	if got := l.entries(); got != "" {
		t.Fatalf("entries left after every reservation was given back: %s", got)
	}
}

// TestTenantReserveNoAllocs: a reservation of a tenant that holds flows
// already, and its release, allocate nothing.
func TestTenantReserveNoAllocs(t *testing.T) {
	l := newFlowLimits()
	l.takeTenant("acme", tenantFlows, 0)
	n := testing.AllocsPerRun(1000, func() {
		l.takeTenant("acme", tenantHandshakes, 10)
		l.takeTenant("acme", tenantFlows, 10)
		l.giveTenant("acme", tenantFlows)
		l.giveTenant("acme", tenantHandshakes)
	})
	if n != 0 {
		t.Errorf("a reservation and its release allocate %v times, want 0", n)
	}
}
