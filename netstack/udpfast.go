package netstack

import (
	"math"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
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
// and still reaches the flow through its gVisor endpoint. Datagrams to a
// ListenUDP socket on one of the stack's own addresses (the DNS server)
// take the same path to it, with their sources (udplisten.go).
//
// The link's Admit runs first, so a link can only reach flows whose client
// address it may send from, exactly as in gVisor, whose flow endpoints take
// a matching datagram from any link.

// udpFlowKey is a flow's client address and port and VIP and port.
type udpFlowKey struct{ src, dst netip.AddrPort }

// udpFlows are the stack's accepted UDP flows.
type udpFlows = fastTable[udpFlowKey, *UDPConn]

// fastTable maps what the links' fast path looks up (a flow's addresses,
// a listener's) to its socket.
type fastTable[K comparable, V comparable] struct {
	mu sync.RWMutex
	m  map[K]V
}

func (f *fastTable[K, V]) add(k K, v V) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = make(map[K]V)
	}
	f.m[k] = v
}

// remove deletes k if it still maps to v.
func (f *fastTable[K, V]) remove(k K, v V) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m[k] == v {
		delete(f.m, k)
	}
}

func (f *fastTable[K, V]) lookup(k K) V {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.m[k]
}

// deliverUDP queues the datagram in pkt on its flow and reports whether it
// did; false leaves the packet to gVisor.
func (ns *Stack) deliverUDP(h *ipHeader, pkt []byte) bool {
	if !fastUDP(h) {
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
	payload, ok := udpPayload(h, pkt)
	if !ok {
		return false
	}
	return ns.queueUDP(&c.fast, c.wq, payload, netip.AddrPort{})
}

// deliverLocalUDP queues the datagram in pkt, to one of the stack's own
// addresses, on the listener of its address and port (ListenUDP: the DNS
// server at the gateway's address) and reports whether it did; false
// leaves the packet to gVisor.
func (ns *Stack) deliverLocalUDP(h *ipHeader, pkt []byte) bool {
	if !fastUDP(h) || !h.sourceValid() {
		return false
	}
	u := header.UDP(h.l4)
	l := ns.listeners.lookup(netip.AddrPortFrom(h.dst, u.DestinationPort()))
	if l == nil {
		return false
	}
	payload, ok := udpPayload(h, pkt)
	if !ok {
		return false
	}
	return ns.queueUDP(&l.fast, l.wq, payload, netip.AddrPortFrom(h.src, u.SourcePort()))
}

// fastUDP reports whether the link may take the UDP datagram h itself:
// not a fragment, no IPv4 options, a whole UDP header.
func fastUDP(h *ipHeader) bool {
	return h.proto == protoUDP && !h.fragment && len(h.l4) >= header.UDPMinimumSize && (h.v6 || h.hdrLen == header.IPv4MinimumSize)
}

// udpPayload checks the datagram in pkt the way gVisor would (IPv4 header
// checksum, UDP length and checksum) and returns its payload; false when a
// check fails (gVisor then counts and drops it).
func udpPayload(h *ipHeader, pkt []byte) ([]byte, bool) {
	if !h.v6 && !header.IPv4(pkt).IsChecksumValid() {
		return nil, false
	}
	u := header.UDP(h.l4)
	n := int(u.Length())
	if n < header.UDPMinimumSize || n > len(h.l4) {
		return nil, false
	}
	u = u[:n]
	payload := u[header.UDPMinimumSize:]
	if u.Checksum() != 0 || h.v6 { // IPv6 has no datagram without a checksum
		if !u.IsChecksumValid(toAddr(h.src), toAddr(h.dst), checksum.Checksum(payload, 0)) {
			return nil, false
		}
	}
	return payload, true
}

// queueUDP queues payload (from src, for a listener) on q and wakes its
// reader; false when q is closing (gVisor then decides, as for a new
// flow). A full queue drops the datagram and counts it.
func (ns *Stack) queueUDP(q *udpQueue, wq *waiter.Queue, payload []byte, src netip.AddrPort) bool {
	switch q.push(payload, src) {
	case queueClosed:
		return false
	case queueFull:
		ns.drop(DropUDPQueueFull)
		return true
	}
	wq.Notify(waiter.ReadableEvents)
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

// udpQueue is a flow's (or a listener's) fast-path datagrams, oldest
// first.
type udpQueue struct {
	mu     sync.Mutex
	q      []queuedDatagram
	head   int
	bytes  int
	closed bool
}

// queuedDatagram is a datagram's payload and, for a listener, its source.
type queuedDatagram struct {
	bp  *[]byte
	src netip.AddrPort
}

// What push did with a datagram.
const (
	queued = iota
	queueFull
	queueClosed
)

// push copies p, a datagram from src (a listener's; a flow's is the zero
// AddrPort), onto the queue.
func (q *udpQueue) push(p []byte, src netip.AddrPort) int {
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
	q.q = append(q.q, queuedDatagram{bp, src})
	q.bytes += len(p)
	return queued
}

// pop copies the oldest datagram into b (truncating it, as a UDP read
// does) and returns its source (push's) and whether there was one.
func (q *udpQueue) pop(b []byte) (int, netip.AddrPort, bool) {
	q.mu.Lock()
	if q.head == len(q.q) {
		q.mu.Unlock()
		return 0, netip.AddrPort{}, false
	}
	d := q.q[q.head]
	bp := d.bp
	q.q[q.head] = queuedDatagram{}
	q.head++
	if q.head == len(q.q) {
		q.q, q.head = q.q[:0], 0
	}
	q.bytes -= len(*bp)
	q.mu.Unlock()
	n := copy(b, *bp)
	release(bp)
	return n, d.src, true
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
	for _, d := range q.q[q.head:] {
		release(d.bp)
	}
	q.q, q.head, q.bytes = nil, 0, 0
}

func release(bp *[]byte) {
	if cap(*bp) == smallDatagram {
		*bp = (*bp)[:smallDatagram]
		datagramPool.Put(bp)
	}
}

// The way back. A datagram a flow's UDPConn writes to its client is built
// here as one IPv4 packet — the VIP's address and port to the client's,
// TTL 64, DF set and the identifier 0 (an atomic datagram, RFC 6864), as
// gVisor's UDP output builds it — and queued on the link the flow came in
// on, the one gVisor's endpoint is bound and connected through, in order
// with the stack's own packets. gVisor's UDP output (its endpoint's lock,
// a route taken and released per datagram, the headers pushed into a
// packet buffer, its statistics) was 44 % of the gateway's CPU on a
// download of small datagrams. What does not fit one packet on that link
// (gVisor fragments it), an IPv6 flow, a closed flow, a flow with a write
// deadline (gVisor checks it), a flow whose link is closed and one with an
// error pending (gVisor's write fails) go through gVisor as before.
//
// gVisor bounds what a flow has waiting on its link by the endpoint's send
// buffer: a write beyond it blocks (the gateway then stops reading the
// backend, whose socket drops), so one busy flow cannot fill the link's
// queue, which every flow of the link shares. The fast path counts its
// datagrams the same way until the link is done with them, and once they
// hold the send buffer the next datagram goes through gVisor, whose own
// send buffer then blocks the writer: at most twice gVisor's bound waits.

// writeFast sends b to the flow's client and reports whether it did.
func (c *UDPConn) writeFast(b []byte) bool {
	src, dst := c.key.dst, c.key.src // from the VIP to the client
	l := c.link
	if l == nil || !src.Addr().Is4() || !dst.Addr().Is4() || c.closed() || c.deadlined.Load() {
		return false
	}
	n := header.IPv4MinimumSize + header.UDPMinimumSize + len(b)
	// A link's MTU may exceed what an IPv4 header's length can say.
	if n > min(l.MTU(), math.MaxUint16) || c.queued.Load() >= c.ep.SocketOptions().GetSendBufferSize() {
		return false
	}
	if c.ep.Readiness(waiter.EventErr) != 0 {
		// An error waits on the endpoint (the client's ICMP port
		// unreachable): gVisor's write returns it instead of sending.
		return false
	}
	v := buffer.NewViewSize(n)
	p := v.AsSlice()
	ip := header.IPv4(p)
	sa, da := toAddr(src.Addr()), toAddr(dst.Addr())
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(n), Flags: header.IPv4FlagDontFragment, TTL: defaultTTL,
		Protocol: uint8(header.UDPProtocolNumber), SrcAddr: sa, DstAddr: da})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(p[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u[header.UDPMinimumSize:], b)
	sum := ^checksum.Checksum(u, header.PseudoHeaderChecksum(header.UDPProtocolNumber, sa, da, uint16(len(u))))
	if sum == 0 {
		sum = 0xffff // 0 says no checksum
	}
	u.SetChecksum(sum)
	charge := int64(udpSendCharge + len(b))
	c.queued.Add(charge)
	return l.writeView(v, func() { c.queued.Add(-charge) }) // false: the link closed, gVisor's write fails
}

// udpSendCharge is what gVisor counts against a UDP endpoint's send buffer
// for a datagram besides its payload: the room it reserves for the UDP
// header and the largest IPv4 header.
const udpSendCharge = header.UDPMinimumSize + header.IPv4MaximumHeaderSize
