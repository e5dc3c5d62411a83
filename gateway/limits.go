package gateway

import (
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ztgate/ztgate/netstack"
)

// Reasons a new flow is refused or dropped by a limit; they label
// ztgate_flows_refused_total with the reasons of classify.go.
const (
	refuseLimit        = "flow_limit"         // [limits] max_flows of the gateway
	refuseServiceLimit = "service_flow_limit" // [[service]] max_flows
	refuseTenantLimit  = "tenant_flow_limit"  // [[tenant]] max_flows
	refuseRate         = "rate_limited"       // [limits] new_flows_per_second of the source
	refuseHandshakes   = "handshake_limit"    // the tenant's share of in-flight TCP handshakes
)

// handshakeShare is the part of [limits] max_inflight_handshakes one
// tenant may hold: a SYN flood from one tenant leaves the rest to the
// others. gVisor's forwarder enforces the whole bound; the gateway the
// share.
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

	mu      sync.RWMutex
	tenants map[string]*tenantCount // by tenant name; an entry per tenant that ever opened a flow
}

// tenantCount is what one tenant holds now.
type tenantCount struct {
	flows      atomic.Int64
	handshakes atomic.Int64
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
		g.log.Warn("the open file limit allows fewer flows than [limits] max_flows; raise it (LimitNOFILE=) to allow more",
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

// tenant returns the counters of a tenant, creating them. Tenant names
// come from the configuration and from certificates the CA issued, so the
// map stays small.
func (l *flowLimits) tenant(name string) *tenantCount {
	l.mu.RLock()
	c := l.tenants[name]
	l.mu.RUnlock()
	if c != nil {
		return c
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c = l.tenants[name]; c == nil {
		c = &tenantCount{}
		l.tenants[name] = c
	}
	return c
}

// allowNew charges a new flow (or echo request) from src to its source's
// rate; false when the source is over new_flows_per_second.
func (g *Gateway) allowNew(t *table, src netip.Addr) bool {
	return g.limits.rates.allow(src, t.limits.NewFlowsPerSecond, t.limits.NewFlowsBurst, g.now())
}

// admit reserves a flow slot of the gateway, of the flow's tenant and of
// its service; it returns the refusal reason when a limit is reached.
func (g *Gateway) admit(t *table, d decision) string {
	if !reserve(&g.flowCount, g.limits.maxFlows(t.limits.MaxFlows)) {
		return refuseLimit
	}
	tc := g.limits.tenant(d.peer.tenant)
	if !reserve(&tc.flows, t.tenants.maxFlows[d.peer.tenant]) {
		g.flowCount.Add(-1)
		return refuseTenantLimit
	}
	if !reserve(&d.svc.st.flows, d.svc.spec.MaxFlows) {
		tc.flows.Add(-1)
		g.flowCount.Add(-1)
		return refuseServiceLimit
	}
	return ""
}

// reserve takes one of max slots of c (max ≤ 0: unlimited).
func reserve(c *atomic.Int64, max int) bool {
	if n := c.Add(1); max > 0 && n > int64(max) {
		c.Add(-1)
		return false
	}
	return true
}

// release gives back the slots admit reserved for a flow of tenant.
func (g *Gateway) release(svc *service, tenant string) {
	svc.st.flows.Add(-1)
	g.limits.tenant(tenant).flows.Add(-1)
	g.flowCount.Add(-1)
}

// refuseOrDrop answers a refused SYN: load shedding (a source over its rate,
// a tenant over its handshakes) drops it, so the client retries a second
// later and a flood is not reflected as resets; every other refusal is a
// RST, so the client never hangs.
func refuseOrDrop(req *netstack.TCPRequest, reason string) {
	switch reason {
	case refuseRate, refuseHandshakes:
		req.Drop()
	default:
		req.Refuse()
	}
}

// beginHandshake reserves one of the tenant's share of in-flight TCP
// handshakes, held from the SYN until the client's handshake completes or
// fails; false when the tenant holds its whole share.
func (g *Gateway) beginHandshake(tenant string) bool {
	share := max(1, g.cfg.Limits.MaxInflightHandshake/handshakeShare)
	return reserve(&g.limits.tenant(tenant).handshakes, share)
}

// endHandshake gives back what beginHandshake reserved.
func (g *Gateway) endHandshake(tenant string) { g.limits.tenant(tenant).handshakes.Add(-1) }
