package netstack

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/ztgate/ztgate/internal/monoclock"
)

// Output carries the packets a link sends out of the stack.
type Output interface {
	// WritePackets sends a batch of IP packets. Each element holds Headroom
	// scratch bytes (for example a virtio-net header) followed by one
	// packet; the output may grow elements within their capacity (to
	// coalesce packets). It is called from one goroutine at a time and the
	// slices are reused once it returns. An error drops the batch.
	WritePackets(pkts [][]byte) error
}

// LinkConfig configures a link. The zero value of every optional field is valid.
type LinkConfig struct {
	Name   string // for logs
	MTU    int    // largest IP packet in either direction; required
	Output Output // required
	// Headroom is reserved in front of every packet given to Output.
	Headroom int
	// BatchSize is the most packets given to Output at once (default 64).
	BatchSize int
	// WriteCap is the capacity of every buffer given to Output; larger than
	// Headroom+MTU lets the output coalesce packets in place (GRO).
	WriteCap int
	// Routes are the destinations this link leads to; replies to these
	// addresses leave through it. Default: everything (0.0.0.0/0 and ::/0).
	Routes []netip.Prefix
	// Admit, when set, is asked about the source of every inbound packet;
	// packets it refuses are dropped (deny by default for unknown sources).
	Admit func(src netip.Addr) bool
	// ICMPErrorFrom, when set, is asked about every inbound ICMP error
	// (unreachable, packet too big, time exceeded, parameter problem):
	// whether src, an admitted source, may report on a packet the stack
	// sent to dst, the quoted packet's destination — a router on the way to
	// that client, or the client itself. gVisor hands the error to the
	// endpoint the quoted packet names, so an error from anyone else could
	// end or shrink another client's flow. Nil: only dst itself.
	ICMPErrorFrom func(src, dst netip.Addr) bool
	// QueueLen bounds the outbound packets waiting for Output (default 4096);
	// beyond it packets are dropped (TCP retransmits).
	QueueLen int
	// ChecksumsTrusted: the link's transport authenticates every packet
	// (the tunnel's QUIC, whose AEAD a corrupted packet does not pass), so
	// the stack takes IP, TCP and UDP checksums as valid instead of
	// computing them again (gVisor still checks ICMPv4's, the UDP fast
	// path its own), and segments merged by GRO keep the checksums they
	// had. A sender that sends a wrong checksum only has its own bytes
	// taken as it sent them.
	ChecksumsTrusted bool
	// Async makes the link's writer goroutine write everything, for an
	// Output that may block (a QUIC datagram queue): the stack's goroutines
	// then never wait for it. Default: a packet sent while the link is idle
	// is written by the sending goroutine at once (no goroutine hop: the
	// lowest latency), while busy traffic goes to the writer goroutine in
	// batches (one call per batch; a TUN coalesces a flow's segments).
	Async bool
}

// Link is one packet link of a Stack: a gVisor NIC whose inbound packets
// come from Deliver and whose outbound packets go to an Output.
type Link struct {
	ns  *Stack
	id  tcpip.NICID
	cfg LinkConfig
	ep  *endpoint

	runWG sync.WaitGroup // a device reader started by AttachDevice
}

// NewLink attaches a link to the stack.
func (ns *Stack) NewLink(cfg LinkConfig) (*Link, error) {
	if cfg.Output == nil || cfg.MTU < 68 {
		return nil, errors.New("netstack: a link needs an Output and an MTU of at least 68")
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 64
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 4096
	}
	if cfg.ICMPErrorFrom == nil {
		cfg.ICMPErrorFrom = func(src, dst netip.Addr) bool { return src == dst }
	}
	if cfg.WriteCap < cfg.Headroom+cfg.MTU {
		cfg.WriteCap = cfg.Headroom + cfg.MTU
	}
	if len(cfg.Routes) == 0 {
		cfg.Routes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return nil, errors.New("netstack: stack closed")
	}
	l := &Link{ns: ns, id: ns.nextID, cfg: cfg}
	ns.nextID++
	l.ep = newEndpoint(l)
	if err := ns.s.CreateNICWithOptions(l.id, l.ep, stack.NICOptions{Name: cfg.Name}); err != nil {
		return nil, tcpipError("create NIC", err)
	}
	if err := l.configureLocked(); err != nil {
		ns.s.RemoveNIC(l.id)
		return nil, err
	}
	ns.links[l.id] = l
	ns.updateRoutesLocked()
	return l, nil
}

