package tunnel

import (
	"encoding/binary"
	"time"
)

// Flows of the packets a tunnel carries. The relay and the agent route
// each flow on the path it started on (a gateway, the direct path or the
// relay), so both key tables on a packet's 5-tuple: ParseFlow reads it,
// FlowTable keeps what each flow was given, with idle expiry and a bound.

// IP protocol numbers ParseFlow tells apart.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// Idle timeouts of the flows in the relay's and the agent's tables: the
// gateway's defaults, so that an entry outlives the gateway's flow by
// little (TCP after a FIN or RST: long enough for the close to finish).
const (
	FlowTCPIdle     = time.Hour
	FlowClosingIdle = 30 * time.Second
	FlowUDPIdle     = 2 * time.Minute
	FlowOtherIdle   = 30 * time.Second // ICMP and other protocols
)

// Idle returns how long the flow's entry lives without packets.
func (f Flow) Idle() time.Duration {
	switch {
	case f.Closing:
		return FlowClosingIdle
	case f.Key.Proto == ProtoTCP:
		return FlowTCPIdle
	case f.Key.Proto == ProtoUDP:
		return FlowUDPIdle
	}
	return FlowOtherIdle
}

// Refresh returns the idle timeout a packet of a known flow sets (for
// FlowTable.Lookup): FlowClosingIdle after a FIN or RST, else 0 (unchanged).
func (f Flow) Refresh() time.Duration {
	if f.Closing {
		return FlowClosingIdle
	}
	return 0
}

// FlowKey is an IPv4 5-tuple; for ICMP echo the identifier stands in for
// the source port, other ICMP messages have no ports. Comparable and fixed
// size: map lookups allocate nothing.
type FlowKey struct {
	Src, Dst         [4]byte
	SrcPort, DstPort uint16
	Proto            uint8
}

// Flow is what ParseFlow reads of a packet.
type Flow struct {
	Key     FlowKey
	Start   bool // a TCP SYN without ACK: a connection attempt
	Closing bool // a TCP FIN or RST
	// Error: the packet is an ICMP error (unreachable, time exceeded,
	// parameter problem) about a TCP or UDP packet it quotes, sent back to
	// where that packet came from; Key is then the flow of the packets its
	// sender sends the other way — the one the quoted packet belongs to —
	// so that the error follows its flow, and opens none.
	Error bool
}

// ParseFlow reads the flow of an IPv4 packet that is not a fragment and
// whose transport header is whole; ok is false for anything else (IPv6,
// fragments, truncated packets). Fragments.Flow, which the relay and the
// agent key their tables with, takes a datagram's fragments too.
func ParseFlow(p []byte) (f Flow, ok bool) {
	if !ipv4HeaderOK(p) || binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 { // MF or an offset
		return f, false
	}
	return parseTransport(p)
}

// ipv4HeaderOK reports whether p starts with an IPv4 header that it holds
// whole.
func ipv4HeaderOK(p []byte) bool {
	const ipv4Header = 20
	return len(p) >= ipv4Header && p[0]>>4 == 4 && int(p[0]&0x0f)*4 >= ipv4Header
}

// parseTransport is ParseFlow past the checks of the IP header: the flow
// of an IPv4 packet, or of a datagram's first fragment, by its transport
// header.
func parseTransport(p []byte) (f Flow, ok bool) {
	ihl := int(p[0]&0x0f) * 4
	f.Key.Proto = p[9]
	f.Key.Src, f.Key.Dst = [4]byte(p[12:16]), [4]byte(p[16:20])
	l4 := p[min(ihl, len(p)):]
	switch f.Key.Proto {
	case ProtoTCP:
		if len(l4) < 14 {
			return f, false
		}
		f.Key.SrcPort, f.Key.DstPort = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		flags := l4[13]
		f.Start = flags&0x12 == 0x02 // SYN, not ACK
		f.Closing = flags&0x05 != 0  // FIN or RST
	case ProtoUDP:
		if len(l4) < 4 {
			return f, false
		}
		f.Key.SrcPort, f.Key.DstPort = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
	case ProtoICMP:
		if len(l4) < 8 {
			return f, false
		}
		switch l4[0] {
		case 8, 0: // echo request or reply: one flow per identifier
			f.Key.SrcPort = binary.BigEndian.Uint16(l4[4:])
		case 3, 11, 12: // destination unreachable, time exceeded, parameter problem
			if k, ok := quotedFlow(p[12:20], l4[8:]); ok {
				f.Key, f.Error = k, true
			}
		}
	}
	return f, true
}

