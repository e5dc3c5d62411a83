package gateway

import (
	"math"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack"
)

// Reasons a new flow is refused or dropped by a limit; they label
// ztgate_flows_refused_total with the reasons of classify.go.
const (
	refuseLimit             = "flow_limit"              // [limits] max_flows of the gateway
	refuseServiceLimit      = "service_flow_limit"      // [[service]] max_flows
	refuseTenantLimit       = "tenant_flow_limit"       // [[tenant]] max_flows
	refuseRate              = "rate_limited"            // [limits] new_flows_per_second of the source
	refuseTenantRate        = "tenant_rate_limited"     // [[tenant]] new_flows_per_second of the source
	refuseServiceRate       = "service_rate_limited"    // [[service]] new_flows_per_second of the source
	refuseTenantHandshakes  = "handshake_limit"         // the tenant's in-flight TCP handshakes (its own bound or its share)
	refuseServiceHandshakes = "service_handshake_limit" // [[service]] max_inflight_handshakes
	refuseEchoLimit         = "echo_limit"              // the gateway's bound on echo requests in flight to backends
	refuseTenantEchoLimit   = "tenant_echo_limit"       // a tenant's share of them (echolimits.go)
	refuseSourceEchoLimit   = "source_echo_limit"       // a source address's share of them
)

// handshakeShare is the part of [limits] max_inflight_handshakes a tenant
// without a max_inflight_handshakes of its own may hold: a SYN flood from
// one tenant leaves the rest to the others. gVisor's forwarder enforces
// the whole bound; the gateway the tenants' and the services'.
const handshakeShare = 2 // one tenant: at most 1/handshakeShare of the bound

// flowLimits holds the counters behind the limits of new flows: per
// source rate, per tenant flows and handshakes. The gateway's and each
// service's flow counts live with the gateway and the service.
type flowLimits struct {
	rates *rateTable
	// fdCap bounds the gateway's flows below the open file limit: every
	// flow holds a backend socket, and a flood that exhausted the
	// descriptors would take the API, DNS and health checks down with it.
	fdCap int

	// tenants holds an entry per tenant that holds flows or handshakes
	// now: takeTenant makes it, and the giveTenant that leaves both its
	// counts at 0 deletes it, so tenants that leave the configuration (and
	// the tenants of agents' certificates) do not stay. The invariant that
	// lets a release always find its entry: a count is raised only under
	// mu's read lock, and an entry is deleted only under the write lock
	// with both counts at 0, so an entry with a count above 0 is never
	// deleted.
	mu      sync.RWMutex
	tenants map[string]*tenantCount // by tenant name
}

// tenantCount is what one tenant holds now.
type tenantCount struct {
	flows      atomic.Int64
	handshakes atomic.Int64
}

// tenantSlot is one of the counts of a tenant.
type tenantSlot int

const (
	tenantFlows tenantSlot = iota
	tenantHandshakes
)

// counts returns the count of slot s and the tenant's other count.
func (c *tenantCount) counts(s tenantSlot) (this, other *atomic.Int64) {
	if s == tenantFlows {
		return &c.flows, &c.handshakes
	}
	return &c.handshakes, &c.flows
}

func newFlowLimits() *flowLimits {
	return &flowLimits{rates: newRateTable(), tenants: make(map[string]*tenantCount), fdCap: fdFlowCap()}
}

// fdFlowCap is the number of flows the open file limit leaves room for,
// keeping a tenth (at least 256) for everything else; 0 when unknown.
func fdFlowCap() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > math.MaxInt32 {
		return 0
	}
	n := int(rl.Cur)
	return max(n-max(256, n/10), 1)
}

// warnLimits logs when the open file limit lowers [limits] max_flows.
func (g *Gateway) warnLimits() {
	configured := g.tbl.Load().limits.MaxFlows
	if n := g.limits.maxFlows(configured); n != configured {
		g.log.Warn("the open file limit allows fewer flows than [limits] max_flows; raise it (LimitNOFILE= under systemd, ulimit -n in a shell) to allow more, or lower max_flows",
			"max_flows", configured, "effective", n)
	}
}