// configureLocked makes the NIC terminate every destination (promiscuous)
// and answer from any source (spoofing), and gives it the local addresses.
func (l *Link) configureLocked() error {
	s := l.ns.s
	if err := s.SetPromiscuousMode(l.id, true); err != nil {
		return tcpipError("promiscuous mode", err)
	}
	if err := s.SetSpoofing(l.id, true); err != nil {
		return tcpipError("spoofing", err)
	}
	for _, a := range l.ns.cfg.Local {
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(a),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: toAddr(a), PrefixLen: a.BitLen()},
		}
		if err := s.AddProtocolAddress(l.id, pa, stack.AddressProperties{}); err != nil {
			return tcpipError(fmt.Sprintf("add address %s", a), err)
		}
	}
	return nil
}

// updateRoutesLocked rebuilds gVisor's route table from every link's
// routes, most specific first (gVisor takes the first match).
func (ns *Stack) updateRoutesLocked() {
	var table []tcpip.Route
	for id, l := range ns.links {
		for _, p := range l.cfg.Routes {
			if !p.IsValid() {
				continue // the zero Prefix leads nowhere
			}
			sn := tcpip.AddressWithPrefix{Address: toAddr(p.Addr()), PrefixLen: p.Bits()}.Subnet()
			table = append(table, tcpip.Route{Destination: sn, NIC: id})
		}
	}
	slices.SortStableFunc(table, func(a, b tcpip.Route) int {
		return b.Destination.Prefix() - a.Destination.Prefix()
	})
	ns.s.SetRouteTable(table)
	routes := make([]nicRoute, 0, len(table))
	for _, r := range table {
		p := netip.PrefixFrom(fromAddr(r.Destination.ID()), r.Destination.Prefix())
		routes = append(routes, nicRoute{p, r.NIC, ns.links[r.NIC]})
	}
	ns.routes.Store(&routes)
}

// nicRoute is one route of the stack's table: a prefix and its link.
type nicRoute struct {
	prefix netip.Prefix
	nic    tcpip.NICID
	link   *Link
}

// Close detaches the link from the stack and stops its writer.
func (l *Link) Close() {
	l.ns.mu.Lock()
	if _, ok := l.ns.links[l.id]; !ok {
		l.ns.mu.Unlock()
		return
	}
	delete(l.ns.links, l.id)
	l.ns.updateRoutesLocked()
	l.ns.mu.Unlock()
	l.ns.s.RemoveNIC(l.id)
	l.ep.close()
	l.runWG.Wait()
}

// MTU returns the link's MTU.
func (l *Link) MTU() int { return int(l.ep.mtu.Load()) }

// SetMTU lowers or raises the link's MTU for connections created from now
// on (a tunnel link follows the datagram size of its sessions). It never
// exceeds the MTU the link was created with, which sized its buffers.
func (l *Link) SetMTU(mtu int) {
	l.ep.mtu.Store(uint32(min(max(mtu, 68), l.cfg.MTU)))
}

// Deliver hands one inbound IP packet to the stack. The packet is copied;
// the caller may reuse pkt once Deliver returns. Deliver may be called from
// several goroutines.
func (l *Link) Deliver(pkt []byte) {
	if pkb, proto, d := l.admit(pkt); pkb != nil {
		d.DeliverNetworkPacket(proto, pkb)
		pkb.DecRef()
	}
}

