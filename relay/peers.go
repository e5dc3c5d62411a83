package relay

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ztgate/ztgate/tunnel"
)

// Roles the relay serves.
const (
	roleAgent   = tunnel.RoleAgent
	roleGateway = tunnel.RoleGateway
)

// peer is an admitted session and who it speaks for.
type peer struct {
	s *tunnel.Session
	// out sends the session's datagrams. A gateway's is set after the
	// gateway entered the registry, by its session's goroutine
	// (serveGateway), so others read it only through its tags.
	out   *tunnel.Outbox
	role  string
	id    tunnel.Identity // verified, or made from the hello in insecure mode
	since time.Time
	// warnings bounds the warnings the peer's messages make the relay log
	// (a rejected registration, signaling message or candidate); every
	// one is counted all the same. Nil: unbounded.
	warnings *rate.Limiter
}

// Warnings one peer's messages may cause: a burst, then a few a second.
const (
	peerWarnBurst  = 20
	peerWarnPerSec = 2
)

func newPeer(s *tunnel.Session, role string, id tunnel.Identity) peer {
	return peer{s: s, role: role, id: id, since: time.Now(), warnings: rate.NewLimiter(peerWarnPerSec, peerWarnBurst)}
}

// mayWarn reports whether a warning the peer caused is logged; beyond the
// peer's allowance it is not (its counter still moves).
func (p *peer) mayWarn() bool { return p.warnings == nil || p.warnings.Allow() }

// gateway is a gateway's session.
type gateway struct {
	peer
	name string // from the hello, for logs and the API

	// Guarded by Relay.mu.
	services   map[string]bool       // registered services → reported healthy
	defs       map[string]definition // registered services → their latest definition
	tags       map[uint32]*tag       // live tags routed to this gateway
	candidates []netip.AddrPort      // where agents may reach it directly (register)

	flows atomic.Int64  // entries of agents' flow tables that route here under live tags
	heard atomic.Uint64 // datagrams and messages received: the liveness check watches it
}

// agent is an agent's session.
type agent struct {
	peer
	// inner is the one source address the agent's packets may carry: the
	// hello's inner_addr (v2), or the source of its first routed packet
	// (v1). Written before serving (v2) or by the datagram goroutine under
	// Relay.mu (v1); read by that goroutine freely, by others under mu.
	inner netip.Addr
	tags  map[uint32]*tag // guarded by Relay.mu: live tags drawn for this session

	flows *flowTable // 5-tuple → tag: a flow keeps the gateway it started on

	// Owned by the datagram goroutine.
	byRoute    map[route]*tag    // the tag of each (service, gateway), possibly dead
	current    map[string]*tag   // service → the tag of its latest new flow, possibly dead
	registered map[string]bool   // v1: services ACKed
	frags      *tunnel.Fragments // the flows of fragmented datagrams, for their later fragments

	dirty chan struct{} // wakes the directory pusher (v2)

	evicted bool // guarded by Relay.mu: closed as its identity's oldest beyond the cap
}

// tag is one route: (agent session, service, gateway session).
type tag struct {
	id        uint32
	service   string
	vip, vip6 netip.Addr // the service's: the only sources of the gateway's packets on it
	agent     *agent
	gw        *gateway
	dead      atomic.Bool // set when it leaves the table; the agent draws anew

	// entries counts the flow-table entries under this tag. While the tag
	// lives they count towards gw.flows; when it dies they stop counting
	// there at once, not when the entries expire (an hour for TCP), so
	// that a gateway that stopped serving a service is not taken for busy.
	mu      sync.Mutex
	entries int64 // guarded by mu
	gone    bool  // guarded by mu: entries no longer count towards gw.flows
}

// addEntries counts n entries of agents' flow tables (n < 0: removed) under t.
func (t *tag) addEntries(n int64) {
	t.mu.Lock()
	t.entries += n
	if !t.gone {
		t.gw.flows.Add(n)
	}
	t.mu.Unlock()
}

// uncount stops t's entries counting towards its gateway's flows: the tag died.
func (t *tag) uncount() {
	t.mu.Lock()
	if !t.gone {
		t.gone = true
		t.gw.flows.Add(-t.entries)
	}
	t.mu.Unlock()
}

// route is what a tag stands for besides its agent: a service on a
// gateway.
type route struct {
	service string
	gw      *gateway
}

// newAgent prepares an agent session's state.
func newAgent(p peer, inner netip.Addr, stats *flowStats) *agent {
	return &agent{
		peer:       p,
		inner:      inner,
		tags:       make(map[uint32]*tag),
		flows:      newFlowTable(maxAgentFlows, stats),
		byRoute:    make(map[route]*tag),
		current:    make(map[string]*tag),
		registered: make(map[string]bool),
		frags:      tunnel.NewFragments(maxAgentFragmented),
		dirty:      make(chan struct{}, 1),
	}
}

// newGateway prepares a gateway session's state.
func newGateway(p peer, name string) *gateway {
	return &gateway{peer: p, name: name, services: make(map[string]bool),
		defs: make(map[string]definition), tags: make(map[uint32]*tag)}
}

// may reports whether the agent may reach svc: its identity holds rights
// for the service and at least one gateway serving it admits its tenant.
// Callers hold Relay.mu.
func (a *agent) may(svc *service) bool {
	return a.id.Permits(svc.name) && svc.admitsLocked(a.id.Tenant)
}

// admits reports whether g's definition of service admits tenant: a set
// look-up, once per new flow whatever the definition's size. Callers hold
// Relay.mu.
func (g *gateway) admits(service, tenant string) bool {
	def, ok := g.defs[service]
	return ok && def.admits(tenant)
}

// tenantSet is a definition's tenants as a set: a definition may list tens
// of thousands, and every new flow asks whether one of them (or "*") is
// there.
type tenantSet struct {
	all   bool                // "*" is listed: every tenant is admitted
	names map[string]struct{} // the tenants listed, "*" among them when listed
}

func newTenantSet(tenants []string) tenantSet {
	s := tenantSet{names: make(map[string]struct{}, len(tenants))}
	for _, t := range tenants {
		s.names[t] = struct{}{}
		s.all = s.all || t == "*"
	}
	return s
}

// admits reports whether the set lists tenant or "*". An empty set (a
// definition of no tenants, which registration refuses) admits no one.
func (s tenantSet) admits(tenant string) bool { return s.all || hasKey(s.names, tenant) }

// wake signals a pusher goroutine without blocking.
func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
