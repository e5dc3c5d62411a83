package netstack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// groRecorder is a dispatcher put behind a link's GRO: it keeps a copy of
// every packet the stack would get.
type groRecorder struct{ pkts [][]byte }

func (r *groRecorder) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	v := pkt.ToView()
	r.pkts = append(r.pkts, bytes.Clone(v.AsSlice()))
	v.Release()
}

func (r *groRecorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// recordBehindGRO makes rec the dispatcher of l's inbound packets (what
// GRO hands on) until the test ends.
func recordBehindGRO(t *testing.T, l *Link, rec *groRecorder) {
	orig := l.ep.dispatcher.Load()
	var d stack.NetworkDispatcher = rec
	l.ep.dispatcher.Store(&d)
	t.Cleanup(func() { l.ep.dispatcher.Store(orig) })
}

// TestBatchFlushDeliversEveryFlow: a Batch's Flush hands the stack every
// segment that waits in it. gVisor's GRO keeps the segments it holds in 8
// buckets by flow, and its Flush handed on only the first of each bucket
// (it removes a packet, then asks it for the next): with 16 flows, at least
// one bucket holds two, and the second stayed held after the run it came
// in, until a later packet of its bucket, or the sender's retransmission
// timeout, took it out.
func TestBatchFlushDeliversEveryFlow(t *testing.T) {
	_, l := newTestLink(t, Config{Handler: echoEnder{end: func(r *EchoRequest) { r.Drop() }}}, &capture{})
	rec := &groRecorder{}
	recordBehindGRO(t, l, rec)
	b := l.NewBatch()
	const flows = 16
	for i := range flows {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(1 + i)}), 40000)
		s := groSeg{src: src, dst: netip.MustParseAddrPort("10.100.0.7:80"), seq: 1000, ack: 1, wnd: 512, flags: 0x10, ttl: 64, data: make([]byte, 1000)}
		s.build()
		b.Deliver(s.pkt)
	}
	b.Flush()
	if len(rec.pkts) != flows {
		t.Fatalf("after Flush the stack got %d of the %d flows' segments", len(rec.pkts), flows)
	}
}

// groSeg is one TCP segment the test sends: its flow and fields.
type groSeg struct {
	flow       int
	src, dst   netip.AddrPort
	seq, ack   uint32
	wnd        uint16
	flags      uint8
	tos, ttl   uint8
	id         uint16
	opts, data []byte
	pkt        []byte
}

func (s *groSeg) build() {
	thl := 20 + len(s.opts)
	b := make([]byte, 20+thl+len(s.data))
	b[0], b[1] = 0x45, s.tos
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], s.id)
	b[6] = 0x40
	b[8], b[9] = s.ttl, 6
	sa, da := s.src.Addr().As4(), s.dst.Addr().As4()
	copy(b[12:], sa[:])
	copy(b[16:], da[:])
	binary.BigEndian.PutUint16(b[10:], ^groSum(b[:20], 0))
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:], s.src.Port())
	binary.BigEndian.PutUint16(t[2:], s.dst.Port())
	binary.BigEndian.PutUint32(t[4:], s.seq)
	binary.BigEndian.PutUint32(t[8:], s.ack)
	t[12] = byte(thl/4) << 4
	t[13] = s.flags
	binary.BigEndian.PutUint16(t[14:], s.wnd)
	copy(t[20:], s.opts)
	copy(t[thl:], s.data)
	binary.BigEndian.PutUint16(t[16:], ^groSum(t, groPseudo(sa, da, len(t))))
	s.pkt = b
}

// groSum is the ones'-complement sum of b added to initial (RFC 1071).
func groSum(b []byte, initial uint16) uint16 {
	acc := uint64(initial)
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint64(b[i])<<8 | uint64(b[i+1])
	}
	if len(b)%2 == 1 {
		acc += uint64(b[len(b)-1]) << 8
	}
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

func groPseudo(src, dst [4]byte, n int) uint16 {
	var p [12]byte
	copy(p[0:], src[:])
	copy(p[4:], dst[:])
	p[9] = 6
	binary.BigEndian.PutUint16(p[10:], uint16(n))
	return groSum(p[:], 0)
}