// admit checks an inbound packet, answers it when it is an echo request to
// the pool, and otherwise returns it as a packet buffer for the link's
// dispatcher (nil when dropped or answered).
func (l *Link) admit(pkt []byte) (*stack.PacketBuffer, tcpip.NetworkProtocolNumber, stack.NetworkDispatcher) {
	ns := l.ns
	h, ok := parseIP(pkt)
	if !ok {
		ns.drop(DropMalformed)
		return nil, 0, nil
	}
	// Bytes past the IP packet's length are no part of it: gVisor's IP
	// layer cuts them off, but GRO, which runs first, would take them for
	// TCP payload of a link whose checksums it does not check.
	pkt = pkt[:h.hdrLen+len(h.l4)]
	if l.cfg.Admit != nil && !l.cfg.Admit(h.src) {
		ns.drop(DropUnknownSource)
		return nil, 0, nil
	}
	local := ns.isLocal(h.dst)
	if !local && !ns.inPool(h.dst) {
		ns.drop(DropNotRouted)
		return nil, 0, nil
	}
	if !h.icmpAdmissible(l.cfg.ICMPErrorFrom) {
		ns.drop(DropICMPRefused)
		return nil, 0, nil
	}
	if !local && h.isEchoRequest() && h.sourceValid() {
		if !h.echoChecksumsValid(pkt) || !h.optionsParse(pkt) {
			ns.drop(DropMalformed)
			return nil, 0, nil
		}
		ns.handleEcho(l, h, pkt)
		return nil, 0, nil
	}
	d := l.ep.dispatcher.Load()
	if d == nil {
		ns.drop(DropLinkDown)
		return nil, 0, nil
	}
	if !local && ns.deliverUDP(&h, pkt) || local && ns.deliverLocalUDP(&h, pkt) {
		return nil, 0, nil
	}
	if h.proto == uint8(header.TCPProtocolNumber) {
		ns.synAcks.inbound(pkt)
		l.reuseTimeWait(&h)
	}
	pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	pkb.RXChecksumValidated = l.cfg.ChecksumsTrusted
	proto := ipv4.ProtocolNumber
	if h.v6 {
		proto = ipv6.ProtocolNumber
	}
	pkb.NetworkProtocolNumber = proto
	return pkb, proto, *d
}

// Batch delivers a batch of inbound packets to a link's stack with generic
// receive offload: consecutive TCP segments of one IPv4 flow are merged
// into one before gVisor's TCP sees them, so a bulk upload costs the stack
// one pass per merged segment instead of one per packet. Packets wait in
// the batch until Flush, which the reader calls once it has delivered what
// it read. A Batch belongs to one goroutine; a link may have several.
type Batch struct {
	l     *Link
	gro   gro.GRO
	fixer mergedFixer
}

// NewBatch returns a batch delivering to l.
func (l *Link) NewBatch() *Batch {
	b := &Batch{l: l, fixer: mergedFixer{trusted: l.cfg.ChecksumsTrusted}}
	b.gro.Init(true)
	b.gro.Dispatcher = &b.fixer
	return b
}

// Deliver is Link.Deliver, except that IPv4 TCP segments wait for Flush;
// everything else goes to the stack at once.
func (b *Batch) Deliver(pkt []byte) {
	pkb, proto, d := b.l.admit(pkt)
	if pkb == nil {
		return
	}
	if proto == ipv4.ProtocolNumber && pkt[9] == uint8(header.TCPProtocolNumber) {
		b.fixer.next = d
		b.gro.Enqueue(pkb)
	} else {
		d.DeliverNetworkPacket(proto, pkb)
	}
	pkb.DecRef()
}

// DeliverWhole is Link.Deliver in order with the batch: the packets that
// wait in it go first, then pkt, without GRO (a super-packet the device
// already coalesced, or a packet with nothing to merge with).
func (b *Batch) DeliverWhole(pkt []byte) {
	b.Flush()
	b.l.Deliver(pkt)
}

// Flush hands the stack every packet that waits in the batch. gVisor's
// GRO holds up to 8 packets in each of its 8 buckets of flows, and its
// Flush hands on only the first of each (it removes a packet from its
// bucket's list, then asks it for the next one): so it is called until a
// call hands on nothing. A packet left held would wait for a later packet
// of its bucket, or for its sender's retransmission timeout.
func (b *Batch) Flush() {
	if b.fixer.next == nil {
		return
	}
	for {
		n := b.fixer.delivered
		b.gro.Flush()
		if b.fixer.delivered == n {
			return
		}
	}
}

