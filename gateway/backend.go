package gateway

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/catalog"
)

// backendState is what the gateway believes of a backend.
type backendState uint8

const (
	stateUnknown backendState = iota // no check result yet: new flows may use it
	stateUp
	stateDown
)

func (s backendState) String() string {
	switch s {
	case stateUp:
		return "up"
	case stateDown:
		return "down"
	}
	return "unknown"
}

// backend is one address of a service's backends. It lives as long as the
// service keeps the address, across reloads, so health and flow counts
// survive them.
type backend struct {
	addr netip.Addr
	// name is what the configuration calls it and the host its HTTP checks
	// name; a reload may rename a backend it keeps (another name of the
	// same address), so it is swapped whole.
	name atomic.Pointer[backendName]
	// From SRV records: the port replaces every port's target; srvPW holds
	// priority<<16 | weight (priority makes failover tiers, lowest first;
	// weight shares a tier). Discovery updates it while flows pick.
	port  uint16
	srvPW atomic.Uint32

	active atomic.Int64 // live flows bound to it
	// dialing counts TCP flows that picked it and whose dial is in
	// progress. least_conn weighs active + dialing: a burst of new flows
	// would otherwise all go to the backend that was least loaded when
	// the burst began (and the most to one slow to accept).
	dialing atomic.Int64
	// departures counts the times it left its service's set and came back
	// (serviceState.setBackends): a drain of its flows holds only while
	// the count is what it was at the departure.
	departures atomic.Uint64

	mu         sync.Mutex
	state      backendState
	lastErr    string
	lastChange time.Time
	okRun      int // consecutive successful checks
	failRun    int // consecutive failed checks
	draining   bool
	drainUntil time.Time // zero: until undrained
	drainDone  bool      // drainUntil passed and its flows were closed: nothing to arm again
	// probation: an address discovered for a running service takes flows
	// only once its health checks brought it up.
	probation bool
	// untracked: the backend left its service (or the service's state was
	// freed) and its series were deleted; nothing makes them again until
	// the backend is back in its service (track).
	untracked bool
	dialErrs  prometheus.Counter // its child of ztgate_dial_errors_total, made at its first failed dial
}

// untrack stops the backend's series from being made again, before they
// are deleted: a flow still bound to a removed backend may fail a dial.
func (b *backend) untrack() {
	b.mu.Lock()
	b.untracked, b.dialErrs = true, nil
	b.mu.Unlock()
}

// track undoes untrack for a backend back in its service.
func (b *backend) track() {
	b.mu.Lock()
	b.untracked = false
	b.mu.Unlock()
}

// countDialError counts a failed dial to backend b of service svc. The
// child is held, not looked up per error, so that an error racing the
// backend's removal cannot make its series again.
func (g *Gateway) countDialError(svc string, b *backend) {
	b.mu.Lock()
	if b.dialErrs == nil && !b.untracked {
		b.dialErrs = g.m.dialErrors.WithLabelValues(svc, b.label())
	}
	c := b.dialErrs
	b.mu.Unlock()
	if c != nil {
		c.Inc()
	}
}

// usable reports whether new flows may be sent to the backend.
func (b *backend) usable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.usableLocked()
}

// usableLocked is usable with b.mu held.
func (b *backend) usableLocked() bool {
	return !b.draining && !b.probation && b.state != stateDown
}

func (b *backend) priority() uint16 { return uint16(b.srvPW.Load() >> 16) }
func (b *backend) weight() uint16   { return uint16(b.srvPW.Load()) }
func (b *backend) setSRV(priority, weight uint16) {
	b.srvPW.Store(uint32(priority)<<16 | uint32(weight))
}

// portFor returns the backend port of a flow to a service port whose
// target is target: the SRV record's port when there is one.
func (b *backend) portFor(target uint16) uint16 {
	if b.port != 0 {
		return b.port
	}
	return target
}

// label names the backend in the series of its metrics and in logs: its
// address, and for a backend from an SRV record its address and the
// record's port ("192.0.2.1:8080", "[2001:db8::1]:8080"), as SRV records
// may put several backends of a service on one address. Unique within a
// service, as its key.
func (b *backend) label() string {
	if b.port == 0 {
		return b.addr.String()
	}
	return netip.AddrPortFrom(b.addr, b.port).String()
}

// key identifies a backend within a service: its address and SRV port.
type backendKey struct {
	addr netip.Addr
	port uint16
}

func (b *backend) key() backendKey { return backendKey{b.addr, b.port} }

// backendName is how a backend is named.
type backendName struct {
	origin string // the configured name it came from: an IP literal, a host name or an SRV name
	host   string // the Host of its HTTP checks: the host name it came from (an SRV record's target); "" for an address
}

// origin is the configured name the backend came from (what the API shows
// and drains by).
func (b *backend) origin() string {
	if n := b.name.Load(); n != nil {
		return n.origin
	}
	return b.addr.String()
}

// checkHost is the host name its HTTP checks send as Host, or "".
func (b *backend) checkHost() string {
	if n := b.name.Load(); n != nil {
		return n.host
	}
	return ""
}