// maxFlows is the gateway's bound on flows: [limits] max_flows, lowered to
// what the open file limit allows.
func (l *flowLimits) maxFlows(configured int) int {
	if l.fdCap > 0 && (configured <= 0 || configured > l.fdCap) {
		return l.fdCap
	}
	return configured
}

// takeTenant reserves one of max (≤ 0: unlimited) flows or handshakes of
// tenant; false when it holds max already. The count is raised under mu's
// read lock (a delete cannot be between the lookup and the raise), and a
// refusal leaves it as it was (reserve), so only giveTenant brings a count
// to 0.
func (l *flowLimits) takeTenant(name string, s tenantSlot, max int) bool {
	l.mu.RLock()
	if c := l.tenants[name]; c != nil {
		n, _ := c.counts(s)
		ok := reserve(n, max)
		l.mu.RUnlock()
		return ok
	}
	l.mu.RUnlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.tenants[name]
	if c == nil { // the tenant's first flow or handshake since its last ended
		c = &tenantCount{}
		l.tenants[name] = c
	}
	n, _ := c.counts(s)
	return reserve(n, max)
}

// giveTenant gives back a flow or handshake takeTenant reserved for
// tenant. The one that leaves both counts at 0 frees the entry.
func (l *flowLimits) giveTenant(name string, s tenantSlot) {
	l.mu.RLock()
	c := l.tenants[name]
	if c == nil {
		l.mu.RUnlock()
		panic("gateway: tenant " + strconv.Quote(name) + " gives back what it never took")
	}
	n, other := c.counts(s)
	idle := n.Add(-1) == 0 && other.Load() == 0
	l.mu.RUnlock()
	if idle {
		l.freeTenant(name, c)
	}
}

// freeTenant deletes c, the entry of tenant, if both its counts are still
// 0 (a reservation may have come in since they were seen at 0) and it is
// still the tenant's (another release may have freed it, and a
// reservation made it again).
func (l *flowLimits) freeTenant(name string, c *tenantCount) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tenants[name] == c && c.flows.Load() == 0 && c.handshakes.Load() == 0 {
		delete(l.tenants, name)
	}
}

// allowSource charges a new flow (or echo request) from src, a source of
// tenant, to the source's rate: the tenant's new_flows_per_second, else
// the gateway's. It returns the refusal reason when the source is over it.
func (g *Gateway) allowSource(t *table, tenant string, src netip.Addr) string {
	perSecond, burst := ownRate(t.tenants.limits[tenant], t.limits)
	reason := refuseTenantRate
	if perSecond == 0 {
		perSecond, burst, reason = t.limits.NewFlowsPerSecond, t.limits.NewFlowsBurst, refuseRate
	}
	if !g.limits.rates.allow(rateKey{src: src}, perSecond, burst, g.now()) {
		return reason
	}
	return ""
}

// allowToService charges a new flow from src to svc's own rate per source,
// if it has one; false when src is over it.
func (g *Gateway) allowToService(t *table, svc *service, src netip.Addr) bool {
	perSecond, burst := ownRate(svc.spec.FlowLimits, t.limits)
	return g.limits.rates.allow(rateKey{service: svc.spec.Name, src: src}, perSecond, burst, g.now())
}

// ownRate is the rate of new flows per source a tenant or service sets for
// itself, and its burst: by default twice the rate; both at most the
// gateway's (conf rejects more; the cap keeps API services stored under
// an older [limits] within the running one). 0: none of its own.
func ownRate(own catalog.FlowLimits, global conf.Limits) (perSecond, burst int) {
	perSecond, burst = own.NewFlowsPerSecond, own.NewFlowsBurst
	if perSecond <= 0 {
		return 0, 0
	}
	if burst <= 0 {
		burst = 2 * perSecond
	}
	if global.NewFlowsPerSecond > 0 {
		perSecond = min(perSecond, global.NewFlowsPerSecond)
		burst = min(burst, global.NewFlowsBurst)
	}
	return perSecond, max(burst, 1)
}