// mergedFixer sits between gVisor's GRO and the link's NIC. GRO validates
// the checksums of the segments it merges and updates the merged packet's
// IP total length, expecting a link with receive checksum offload that has
// gVisor skip checksums altogether. A link keeps gVisor checking them (it
// declares no offload) unless its checksums are trusted, so a merged
// packet gets its IPv4 header and TCP checksums computed again here before
// the stack checks them; on a trusted link nothing checks them.
type mergedFixer struct {
	next      stack.NetworkDispatcher
	trusted   bool   // the link's checksums are trusted: the stack checks none, nothing to fix
	delivered uint64 // packets handed on, for Flush
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (f *mergedFixer) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	f.delivered++
	// A packet GRO validated whose header checksum no longer holds is one
	// GRO grew; any other packet goes on as it came.
	if pkt.RXChecksumValidated && !f.trusted {
		if hdr, ok := pkt.Data().PullUp(header.IPv4MinimumSize); ok && !header.IPv4(hdr).IsChecksumValid() {
			fixMerged(pkt)
		}
	}
	f.next.DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (f *mergedFixer) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	f.next.DeliverLinkPacket(proto, pkt)
}

// fixMerged computes the IPv4 header and TCP checksums of a merged segment
// (a 20-byte IPv4 header, as GRO merges no packets with options). The
// headers are in the packet's first chunk, where GRO edited them too.
func fixMerged(pkt *stack.PacketBuffer) {
	hdr, ok := pkt.Data().PullUp(header.IPv4MinimumSize + header.TCPMinimumSize)
	if !ok {
		return
	}
	ip := header.IPv4(hdr)
	setIPv4Checksum(ip)
	tcp := header.TCP(hdr[header.IPv4MinimumSize:])
	tcp.SetChecksum(0)
	n := pkt.Data().Size() - header.IPv4MinimumSize
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(n))
	tcp.SetChecksum(^checksum.Combine(sum, pkt.Data().ChecksumAtOffset(header.IPv4MinimumSize)))
}

// writeRaw sends a packet built outside gVisor (an echo reply, an ICMP
// error) through the link's output, in order with the stack's own packets.
func (l *Link) writeRaw(pkt []byte) {
	l.writeView(buffer.NewViewWithData(pkt), nil)
}

// writeView is writeRaw for a packet built in a view, which it takes;
// onRelease, when set, runs once the link is done with the packet (sent,
// dropped or refused). It reports false when the link is closed (the
// packet is dropped).
func (l *Link) writeView(v *buffer.View, onRelease func()) bool {
	pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v), OnRelease: onRelease})
	one := [1]*stack.PacketBuffer{pkb}
	_, err := l.ep.write(one[:])
	pkb.DecRef()
	return err == nil
}

// endpoint is the gVisor side of a Link: a LinkEndpoint without link-layer
// headers. Its outbound path is a combining writer: the goroutine that
// finds no write in progress becomes the writer and hands the Output
// everything queued, its own packets and those queued by others meanwhile,
// in batches. An idle link costs no goroutine hop (the sender writes its
// packet itself: lowest latency), a busy one batches (one call per batch,
// segments of a flow coalesced by the TUN's GRO).
type endpoint struct {
	l          *Link
	mtu        atomic.Uint32
	dispatcher atomic.Pointer[stack.NetworkDispatcher]

	mu        sync.Mutex
	queue     []*stack.PacketBuffer
	writing   bool  // a goroutine is the writer
	lastWrite int64 // nanotime the last write ended, for telling idle from busy
	closed    bool

	// The writer goroutine and its wake-up.
	wake chan struct{}
	done chan struct{}
	wg   sync.WaitGroup

	// owned by the writer of the moment
	spare []*stack.PacketBuffer
	bases [][]byte
	bufs  [][]byte

	gso   GSOOutput // the Output, when it takes TCP super-packets
	super []byte    // the writer's buffer of a super-packet, made at the first
}

