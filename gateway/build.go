package gateway

import (
	"fmt"
	"net/netip"
	"time"
	"weak"

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
	// Every check first: once a state has the new backends, the table is
	// put in (their set is this generation's).
	for _, s := range svcs {
		if _, ok := allocs[s.Name]; !ok && g.relay == nil {
			return nil, fmt.Errorf("gateway: VIP allocation: no VIP for %s", s.Name)
		}
	}
	g.disc.prefetch(svcs)
	cur := g.tbl.Load()
	for _, s := range svcs {
		a := allocs[s.Name]
		st := g.state(s.Name)
		svc := &service{spec: s, vip: a.VIP, vip6: a.VIP6, st: st, tbl: weak.Make(t)}
		_, gone := st.setBackendsOf(svc, g.backendsOf(cur, s, st), false)
		t.removed = append(t.removed, gone...)
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

// backendsOf returns the addresses of s's backends now (discovery.backends)
// for a table built while cur is in use. An address of a name that the
// running service had in cur already is marked discovered: when it is new
// to the service, a watcher found it, and this table is built from its
// answer before the watcher applied it (it had asked the name between two
// changes of the table, or another service's watcher asked the same
// name); it takes flows once its checks bring it up, as it would had the
// watcher applied it first. A name the change adds is resolved for it, as
// at start: its addresses are configured ones.
func (g *Gateway) backendsOf(cur *table, s catalog.Service, st *serviceState) []backendAddr {
	addrs := g.disc.backends(s) // a slice of its own: marking it changes no answer stored
	if cur == nil || s.Health.Type == catalog.HealthNone {
		return addrs
	}
	prev := cur.byName[s.Name]
	if prev == nil || prev.st != st {
		return addrs
	}
	had := make(map[string]bool)
	for _, key := range cacheKeys(prev.spec) {
		had[key] = true
	}
	for i, a := range addrs {
		key := a.origin
		if a.host != "" { // from an SRV record: its origin is the SRV name
			key = "srv:" + a.origin
		}
		addrs[i].discovered = had[key]
	}
	return addrs
}

// state returns the long-lived state of a service, creating it. A state
// of a removed service whose flows still run is taken up again: it is not
// freed while a table being built may use it (reconcileStates settles
// that once the table is in, or was refused).
func (g *Gateway) state(name string) *serviceState {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	st, ok := g.states[name]
	if !ok {
		st = newServiceState(name)
		st.m = g.m.service(name)
		g.states[name] = st
	}
	st.retired.Store(false)
	return st
}

// reconcileStates retires the states of the services t lacks and frees
// those without flows; the others are freed by their last flow's release.
// It is called with the table in use after every change of the table
// (and after a change that failed, whose build may have made or taken up
// states).
func (g *Gateway) reconcileStates(t *table) {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	for name, st := range g.states {
		if svc := t.byName[name]; svc != nil && svc.st == st {
			st.retired.Store(false)
			continue
		}
		st.retired.Store(true)
		g.freeStateLocked(st)
	}
}

// freeRetired frees st, a retired state whose flow count has dropped to 0,
// unless its service was added back meanwhile.
func (g *Gateway) freeRetired(st *serviceState) {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	if st.retired.Load() {
		g.freeStateLocked(st)
	}
}

// freeStateLocked frees a retired state that has no flow: it leaves the
// map, its checks and drain deadlines stop for good, and its metric series
// are deleted. A flow racing the free finds the count at freedFlows and
// is refused (reserveFlow). The series are deleted under statesMu, so a
// state made again for the name (state) gets series of its own and never
// the children being deleted. The caller holds statesMu.
func (g *Gateway) freeStateLocked(st *serviceState) {
	if !st.flows.CompareAndSwap(0, freedFlows) {
		return // flows run (their last release frees it), or freed already
	}
	if g.states[st.name] == st {
		delete(g.states, st.name)
	}
	waits := st.health.close()
	for _, b := range st.backends.Load().list {
		b.untrack()
	}
	for _, done := range waits {
		<-done // a check's report would make its series again
	}
	g.m.forgetService(st.name)
	g.log.Debug("service state freed", "service", st.name)
}
