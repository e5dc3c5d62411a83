package tunnel

import (
	"encoding/binary"
	"time"
)

// FragmentTimeout is how long Fragments remembers the flow of a datagram
// after its first fragment: what Linux and gVisor wait for the rest of a
// datagram before they drop what they have of it.
const FragmentTimeout = 30 * time.Second

// fragKey names the fragments of one IPv4 datagram (RFC 791: source,
// destination, protocol and identification).
type fragKey struct {
	src, dst [4]byte
	id       uint16
	proto    uint8
}

// fragEntry is the flow of a datagram whose other fragments are awaited.
type fragEntry struct {
	flow    FlowKey
	expires int64
}

// Fragments lets every fragment of an IPv4 datagram take the path of its
// flow. Only the first fragment holds the transport header that names
// the flow; the later ones, keyed only by the IP header, would otherwise
// take the service's current path, which a flow started before a direct
// path came up (or on another gateway) does not take: the datagram would
// then reach the gateway in pieces on two links and never be reassembled.
// Fragments remembers, from each first fragment, the flow of its datagram
// for the later ones, until the last one or FragmentTimeout. At most max
// datagrams are remembered; a new one beyond that takes the place of an
// arbitrary other (whose later fragments then take the current path, as
// before). The map is made with the first fragment: a session that never
// sees one holds none. Not safe for concurrent use.
type Fragments struct {
	m   map[fragKey]fragEntry
	max int
}

// NewFragments returns a table of at most max datagrams.
func NewFragments(max int) *Fragments { return &Fragments{max: max} }

// Flow returns the flow of an IPv4 packet: ParseFlow's for a packet that
// is not a fragment; for the first fragment of a datagram the flow its
// transport header names, remembered for the datagram's later fragments;
// for a later fragment that remembered flow (the last fragment forgets
// it). A later fragment is neither a connection attempt nor a close, nor
// an ICMP error. ok is false where no flow is known: IPv6, a truncated
// header, a later fragment whose first was not seen or came
// FragmentTimeout ago.
func (t *Fragments) Flow(p []byte, now int64) (Flow, bool) {
	if f, ok := ParseFlow(p); ok || !ipv4HeaderOK(p) {
		return f, ok
	}
	frag := binary.BigEndian.Uint16(p[6:8])
	more, offset := frag&0x2000 != 0, frag&0x1fff
	if !more && offset == 0 { // whole, and its transport header truncated
		return Flow{}, false
	}
	k := fragKey{src: [4]byte(p[12:16]), dst: [4]byte(p[16:20]), id: binary.BigEndian.Uint16(p[4:6]), proto: p[9]}
	if offset == 0 {
		f, ok := parseTransport(p)
		if ok {
			t.remember(k, f.Key, now)
		}
		return f, ok
	}
	e, ok := t.m[k]
	if !ok || now > e.expires {
		if ok {
			delete(t.m, k)
		}
		return Flow{}, false
	}
	if !more {
		delete(t.m, k)
	}
	return Flow{Key: e.flow}, true
}

// remember records the flow of a datagram whose first fragment is k.
func (t *Fragments) remember(k fragKey, flow FlowKey, now int64) {
	if t.m == nil {
		t.m = make(map[fragKey]fragEntry)
	}
	if _, ok := t.m[k]; !ok && len(t.m) >= t.max {
		for old, e := range t.m { // expired ones first
			if now > e.expires {
				delete(t.m, old)
			}
		}
		for old := range t.m { // else any one
			if len(t.m) < t.max {
				break
			}
			delete(t.m, old)
		}
	}
	t.m[k] = fragEntry{flow: flow, expires: now + int64(FragmentTimeout)}
}

// Len returns the number of datagrams remembered, expired ones included.
func (t *Fragments) Len() int { return len(t.m) }
