package gateway

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack"
)

// TestFlowSetUpAcrossPoolMove: a flow set up while the relay moved its
// pools away from the flow's VIP — after endUnrouted listed the flows, so
// not among them — is cut as the listed ones are (vip_unrouted): the
// netstack drops its client's packets from SetPools on. It lived on
// until its idle timeout, holding its backend. A flow whose VIP the pools
// still hold stays open.
func TestFlowSetUpAcrossPoolMove(t *testing.T) {
	g, _ := newUnitGateway(t)
	g.limits = newFlowLimits()
	ns, err := netstack.New(netstack.Config{
		Pools:   []netip.Prefix{netip.MustParsePrefix("10.100.0.0/24")},
		Handler: g,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Close)
	g.ns = ns
	svc := &service{spec: catalog.Service{Name: "web", Tenants: []string{"*"}}, st: g.state("web")}
	tbl := &table{byName: map[string]*service{"web": svc}, tenants: newTenantTable([]catalog.Tenant{
		{Name: "acme", Sources: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
	})}
	// The test's backend is in no backend set: drainLate takes it for one a
	// reload removed, and drains the flow for drain_timeout. An hour: the
	// drain must not close the flow the test keeps.
	tbl.drainTimeout = time.Hour
	g.tbl.Store(tbl)
	d := decision{t: tbl, svc: svc, peer: peer{tenant: "acme", identity: lanIdentity}}
	client := netip.MustParseAddrPort("198.51.100.10:40000")
	newFlow := func(vip string) *flow {
		if reason := g.admit(tbl, d); reason != "" {
			t.Fatal(reason)
		}
		f := g.newFlow("tcp", client, netip.MustParseAddrPort(vip), d, &backend{addr: netip.MustParseAddr("192.0.2.10")})
		t.Cleanup(func() { g.endFlow(f) })
		return f
	}

	// The relay's assign: the pools move, endUnrouted lists no flow yet.
	pools := []netip.Prefix{netip.MustParsePrefix("10.101.0.0/24")}
	ns.SetPools(pools)
	g.endUnrouted()

	moved := newFlow("10.100.0.10:80")
	if reason, ok := moved.closed(); !ok || reason != "vip_unrouted" || !moved.wasCut() {
		t.Errorf("the flow of a VIP the pools left: closed %v (%q), cut %v; want cut as vip_unrouted", ok, reason, moved.wasCut())
	}
	kept := newFlow("10.101.0.10:80")
	if reason, ok := kept.closed(); ok {
		t.Errorf("the flow of a VIP in the pools was closed: %q", reason)
	}
}