// admit reserves a flow slot of the gateway, of the flow's tenant and of
// its service; it returns the refusal reason when a limit is reached.
func (g *Gateway) admit(t *table, d decision) string {
	if !reserve(&g.flowCount, g.limits.maxFlows(t.limits.MaxFlows)) {
		return refuseLimit
	}
	if !g.limits.takeTenant(d.peer.tenant, tenantFlows, t.tenants.limits[d.peer.tenant].MaxFlows) {
		g.flowCount.Add(-1)
		return refuseTenantLimit
	}
	if reason := d.svc.st.reserveFlow(d.svc.spec.MaxFlows); reason != "" {
		g.limits.giveTenant(d.peer.tenant, tenantFlows)
		g.flowCount.Add(-1)
		return reason
	}
	return ""
}

// reserve takes one of max slots of c (max ≤ 0: unlimited). A refusal
// leaves c as it was, never over max even for a moment: an add and an
// undo would refuse a concurrent reservation a slot that was free, and
// the undo could bring a tenant's count to 0 with no release to see it
// (giveTenant).
func reserve(c *atomic.Int64, max int) bool {
	if max <= 0 {
		c.Add(1)
		return true
	}
	for {
		n := c.Load()
		if n >= int64(max) {
			return false
		}
		if c.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release gives back the slots admit reserved for a flow of tenant. The
// last flow of a removed service frees its state.
func (g *Gateway) release(svc *service, tenant string) {
	g.limits.giveTenant(tenant, tenantFlows)
	g.flowCount.Add(-1)
	if svc.st.flows.Add(-1) == 0 && svc.st.retired.Load() {
		g.freeRetired(svc.st)
	}
}

// refuseOrDrop answers a refused SYN: load shedding (a source over a rate,
// a tenant or service over its handshakes) drops it, so the client retries
// a second later and a flood is not reflected as resets; every other
// refusal is a RST, so the client never hangs.
func refuseOrDrop(req *netstack.TCPRequest, reason string) {
	switch reason {
	case refuseRate, refuseTenantRate, refuseServiceRate, refuseTenantHandshakes, refuseServiceHandshakes:
		req.Drop()
	default:
		req.Refuse()
	}
}

// beginHandshake reserves an in-flight TCP handshake of the flow's tenant
// and of its service, held from the SYN until the client's handshake
// completes or fails; it returns the refusal reason when either holds all
// it may.
func (g *Gateway) beginHandshake(t *table, d decision) string {
	if !g.limits.takeTenant(d.peer.tenant, tenantHandshakes, g.tenantHandshakes(t, d.peer.tenant)) {
		return refuseTenantHandshakes
	}
	if !reserve(&d.svc.st.handshakes, d.svc.spec.MaxInflightHandshakes) {
		g.limits.giveTenant(d.peer.tenant, tenantHandshakes)
		return refuseServiceHandshakes
	}
	return ""
}

// tenantHandshakes is the bound of a tenant's in-flight handshakes: its
// own max_inflight_handshakes, else its share of the gateway's; at most
// the gateway's bound the netstack was started with.
func (g *Gateway) tenantHandshakes(t *table, tenant string) int {
	bound := g.cfg.Limits.MaxInflightHandshake
	if own := t.tenants.limits[tenant].MaxInflightHandshakes; own > 0 {
		return min(own, bound)
	}
	return max(1, bound/handshakeShare)
}

// endHandshake gives back what beginHandshake reserved for d.
func (g *Gateway) endHandshake(d decision) {
	d.svc.st.handshakes.Add(-1)
	g.limits.giveTenant(d.peer.tenant, tenantHandshakes)
}