var _ stack.LinkEndpoint = (*endpoint)(nil)

func newEndpoint(l *Link) *endpoint {
	e := &endpoint{
		l:     l,
		bases: make([][]byte, l.cfg.BatchSize),
		bufs:  make([][]byte, 0, l.cfg.BatchSize),
	}
	e.mtu.Store(uint32(l.cfg.MTU))
	if o, ok := l.cfg.Output.(GSOOutput); ok && o.GSO() {
		e.gso = o
	}
	e.wake, e.done = make(chan struct{}, 1), make(chan struct{})
	e.wg.Add(1)
	go e.writeLoop()
	return e
}

// idleGap is how long a link must have written nothing for the next packet
// to be written by its sender at once rather than by the writer goroutine.
const idleGap = 200 * time.Microsecond

// writeLoop is the link's writer goroutine.
func (e *endpoint) writeLoop() {
	defer e.wg.Done()
	for {
		select {
		case <-e.done:
			return
		case <-e.wake:
		}
		e.mu.Lock()
		if e.writing { // a sender writes inline; it drains the queue too
			e.mu.Unlock()
			continue
		}
		e.writing = true
		e.mu.Unlock()
		e.drain()
	}
}

// close drops what is queued; later writes fail. A write in progress
// finishes its batch.
func (e *endpoint) close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	for _, p := range e.queue {
		p.DecRef()
	}
	e.queue = nil
	e.mu.Unlock()
	close(e.done)
	e.wg.Wait()
}

// WritePackets queues packets; on an idle link the caller writes them out
// itself, otherwise the writer goroutine does. Like gVisor's channel
// endpoint it takes a reference on every packet it keeps; the caller keeps
// its own.
func (e *endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	return e.write(pkts.AsSlice())
}

// write is WritePackets for a slice of packets.
func (e *endpoint) write(pkts []*stack.PacketBuffer) (int, tcpip.Error) {
	n := 0
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return 0, &tcpip.ErrClosedForSend{}
	}
	for _, p := range pkts {
		if len(e.queue) >= e.l.cfg.QueueLen {
			e.l.ns.drop(DropQueueFull)
			continue
		}
		p.IncRef()
		e.queue = append(e.queue, p)
		n++
	}
	if e.writing {
		e.mu.Unlock()
		return n, nil
	}
	if e.l.cfg.Async || monoclock.Now()-e.lastWrite < int64(idleGap) {
		e.mu.Unlock()
		select {
		case e.wake <- struct{}{}:
		default:
		}
		return n, nil
	}
	e.writing = true
	e.mu.Unlock()
	e.drain()
	return n, nil
}

// drain writes batches until the queue is empty, then gives up the writer
// role. The caller set e.writing.
func (e *endpoint) drain() {
	for {
		e.mu.Lock()
		batch := e.queue
		if len(batch) == 0 || e.closed {
			e.writing = false
			e.lastWrite = monoclock.Now()
			e.mu.Unlock()
			return
		}
		e.queue = e.spare[:0]
		e.mu.Unlock()
		for rest := batch; len(rest) > 0; rest = rest[min(len(rest), e.l.cfg.BatchSize):] {
			e.flush(rest[:min(len(rest), e.l.cfg.BatchSize)])
		}
		for i := range batch {
			batch[i].DecRef()
			batch[i] = nil
		}
		// The queue and the spare swap roles: with the capacity of both
		// kept, a link in its steady state appends without allocating.
		e.spare = batch[:0]
	}
}

