package netstack

import (
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/waiter"
)

// The UDP fast path. gVisor takes the first datagram of a UDP flow, and the
// Handler accepts the flow from it (UDPRequest.Accept); every later datagram
// of the flow — same client address and port, same VIP and port — is checked
// by the link the way gVisor would check it (IPv4 header checksum, UDP
// length and checksum) and queued on the flow's UDPConn directly. A UDP
// flow has no transport state for gVisor to keep, and its IPv4 and UDP
// input cost about half of the gateway's time per datagram
// (docs/performance.md). What the link does not take — fragments, IPv4
// options, IPv6 extension headers, anything that fails a check — goes to
// gVisor as before, which reassembles, counts and drops as it always did,
// and still reaches the flow through its gVisor endpoint.
//
// The link's Admit runs first, so a link can only reach flows whose client
// address it may send from, exactly as in gVisor, whose flow endpoints take
// a matching datagram from any link.

// udpFlowKey is a flow's client address and port and VIP and port.
type udpFlowKey struct{ src, dst netip.AddrPort }

// udpFlows are the stack's accepted UDP flows.
type udpFlows struct {
	mu sync.RWMutex
	m  map[udpFlowKey]*UDPConn
}

func (f *udpFlows) add(k udpFlowKey, c *UDPConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = make(map[udpFlowKey]*UDPConn)
	}
	f.m[k] = c
}

func (f *udpFlows) remove(k udpFlowKey, c *UDPConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m[k] == c {
		delete(f.m, k)
	}
}

func (f *udpFlows) lookup(k udpFlowKey) *UDPConn {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.m[k]
}

// deliverUDP queues the datagram in pkt on its flow and reports whether it
// did; false leaves the packet to gVisor.
func (ns *Stack) deliverUDP(h *ipHeader, pkt []byte) bool {
	if h.proto != protoUDP || h.fragment || len(h.l4) < header.UDPMinimumSize || !h.v6 && h.hdrLen != header.IPv4MinimumSize {
		return false
	}
	u := header.UDP(h.l4)
	c := ns.udp.lookup(udpFlowKey{
		src: netip.AddrPortFrom(h.src, u.SourcePort()),
		dst: netip.AddrPortFrom(h.dst, u.DestinationPort()),
	})
	if c == nil { // a new flow: gVisor checks it
		return false
	}
	if !h.v6 && !header.IPv4(pkt).IsChecksumValid() {
		return false
	}
	n := int(u.Length())
	if n < header.UDPMinimumSize || n > len(h.l4) {
		return false
	}
	u = u[:n]
	payload := u[header.UDPMinimumSize:]
	if u.Checksum() != 0 || h.v6 { // IPv6 has no datagram without a checksum
		if !u.IsChecksumValid(toAddr(h.src), toAddr(h.dst), checksum.Checksum(payload, 0)) {
			return false
		}
	}
	switch c.fast.push(payload) {
	case queueClosed: // the flow is ending: gVisor decides, as for a new flow
		return false
	case queueFull:
		ns.drop(DropUDPQueueFull)
		return true
	}
	c.wq.Notify(waiter.ReadableEvents)
	return true
}

const protoUDP = 17

// Bounds of a flow's fast-path queue: like gVisor's receive buffer of a UDP
// endpoint, payload bytes, and a count so that tiny datagrams cannot queue
// without end. A datagram beyond either is dropped and counted.
const (
	udpQueueBytes = 256 << 10
	udpQueueLen   = 2048
)

// smallDatagram is the size of pooled datagram buffers; a larger payload
// (a jumbo MTU) gets a buffer of its own.
const smallDatagram = 2048

var datagramPool = sync.Pool{New: func() any { b := make([]byte, smallDatagram); return &b }}

// udpQueue is a flow's fast-path datagrams, oldest first.
type udpQueue struct {
	mu     sync.Mutex
	q      []*[]byte
	head   int
	bytes  int
	closed bool
}

// What push did with a datagram.
const (
	queued = iota
	queueFull
	queueClosed
)

// push copies p onto the queue.
func (q *udpQueue) push(p []byte) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return queueClosed
	}
	if len(q.q)-q.head >= udpQueueLen || q.bytes+len(p) > udpQueueBytes {
		return queueFull
	}
	var bp *[]byte
	if len(p) <= smallDatagram {
		bp = datagramPool.Get().(*[]byte)
		*bp = (*bp)[:len(p)]
	} else {
		b := make([]byte, len(p))
		bp = &b
	}
	copy(*bp, p)
	if q.head > 0 && len(q.q) == cap(q.q) { // reuse the room read datagrams left
		n := copy(q.q, q.q[q.head:])
		clear(q.q[n:])
		q.q, q.head = q.q[:n], 0
	}
	q.q = append(q.q, bp)
	q.bytes += len(p)
	return queued
}

// pop copies the oldest datagram into b (truncating it, as a UDP read
// does) and reports whether there was one.
func (q *udpQueue) pop(b []byte) (int, bool) {
	q.mu.Lock()
	if q.head == len(q.q) {
		q.mu.Unlock()
		return 0, false
	}
	bp := q.q[q.head]
	q.q[q.head] = nil
	q.head++
	if q.head == len(q.q) {
		q.q, q.head = q.q[:0], 0
	}
	q.bytes -= len(*bp)
	q.mu.Unlock()
	n := copy(b, *bp)
	release(bp)
	return n, true
}

// ready reports whether a datagram is queued.
func (q *udpQueue) ready() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.head < len(q.q)
}

// close drops what is queued and refuses what comes.
func (q *udpQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for _, bp := range q.q[q.head:] {
		release(bp)
	}
	q.q, q.head, q.bytes = nil, 0, 0
}

func release(bp *[]byte) {
	if cap(*bp) == smallDatagram {
		*bp = (*bp)[:smallDatagram]
		datagramPool.Put(bp)
	}
}
