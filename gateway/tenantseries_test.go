package gateway

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// TestAgentTenantSeriesFreed: agents of many tenants no [[tenant]] names
// (their certificates do) come, each opens a flow to a service of every
// tenant ("*") and leaves. Their flow series go with the last of their
// ingresses and flows, so that /metrics does not grow with every tenant
// that ever connected; a configured tenant's stay.
func TestAgentTenantSeriesFreed(t *testing.T) {
	h := newTunnelHarness(t, "")
	dst, src := udpEchoVIP, agentSrc
	const tenants = 24
	churn := func(tenant string) {
		t.Helper()
		in, replies := h.recordingIngress(t, tenant)
		h.gw.deliverTunnel(in, "", netstacktest.UDPDatagram(src, dst, []byte(tenant)), h.gw.tunLink)
		waitFor(t, 5*time.Second, tenant+"'s echo", func() bool { return len(replies()) == 1 })
		h.gw.closeIngress(in, "agent_disconnected")
	}
	churn("acme") // configured: kept
	waitFor(t, 5*time.Second, "acme's flow to end", func() bool { return len(h.gw.flows.list(nil)) == 0 })
	baseline := gatherSeries(t, h.gw).total
	for i := range tenants {
		churn(fmt.Sprintf("cust%02d", i))
	}
	waitFor(t, 5*time.Second, "every flow to end", func() bool { return len(h.gw.flows.list(nil)) == 0 })
	if got, want := flowSeries(t, h.gw.m), "acme/udp:1/0"; got != want {
		t.Errorf("flow series after %d tenants' agents left: %q, want %q", tenants, got, want)
	}
	if got := gatherSeries(t, h.gw).total; got != baseline {
		t.Errorf("%d ztgate_ series after %d tenants' agents came and left, %d before", got, tenants, baseline)
	}
}

// TestAgentTenantSeriesRace: an ingress of a tenant no [[tenant]] names
// closes while one of its packets opens a flow, so that the flow's series
// may be made after its tenant's were deleted. They must go with that
// flow: none is left once every flow has ended.
func TestAgentTenantSeriesRace(t *testing.T) {
	h := newTunnelHarness(t, "")
	dst, src := udpEchoVIP, agentSrc
	const rounds = 300
	for i := range rounds {
		in := &ingress{
			peer: peer{tenant: fmt.Sprintf("cust%d", i%7), identity: fmt.Sprintf("agent/a%d", i)},
			out:  testOutbox(t, func([]byte) error { return nil }),
		}
		in.pinInner(agentInner)
		if err := h.gw.ingresses.add(in); err != nil {
			t.Fatal(err)
		}
		pkt := netstacktest.UDPDatagram(src, dst, []byte("x"))
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { <-start; h.gw.deliverTunnel(in, "", pkt, h.gw.tunLink) })
		wg.Go(func() { <-start; h.gw.closeIngress(in, "tag_closed") })
		close(start)
		wg.Wait()
	}
	waitFor(t, 5*time.Second, "every flow to end", func() bool { return len(h.gw.flows.list(nil)) == 0 })
	if got := flowSeries(t, h.gw.m); got != "" {
		t.Errorf("flow series left after every agent and flow: %q", got)
	}
}

// TestTenantPresence: the flow series of a tenant live while it is
// present — a [[tenant]] names it or one of its ingresses is open — and
// after that until its last flow ends.
func TestTenantPresence(t *testing.T) {
	type step struct{ op, arg, want string } // want: flowSeries after the step
	cases := []struct {
		name  string
		steps []step
	}{
		{"last ingress closes: its series go", []step{
			{"open", "a", ""},
			{"start", "", "ext/tcp:1/1"},
			{"end", "", "ext/tcp:1/0"},
			{"close", "a", ""},
		}},
		{"closes with a flow open: the flow takes them", []step{
			{"open", "a", ""},
			{"start", "", "ext/tcp:1/1"},
			{"close", "a", "ext/tcp:1/1"},
			{"end", "", ""},
		}},
		{"another ingress stays: kept", []step{
			{"open", "a", ""},
			{"open", "b", ""},
			{"start", "", "ext/tcp:1/1"},
			{"end", "", "ext/tcp:1/0"},
			{"close", "a", "ext/tcp:1/0"},
			{"close", "b", ""},
		}},
		{"back before the last flow ended: kept", []step{
			{"open", "a", ""},
			{"start", "", "ext/tcp:1/1"},
			{"close", "a", "ext/tcp:1/1"},
			{"open", "b", "ext/tcp:1/1"},
			{"end", "", "ext/tcp:1/0"},
		}},
		{"made after the last ingress closed: go with their flow", []step{
			{"open", "a", ""},
			{"close", "a", ""},
			{"start", "", "ext/tcp:1/1"},
			{"end", "", ""},
		}},
		{"configured: kept without ingresses", []step{
			{"configure", "ext", ""},
			{"open", "a", ""},
			{"start", "", "ext/tcp:1/1"},
			{"end", "", "ext/tcp:1/0"},
			{"close", "a", "ext/tcp:1/0"},
		}},
		{"removed by a reload while an agent is connected: go when it leaves", []step{
			{"configure", "ext", ""},
			{"open", "a", ""},
			{"start", "", "ext/tcp:1/1"},
			{"end", "", "ext/tcp:1/0"},
			{"configure", "", "ext/tcp:1/0"},
			{"close", "a", ""},
		}},
		{"configured by a reload while an agent is connected: kept", []step{
			{"open", "a", ""},
			{"start", "", "ext/tcp:1/1"},
			{"end", "", "ext/tcp:1/0"},
			{"configure", "ext", "ext/tcp:1/0"},
			{"close", "a", "ext/tcp:1/0"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newUnitGateway(t)
			g.tbl.Store(&table{tenants: newTenantTable(nil)})
			g.ingresses = newIngressTable(prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_ingresses"}), g)
			sm := g.state("web").m
			ins := map[string]*ingress{}
			var open []*flowMetrics
			for i, s := range tc.steps {
				switch s.op {
				case "open":
					ins[s.arg] = &ingress{peer: peer{tenant: "ext", identity: "ext/agent/" + s.arg}}
					if err := g.ingresses.add(ins[s.arg]); err != nil {
						t.Fatal(err)
					}
				case "close":
					g.ingresses.remove(ins[s.arg])
				case "start": // as newFlow counts it
					fm, made := sm.flowStarted("ext", "tcp")
					if made {
						g.retireAbsent(sm, fm, "ext")
					}
					open = append(open, fm)
				case "end":
					sm.flowEnded(open[len(open)-1])
					open = open[:len(open)-1]
				case "configure": // a reload to these [[tenant]]s
					var tenants []catalog.Tenant
					if s.arg != "" {
						tenants = append(tenants, catalog.Tenant{Name: s.arg})
					}
					old, next := g.tbl.Load(), &table{tenants: newTenantTable(tenants)}
					g.tbl.Store(next)
					g.forgetTenants(old, next)
				}
				if got := flowSeries(t, g.m); got != s.want {
					t.Fatalf("step %d, %s %s: series %q, want %q", i, s.op, s.arg, got, s.want)
				}
			}
		})
	}
}