// flush serialises packets into the writer's buffers and hands them to the
// output in one call; a TCP super-packet goes out on its own (WriteGSO),
// after the packets before it.
func (e *endpoint) flush(pkts []*stack.PacketBuffer) {
	hr := e.l.cfg.Headroom
	e.bufs = e.bufs[:0]
	for i, p := range pkts {
		size := p.Size()
		var g GSO
		var super, partial bool
		if e.gso != nil {
			g, super, partial = gsoOf(p)
		}
		if super {
			// The batch before it goes first; the super-packet is
			// written from a buffer of its own, so that the batch's
			// buffers need only hold a packet each.
			e.writeBatch()
			if e.super == nil {
				e.super = make([]byte, hr+gsoMaxSize)
			}
			if hr+size > len(e.super) {
				e.l.ns.drop(DropTooBig)
				continue
			}
			b := e.super[:hr+size]
			copyPacket(b[hr:], p)
			if err := e.gso.WriteGSO(b, g); err != nil {
				e.l.ns.drop(DropWriteError)
			}
			continue
		}
		if e.bases[i] == nil {
			e.bases[i] = make([]byte, e.l.cfg.WriteCap)
		}
		if hr+size > len(e.bases[i]) {
			e.l.ns.drop(DropTooBig)
			continue
		}
		b := e.bases[i][:hr+size]
		copyPacket(b[hr:], p)
		if partial {
			completePartial(b[hr:], g.L3Len, header.TCPChecksumOffset)
		}
		b = b[:hr+e.l.ns.synAcks.outbound(b[hr:])] // may turn a bare ACK into a SYN-ACK
		e.bufs = append(e.bufs, b)
	}
	e.writeBatch()
}

// writeBatch hands the output the packets flush has gathered.
func (e *endpoint) writeBatch() {
	if len(e.bufs) == 0 {
		return
	}
	if err := e.l.cfg.Output.WritePackets(e.bufs); err != nil {
		e.l.ns.drop(DropWriteError)
	}
	e.bufs = e.bufs[:0]
}

// copyPacket copies the packet p into b, which holds p.Size() bytes,
// without allocating (unlike PacketBuffer.AsSlices).
func copyPacket(b []byte, p *stack.PacketBuffer) {
	views, skip := p.AsViewList()
	for v := views.Front(); v != nil && len(b) > 0; v = v.Next() {
		s := v.AsSlice()
		if skip >= len(s) {
			skip -= len(s)
			continue
		}
		b = b[copy(b, s[skip:]):]
		skip = 0
	}
}

// MTU implements stack.LinkEndpoint.
func (e *endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (e *endpoint) SetMTU(mtu uint32) { e.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint: no link-layer header.
func (e *endpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint.
func (e *endpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.
func (e *endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint. gVisor computes and verifies
// every checksum (packets from a TUN may come from hostile LAN hosts),
// except the inbound ones of a link whose checksums are trusted: its NIC
// then marks every inbound packet checksum-validated, as behind a device
// that verified them (admit marks them too, for GRO, which runs before the
// NIC).
func (e *endpoint) Capabilities() stack.LinkEndpointCapabilities {
	if e.l.cfg.ChecksumsTrusted {
		return stack.CapabilityRXChecksumOffload
	}
	return stack.CapabilityNone
}

var _ stack.GSOEndpoint = (*endpoint)(nil)

// SupportedGSO implements stack.GSOEndpoint: gVisor's TCP sends
// super-packets through a link whose output takes them (gso.go).
func (e *endpoint) SupportedGSO() stack.SupportedGSO {
	if e.gso != nil {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

// GSOMaxSize implements stack.GSOEndpoint.
func (e *endpoint) GSOMaxSize() uint32 {
	if e.gso != nil {
		return gsoMaxSize
	}
	return 0
}

// Attach implements stack.LinkEndpoint.
func (e *endpoint) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		e.dispatcher.Store(nil)
		return
	}
	e.dispatcher.Store(&d)
}

// IsAttached implements stack.LinkEndpoint.
func (e *endpoint) IsAttached() bool { return e.dispatcher.Load() != nil }

// Wait implements stack.LinkEndpoint.
func (e *endpoint) Wait() {}

// ARPHardwareType implements stack.LinkEndpoint.
func (e *endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.
func (e *endpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.
func (e *endpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.LinkEndpoint; the Link owns the writer's lifetime.
func (e *endpoint) Close() {}

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *endpoint) SetOnCloseAction(func()) {}