// setName names b after a, and reports whether that changed its name.
func (b *backend) setName(a backendAddr) bool {
	host := a.host
	if host == "" {
		if _, err := netip.ParseAddr(a.origin); err != nil {
			host = a.origin // a host name; an IP literal names no host
		}
	}
	n := &backendName{origin: a.origin, host: host}
	if old := b.name.Load(); old != nil && *old == *n {
		return false
	}
	b.name.Store(n)
	return true
}

// backendSet is an immutable list of backends; services swap whole sets.
type backendSet struct {
	list []*backend
	// owner is the service of the table generation the set was made for
	// (nil: none, in tests). A reload gives the state its new set while
	// it builds the table, before the data path can see that table: a
	// flow classified against an older generation must not pick from it
	// (decision.withBackends).
	owner *service
}

// has reports whether the set holds a backend at k's address.
func (s *backendSet) has(k backendKey) bool {
	for _, b := range s.list {
		if b.key() == k {
			return true
		}
	}
	return false
}

// picker chooses a backend for a new flow among the usable ones.
type picker struct {
	rr atomic.Uint64
}

const fnvOffset = 14695981039346656037

// fnv64 continues an FNV-1a hash: stable across restarts, so source_hash
// keeps sending a client to the same backend after one.
func fnv64(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// mix64 is the finaliser of SplitMix64. FNV-1a alone spreads addresses
// that differ in their last bytes poorly over a few backends.
func mix64(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}

// load is what least_conn weighs: live flows and dials in progress.
func (b *backend) load() int64 { return b.active.Load() + b.dialing.Load() }

// pick returns a usable backend by policy, other than those in skip (the
// ones a flow already failed to reach), or nil when there is none.
func (p *picker) pick(set *backendSet, policy catalog.Balance, client netip.Addr, skip []*backend) *backend {
	usable := func(b *backend) bool { return b.usable() && !slices.Contains(skip, b) }
	// SRV priorities are failover tiers: only the best tier with a usable
	// backend takes flows.
	tier, weighted := uint16(math.MaxUint16), false
	for _, b := range set.list {
		if pr := b.priority(); usable(b) && pr <= tier {
			if pr < tier {
				tier, weighted = pr, false
			}
			weighted = weighted || b.weight() > 0
		}
	}
	ok := func(b *backend) bool { return b.priority() == tier && usable(b) }
	if weighted && policy == catalog.RoundRobin {
		return p.weighted(set, ok)
	}
	switch policy {
	case catalog.LeastConn:
		// Ties among the least loaded are taken in turn, so short flows
		// (each gone before the next) spread instead of all going to the
		// first backend.
		least, ties := int64(math.MaxInt64), 0
		for _, b := range set.list {
			if !ok(b) {
				continue
			}
			switch a := b.load(); {
			case a < least:
				least, ties = a, 1
			case a == least:
				ties++
			}
		}
		if b := p.nth(set, ties, func(b *backend) bool { return ok(b) && b.load() == least }); b != nil {
			return b
		}
		// Other flows' picks and ends moved every least loaded backend
		// between the two passes: take the least loaded now.
		var best *backend
		for _, b := range set.list {
			if ok(b) && (best == nil || b.load() < best.load()) {
				best = b
			}
		}
		return best
	case catalog.SourceHash:
		// Rendezvous hashing: each client keeps its backend while that
		// backend stays usable, and moves only when it goes away.
		var (
			best  *backend
			score uint64
		)
		ca := client.As16()
		ch := fnv64(fnvOffset, ca[:])
		for _, b := range set.list {
			if !ok(b) {
				continue
			}
			ba := b.addr.As16()
			if s := mix64(fnv64(ch, ba[:])); best == nil || s > score {
				best, score = b, s
			}
		}
		return best
	default:
		n := 0
		for _, b := range set.list {
			if ok(b) {
				n++
			}
		}
		return p.nth(set, n, ok)
	}
}

// weighted picks among the matching backends in proportion to their SRV
// weights (RFC 2782: a weight of 0 gets a small share).
func (p *picker) weighted(set *backendSet, match func(*backend) bool) *backend {
	total := 0
	for _, b := range set.list {
		if match(b) {
			total += int(b.weight()) + 1
		}
	}
	if total == 0 {
		return nil
	}
	n := rand.IntN(total)
	var last *backend
	for _, b := range set.list {
		if !match(b) {
			continue
		}
		last = b
		if n -= int(b.weight()) + 1; n < 0 {
			return b
		}
	}
	return last
}

// nth returns the next of the n backends of set that match, in turn: each
// gets an equal share however many others are unusable. When a backend
// changed between counting and choosing, fewer may match: then the last
// match is returned, or nil.
func (p *picker) nth(set *backendSet, n int, match func(*backend) bool) *backend {
	if n == 0 {
		return nil
	}
	k := p.rr.Add(1) % uint64(n)
	var last *backend
	for _, b := range set.list {
		if !match(b) {
			continue
		}
		if k == 0 {
			return b
		}
		k--
		last = b
	}
	return last
}
