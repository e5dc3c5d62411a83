package gateway

import "sync"

// tenantPresence says which tenants the gateway keeps flow series for
// (ztgate_flows_total and ztgate_flows_active of every service): the
// tenants present, those a [[tenant]] of the table in use names and those
// with an open tunnel ingress (a relay tag, a direct agent session). A
// tenant that stops being present has its series deleted at once where
// none of its flows is open, else by the last of them (serviceMetrics).
//
// Agents' certificates name tenants no [[tenant]] does — every tenant,
// behind a relay —, and a service with tenants = ["*"] admits them all:
// were their series kept for good, every tenant that ever had an agent
// connected would stay in /metrics. They are kept while one of its agents
// is connected, so the series follow the tenants served now.
//
// mu orders the changes of presence — an ingress opened or closed, a
// reload that changes the [[tenant]]s — with one another and with the
// check newFlow makes of series it made (retireAbsent). Lock order: mu,
// then statesMu, then a service's metrics mu.
type tenantPresence struct {
	mu        sync.Mutex
	ingresses map[string]int // open ingresses by tenant; a tenant with none is absent
}

// ingressOpened counts an ingress of tenant that opens (ingressTable.add).
// The first one makes a tenant no [[tenant]] names present again: series
// of it that its last flows still hold are kept.
func (g *Gateway) ingressOpened(tenant string) {
	p := &g.presence
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ingresses == nil {
		p.ingresses = make(map[string]int)
	}
	p.ingresses[tenant]++
	if p.ingresses[tenant] == 1 && !g.configures(tenant) {
		g.tenantsChangedLocked(map[string]bool{tenant: false})
	}
}

// ingressClosed counts an ingress of tenant that closed
// (ingressTable.remove). The last one of a tenant no [[tenant]] names
// makes it absent: its series go.
func (g *Gateway) ingressClosed(tenant string) {
	p := &g.presence
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.ingresses[tenant]; n > 1 {
		p.ingresses[tenant] = n - 1
		return
	}
	delete(p.ingresses, tenant)
	if !g.configures(tenant) {
		g.tenantsChangedLocked(map[string]bool{tenant: true})
	}
}

// retireAbsent is told by newFlow that it made fm, the series of a flow of
// tenant, the first since they were deleted. When the tenant is absent —
// the flow was classified before its ingress closed, or before a reload
// removed its [[tenant]] — they were made after its series were deleted:
// they go with their last flow.
func (g *Gateway) retireAbsent(sm *serviceMetrics, fm *flowMetrics, tenant string) {
	p := &g.presence
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ingresses[tenant] == 0 && !g.configures(tenant) {
		sm.retire(fm)
	}
}

// configures reports whether a [[tenant]] of the table in use names
// tenant.
func (g *Gateway) configures(tenant string) bool {
	t := g.tbl.Load()
	return t != nil && t.tenants.configures(tenant)
}

// tenantsChangedLocked applies changes of presence (true: left, false:
// came back) to every service's flow series. The caller holds presence.mu.
func (g *Gateway) tenantsChangedLocked(changes map[string]bool) {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	for _, st := range g.states {
		st.m.tenantsChanged(changes)
	}
}
