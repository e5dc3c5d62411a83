package gateway

import (
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
)

// service is a service as the data path sees it in one generation of the
// table. Its spec never changes; a reload builds a new service that shares
// the same serviceState.
type service struct {
	spec      catalog.Service
	vip, vip6 netip.Addr
	st        *serviceState
	// tbl is the generation it is of (zero for one a test made alone),
	// weak: a flow keeps its service, which must not keep a whole table
	// alive for as long as the flow lives. It is read for the service of
	// a backend set, whose table is in use or being put in.
	tbl weak.Pointer[table]
}

// table returns the generation s is of, or nil.
func (s *service) table() *table { return s.tbl.Value() }

// serviceState is what outlives a reload of a service of the same name:
// its backends with their health, its flow and handshake counts, its
// balancer.
//
// It lives while its service is in the table, and after the service is
// removed until its last flow has ended: then it is freed with its metric
// series (Gateway.reconcileStates, Gateway.release). A service of the
// same name added back before that takes it up again.
type serviceState struct {
	name string
	m    *serviceMetrics // its children of the per-service metrics
	// flows counts the flows admitted to the service, from admit to
	// release (a TCP flow's dial and handshake included); freedFlows once
	// the state is freed.
	flows      atomic.Int64
	handshakes atomic.Int64 // TCP handshakes in flight
	// retired: the service is in no table; the state is freed when flows
	// reaches 0. Written under Gateway.statesMu.
	retired atomic.Bool
	// removals counts the changes of the table that took the service out
	// or put it back: a removal's drain closes the flows only if no change
	// put the service back since (Gateway.swapTable).
	removals atomic.Uint64
	picker   picker
	backends atomic.Pointer[backendSet]

	mu sync.Mutex // serialises changes of backends
	// departed holds the backends that left the set while flows were bound
	// to them, by address: one added back while flows are still bound to
	// it is the same backend again, its flows, counts and health with it,
	// and its departure's drain is void. Once its flows have ended it
	// comes back new, as one that left without flows does; the entry is
	// swept at the next change. Guarded by mu.
	departed map[backendKey]*backend

	health healthChecks // active checks and drain deadlines of the backends
}

func newServiceState(name string) *serviceState {
	st := &serviceState{name: name}
	st.backends.Store(&backendSet{})
	return st
}

// freedFlows is the flow count of a freed state: so far below any count
// that a reservation racing the free sees a negative count and backs out.
const freedFlows = math.MinInt64 / 2

// reserveFlow takes one of the service's max flow slots (max ≤ 0:
// unlimited). It returns the refusal reason: refuseServiceLimit, or
// refuseNoService when the state was freed since the flow was classified
// (its service was removed and its flows had ended).
//
// Like reserve, a refusal leaves the count as it was: a raise and an undo
// could hide the count's 0 from the last release of a removed service,
// and bring it to 0 with nobody left to free the state.
func (st *serviceState) reserveFlow(max int) string {
	for {
		n := st.flows.Load()
		switch {
		case n < 0:
			return refuseNoService
		case max > 0 && n >= int64(max):
			return refuseServiceLimit
		}
		if st.flows.CompareAndSwap(n, n+1) {
			return ""
		}
	}
}

// setBackends makes addrs the backend set, keeping the backend objects of
// addresses that stay, and returns the ones that came and left. New
// backends start on probation (they take flows once their health checks
// bring them up) when probation is set: discovery adds addresses to a
// running service that way. The set stays of the generation of the one it
// replaces.
func (st *serviceState) setBackends(addrs []backendAddr, probation bool) (added, gone []*backend) {
	return st.setBackendsOf(nil, addrs, probation)
}

// setBackendsOf is setBackends for the set of owner, the service of a
// table being built (nil: the generation of the set it replaces).
func (st *serviceState) setBackendsOf(owner *service, addrs []backendAddr, probation bool) (added, gone []*backend) {
	st.mu.Lock()
	defer st.mu.Unlock()
	old := st.backends.Load()
	if owner == nil {
		owner = old.owner
	}
	byKey := make(map[backendKey]*backend, len(old.list))
	for _, b := range old.list {
		byKey[b.key()] = b
	}
	next := &backendSet{list: make([]*backend, 0, len(addrs)), owner: owner}
	seen := make(map[backendKey]bool, len(addrs))
	for _, a := range addrs {
		k := backendKey{a.addr, a.port}
		if seen[k] {
			continue
		}
		seen[k] = true
		b, ok := byKey[k]
		switch {
		case ok:
			delete(byKey, k)
		case st.departed[k] != nil && st.departed[k].active.Load() > 0:
			// Back while flows are bound to it; once they have ended
			// it comes back new, whether or not the entry was swept
			// since (below).
			b = st.departed[k]
			delete(st.departed, k)
			b.departures.Add(1) // back: the drain of its departure is void
			added = append(added, b)
		default:
			b = &backend{addr: a.addr, port: a.port, probation: probation || a.discovered}
			added = append(added, b)
		}
		b.setName(a) // a kept address may come by another name now
		b.setSRV(a.priority, a.weight)
		next.list = append(next.list, b)
	}
	st.backends.Store(next)
	for k, b := range st.departed {
		if b.active.Load() == 0 {
			delete(st.departed, k)
		}
	}
	for k, b := range byKey {
		gone = append(gone, b)
		b.departures.Add(1)
		if b.active.Load() > 0 {
			if st.departed == nil {
				st.departed = make(map[backendKey]*backend)
			}
			st.departed[k] = b
		}
	}
	return added, gone
}

// backendAddr is a resolved backend address and the name it came from,
// with what its SRV record said.
type backendAddr struct {
	addr     netip.Addr
	origin   string
	host     string // the SRV record's target it came from; "" otherwise
	port     uint16
	priority uint16
	weight   uint16
	// discovered: it came from a name its service was running with. New
	// to the service, it starts on probation, as an address a discovery
	// watcher applies does (Gateway.backendsOf).
	discovered bool
}

// table is one generation of the service table. The data path reads it
// without locks; changes build a new table and swap it in.
type table struct {
	byVIP   map[netip.Addr]*service
	byName  map[string]*service
	tenants tenantTable
	views   map[string]*dnsView // per tenant
	all     *dnsView            // every service: the router's operator
	open    *dnsView            // the services open to "*": any other tenant

	limits       conf.Limits   // the flow limits of this generation
	drainTimeout time.Duration // how long flows of removed services and backends live on

	// removed are the backends that left their service when this
	// generation was built (a reload); their flows drain once it is in.
	removed []*backend
}

func (t *table) lookupVIP(vip netip.Addr) *service { return t.byVIP[vip.Unmap()] }