// quotedFlow returns the flow of the packets sent the other way of q, the
// IPv4 packet an ICMP error quotes (its header and at least 8 bytes of
// TCP or UDP), when q went from the error's destination to its source
// (outer: the error's source and destination addresses).
func quotedFlow(outer, q []byte) (k FlowKey, ok bool) {
	const ipv4Header = 20
	if len(q) < ipv4Header || q[0]>>4 != 4 {
		return k, false
	}
	ihl := int(q[0]&0x0f) * 4
	proto := q[9]
	if ihl < ipv4Header || len(q) < ihl+4 || (proto != ProtoTCP && proto != ProtoUDP) ||
		binary.BigEndian.Uint16(q[6:8])&0x1fff != 0 || // a later fragment quotes no ports
		[4]byte(q[12:16]) != [4]byte(outer[4:8]) || [4]byte(q[16:20]) != [4]byte(outer[:4]) {
		return k, false
	}
	ports := q[ihl:]
	return FlowKey{
		Src: [4]byte(q[16:20]), Dst: [4]byte(q[12:16]),
		SrcPort: binary.BigEndian.Uint16(ports[2:]), DstPort: binary.BigEndian.Uint16(ports),
		Proto: proto,
	}, true
}

// FlowRemoval says why an entry left a FlowTable.
type FlowRemoval uint8

// Why entries leave a FlowTable.
const (
	FlowExpired  FlowRemoval = iota // idle longer than its timeout
	FlowEvicted                     // the table was at its bound
	FlowReplaced                    // Put for its key
	FlowCleared                     // Clear
)

// flowEntry is one flow of a FlowTable.
type flowEntry[V any] struct {
	v    V
	last int64 // clock of the last packet (monoclock in the roles)
	idle int64 // nanoseconds without packets before it expires
}

// Bounds of a FlowTable's work.
const (
	flowSweepEvery = 5 * time.Second // Sweep removes expired entries at most this often
	fullSweepEvery = time.Second     // a full table looks for expired entries at most this often
	evictSample    = 8               // entries looked at to evict the stalest when full
)

// FlowTable maps flows to values of V. Entries expire after their idle
// timeout; at most max are kept, and a full table evicts the stalest of a
// few entries. Clocks are nanosecond values the caller passes, so that
// tests use fake ones; the roles pass internal/monoclock stamps, which a
// step of the wall clock leaves alone. Not safe for concurrent use.
type FlowTable[V any] struct {
	m         map[FlowKey]flowEntry[V]
	max       int
	lastSweep int64
	onRemove  func(V, FlowRemoval)
}

// NewFlowTable returns an empty table of at most max entries; onRemove,
// if not nil, is called for every entry that leaves it, e.g. to keep
// counts.
func NewFlowTable[V any](max int, onRemove func(V, FlowRemoval)) *FlowTable[V] {
	return &FlowTable[V]{m: make(map[FlowKey]flowEntry[V]), max: max, onRemove: onRemove}
}

// Lookup returns the value of a flow that has not expired at now and
// refreshes it: it was used at now and, if idle is not 0, expires after
// idle from now on. It allocates nothing.
func (t *FlowTable[V]) Lookup(k FlowKey, now int64, idle time.Duration) (V, bool) {
	e, ok := t.m[k]
	if !ok || now-e.last > e.idle {
		var zero V
		return zero, false
	}
	e.last = now
	if idle != 0 {
		e.idle = int64(idle)
	}
	t.m[k] = e
	return e.v, true
}

// Put records the value of a flow that expires after idle, replacing an
// older entry. A full table first drops what expired (at most every
// second: a sweep is O(n)), then evicts the stalest of a few entries.
func (t *FlowTable[V]) Put(k FlowKey, v V, now int64, idle time.Duration) {
	if old, ok := t.m[k]; ok {
		t.removed(old.v, FlowReplaced)
	} else if len(t.m) >= t.max {
		if now-t.lastSweep >= int64(fullSweepEvery) {
			t.sweep(now)
		}
		if len(t.m) >= t.max {
			t.evict()
		}
	}
	t.m[k] = flowEntry[V]{v: v, last: now, idle: int64(idle)}
}

// Sweep removes the expired entries, unless the last sweep is recent.
func (t *FlowTable[V]) Sweep(now int64) {
	if now-t.lastSweep >= int64(flowSweepEvery) {
		t.sweep(now)
	}
}

// sweep removes every expired entry.
func (t *FlowTable[V]) sweep(now int64) {
	t.lastSweep = now
	for k, e := range t.m {
		if now-e.last > e.idle {
			delete(t.m, k)
			t.removed(e.v, FlowExpired)
		}
	}
}

// evict removes the stalest of evictSample entries (map order is random
// enough to sample).
func (t *FlowTable[V]) evict() {
	var victim FlowKey
	oldest, n := int64(0), 0
	for k, e := range t.m {
		if n == 0 || e.last < oldest {
			victim, oldest = k, e.last
		}
		if n++; n == evictSample {
			break
		}
	}
	if n > 0 {
		e := t.m[victim]
		delete(t.m, victim)
		t.removed(e.v, FlowEvicted)
	}
}

// Clear removes every entry.
func (t *FlowTable[V]) Clear() {
	for k, e := range t.m {
		delete(t.m, k)
		t.removed(e.v, FlowCleared)
	}
}

// Len returns the number of entries, expired ones not swept yet included.
func (t *FlowTable[V]) Len() int { return len(t.m) }

func (t *FlowTable[V]) removed(v V, why FlowRemoval) {
	if t.onRemove != nil {
		t.onRemove(v, why)
	}
}
