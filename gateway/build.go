package gateway

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
)

// buildTable allocates VIPs for svcs and builds a table generation from
// them. Services keep their state (backends, health, flow counts) by name.
func (g *Gateway) buildTable(svcs []catalog.Service, tenants []catalog.Tenant, limits conf.Limits, drain time.Duration) (*table, error) {
	reqs := make([]catalog.Request, len(svcs))
	for i, s := range svcs {
		reqs[i] = catalog.Request{Service: s.Name, VIP: s.VIP, VIP6: s.VIP6}
	}
	var allocs map[string]catalog.Allocation
	if g.relay != nil {
		allocs = g.relayAllocations(svcs)
	} else {
		var err error
		allocs, err = g.pool.Reconcile(reqs)
		if err != nil {
			return nil, fmt.Errorf("gateway: VIP allocation: %w", err)
		}
	}
	t := &table{
		byVIP:        make(map[netip.Addr]*service, 2*len(svcs)),
		byName:       make(map[string]*service, len(svcs)),
		tenants:      newTenantTable(tenants),
		limits:       limits,
		drainTimeout: drain,
	}
	for _, s := range svcs {
		a, ok := allocs[s.Name]
		if !ok && g.relay == nil {
			return nil, fmt.Errorf("gateway: VIP allocation: no VIP for %s", s.Name)
		}
		st := g.state(s.Name)
		_, gone := st.setBackends(g.disc.backends(s), false)
		t.removed = append(t.removed, gone...)
		svc := &service{spec: s, vip: a.VIP, vip6: a.VIP6, st: st}
		t.byName[s.Name] = svc
		if a.VIP.IsValid() {
			t.byVIP[a.VIP] = svc
		}
		if a.VIP6.IsValid() {
			t.byVIP[a.VIP6] = svc
		}
	}
	names := make([]string, len(tenants))
	for i, tn := range tenants {
		names[i] = tn.Name
	}
	t.buildViews(names)
	return t, nil
}

// state returns the long-lived state of a service, creating it.
func (g *Gateway) state(name string) *serviceState {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	st, ok := g.states[name]
	if !ok {
		st = newServiceState(name)
		st.m = g.m.service(name)
		g.states[name] = st
	}
	return st
}
