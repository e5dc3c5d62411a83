package netstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoCapture is a GSOOutput that records, in order, the batches and the
// super-packets it is given.
type gsoCapture struct {
	mu     sync.Mutex
	on     bool
	events []string
	pkts   [][]byte // every packet, without headroom
	gsos   []GSO
}

func (c *gsoCapture) GSO() bool { return c.on }

func (c *gsoCapture) WritePackets(pkts [][]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, fmt.Sprintf("batch %d", len(pkts)))
	for _, p := range pkts {
		c.pkts = append(c.pkts, slices.Clone(p[tunHeadroom:]))
	}
	return nil
}

func (c *gsoCapture) WriteGSO(b []byte, g GSO) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, "gso")
	c.pkts = append(c.pkts, slices.Clone(b[tunHeadroom:]))
	c.gsos = append(c.gsos, g)
	return nil
}

// tcpPacketBuffer builds an IPv4 TCP packet of payload bytes as gVisor's
// TCP does on a link with host GSO: the checksum field holds the
// pseudo-header's sum.
func tcpPacketBuffer(payload int, mss uint16) *stack.PacketBuffer {
	data := bytes.Repeat([]byte{0xab}, payload)
	p := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: 64, Payload: buffer.MakeWithData(data)})
	src, dst := toAddr(udpVIP4.Addr()), toAddr(udpClient4.Addr())
	tcp := header.TCP(p.TransportHeader().Push(header.TCPMinimumSize))
	tcp.Encode(&header.TCPFields{SrcPort: 80, DstPort: 40000, SeqNum: 1, AckNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck, WindowSize: 1000})
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(header.TCPMinimumSize+payload)))
	ip := header.IPv4(p.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(header.IPv4MinimumSize + header.TCPMinimumSize + payload), TTL: 64,
		Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	p.NetworkProtocolNumber = header.IPv4ProtocolNumber
	p.TransportProtocolNumber = header.TCPProtocolNumber
	p.GSOOptions = stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: header.TCPChecksumOffset, MSS: mss, L3HdrLen: header.IPv4MinimumSize, MaxSize: gsoMaxSize}
	return p
}

// tcpChecksumValid checks the TCP checksum of an IPv4 or IPv6 packet.
func tcpChecksumValid(pkt []byte) bool {
	h, ok := parseIP(pkt)
	if !ok {
		return false
	}
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpip.AddrFromSlice(h.src.AsSlice()),
		tcpip.AddrFromSlice(h.dst.AsSlice()), uint16(len(h.l4)))
	return checksum.Checksum(h.l4, xsum) == 0xffff
}

// TestGSOFlush: a link whose output takes super-packets hands them to
// WriteGSO with their layout, in order with the batched packets around
// them, and completes the partial checksum of the packets that fit one
// segment; a link whose output cannot take them tells gVisor so.
func TestGSOFlush(t *testing.T) {
	out := &gsoCapture{on: true}
	_, l := newTestLink(t, Config{Handler: echoEnder{}}, out)
	ns2, err := New(Config{Handler: echoEnder{}, Pools: l.ns.cfg.Pools}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns2.Close)
	// A WriteCap of one packet: super-packets have a buffer of their own.
	l2, err := ns2.NewLink(LinkConfig{MTU: 1500, Output: out, Headroom: tunHeadroom, Async: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l2.Close)
	if l2.ep.SupportedGSO() != stack.HostGSOSupported || l2.ep.GSOMaxSize() != gsoMaxSize {
		t.Fatal("a link whose output takes super-packets does not offer GSO")
	}
	off, err := ns2.NewLink(LinkConfig{MTU: 1500, Output: &gsoCapture{on: false}, Headroom: tunHeadroom})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(off.Close)
	if off.ep.SupportedGSO() != stack.GSONotSupported {
		t.Fatal("an output without GSO is offered it")
	}

	pkts := []*stack.PacketBuffer{tcpPacketBuffer(100, 1460), tcpPacketBuffer(1460, 1460), tcpPacketBuffer(20000, 1460), tcpPacketBuffer(0, 1460)}
	l2.ep.flush(pkts)
	for _, p := range pkts {
		p.DecRef()
	}
	if want := []string{"batch 2", "gso", "batch 1"}; !slices.Equal(out.events, want) {
		t.Fatalf("writes %v, want %v", out.events, want)
	}
	for i, p := range out.pkts {
		if i == 2 {
			continue // the super-packet: its checksum is the kernel's to complete
		}
		if !tcpChecksumValid(p) {
			t.Errorf("packet %d: TCP checksum not completed", i)
		}
	}
	if g := out.gsos[0]; g != (GSO{L3Len: 20, HdrLen: 40, MSS: 1460}) {
		t.Errorf("super-packet layout %+v", g)
	}
	if len(out.pkts[2]) != 40+20000 {
		t.Errorf("super-packet of %d bytes", len(out.pkts[2]))
	}
}

// TestCompleteTCPChecksum: completing a partial checksum gives the one a
// full computation gives, for even and odd payloads.
func TestCompleteTCPChecksum(t *testing.T) {
	for _, n := range []int{0, 1, 2, 1459, 1460} {
		p := tcpPacketBuffer(n, 1460)
		b := make([]byte, p.Size())
		copyPacket(b, p)
		p.DecRef()
		completePartial(b, header.IPv4MinimumSize, header.TCPChecksumOffset)
		if !tcpChecksumValid(b) {
			t.Errorf("%d-byte payload: checksum %#04x invalid", n, binary.BigEndian.Uint16(b[36:]))
		}
	}
}

// TestVirtioGSOHeader: the header Linux reads in front of a super-packet.
func TestVirtioGSOHeader(t *testing.T) {
	h := make([]byte, virtioNetHdrLen)
	putVirtioGSO(h, GSO{L3Len: 20, HdrLen: 52, MSS: 1448})
	want := make([]byte, virtioNetHdrLen)
	want[0], want[1] = 1, 1 // NEEDS_CSUM, GSO_TCPV4
	binary.NativeEndian.PutUint16(want[2:], 52)
	binary.NativeEndian.PutUint16(want[4:], 1448)
	binary.NativeEndian.PutUint16(want[6:], 20)
	binary.NativeEndian.PutUint16(want[8:], 16)
	if !bytes.Equal(h, want) {
		t.Fatalf("header % x, want % x", h, want)
	}
	putVirtioGSO(h, GSO{V6: true, L3Len: 40, HdrLen: 72, MSS: 1428})
	if h[1] != 4 {
		t.Fatalf("IPv6 GSO type %d, want 4", h[1])
	}
}

// superPacket builds a super-packet as gVisor's TCP does for a link with
// host GSO: IPv4 (with ipOpts bytes of options) or IPv6, a TCP header with
// tcpOpts bytes of options and flags, payload bytes counting up, and the
// pseudo-header's sum in the TCP checksum field.
func superPacket(v6 bool, ipOpts, tcpOpts, payload int, flags header.TCPFlags) ([]byte, GSO) {
	l3 := header.IPv4MinimumSize + ipOpts
	if v6 {
		l3 = header.IPv6MinimumSize
	}
	hl := l3 + header.TCPMinimumSize + tcpOpts
	b := make([]byte, hl+payload)
	for i := range payload {
		b[hl+i] = byte(i * 7)
	}
	var src, dst tcpip.Address
	if v6 {
		src, dst = tcpip.AddrFrom16([16]byte{0x20, 0x01, 0xd, 0xb8, 15: 1}), tcpip.AddrFrom16([16]byte{0x20, 0x01, 0xd, 0xb8, 15: 2})
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(hl - l3 + payload), TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: src, DstAddr: dst})
	} else {
		src, dst = toAddr(udpVIP4.Addr()), toAddr(udpClient4.Addr())
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(hl + payload), ID: 0xfffe, TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
			SrcAddr: src, DstAddr: dst, Options: header.IPv4OptionsSerializer{&header.IPv4SerializableRouterAlertOption{}}[:min(ipOpts, 1)]})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	tcp := header.TCP(b[l3:])
	tcp.Encode(&header.TCPFields{SrcPort: 80, DstPort: 40000, SeqNum: 0xffffff00, AckNum: 7, DataOffset: uint8(header.TCPMinimumSize + tcpOpts),
		Flags: flags, WindowSize: 1000})
	for i := range tcpOpts {
		tcp[header.TCPMinimumSize+i] = 1 // NOP
	}
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(hl-l3+payload)))
	return b, GSO{V6: v6, L3Len: l3, HdrLen: hl, MSS: 1000}
}

// checkSegments takes the segments of s, just Reset on a super-packet that
// was orig and is laid out as g, and checks each, before asking for the
// next (which overwrites it), against what Linux's segmentation gives: MSS
// payload bytes (the last the rest) in order, the IP header's lengths,
// IPv4 identifier (one more each) and checksum set and its other bytes the
// original's, the TCP sequence number advanced by the payload before, FIN
// and PSH only on the last, CWR only on the first, the checksum over the
// pseudo-header valid, the TCP header's other bytes the original's.
func checkSegments(s *Segmenter, orig []byte, g GSO) error {
	size := len(orig) - g.HdrLen
	n := max((size+g.MSS-1)/g.MSS, 1)
	var src, dst tcpip.Address
	if g.V6 {
		src, dst = header.IPv6(orig).SourceAddress(), header.IPv6(orig).DestinationAddress()
	} else {
		src, dst = header.IPv4(orig).SourceAddress(), header.IPv4(orig).DestinationAddress()
	}
	otcp := header.TCP(orig[g.L3Len:g.HdrLen])
	k := 0
	for seg := s.Next(); seg != nil; seg, k = s.Next(), k+1 {
		if k >= n {
			return fmt.Errorf("more than %d segments", n)
		}
		off := k * g.MSS
		pay := min(g.MSS, size-off)
		if len(seg) != g.HdrLen+pay {
			return fmt.Errorf("segment %d: %d bytes, want %d", k, len(seg), g.HdrLen+pay)
		}
		if !bytes.Equal(seg[g.HdrLen:], orig[g.HdrLen+off:g.HdrLen+off+pay]) {
			return fmt.Errorf("segment %d: payload differs", k)
		}
		ip, oip := slices.Clone(seg[:g.L3Len]), slices.Clone(orig[:g.L3Len])
		if g.V6 {
			if got := binary.BigEndian.Uint16(ip[4:]); int(got) != len(seg)-g.L3Len {
				return fmt.Errorf("segment %d: IPv6 payload length %d of %d bytes", k, got, len(seg))
			}
			clear(ip[4:6])
			clear(oip[4:6])
		} else {
			if checksum.Checksum(ip, 0) != 0xffff {
				return fmt.Errorf("segment %d: IPv4 header checksum invalid", k)
			}
			if got := binary.BigEndian.Uint16(ip[2:]); int(got) != len(seg) {
				return fmt.Errorf("segment %d: IPv4 total length %d of %d bytes", k, got, len(seg))
			}
			if id, want := binary.BigEndian.Uint16(ip[4:]), binary.BigEndian.Uint16(oip[4:])+uint16(k); id != want {
				return fmt.Errorf("segment %d: IPv4 identifier %#x, want %#x", k, id, want)
			}
			for _, h := range [][]byte{ip, oip} {
				clear(h[2:6])
				clear(h[10:12])
			}
		}
		if !bytes.Equal(ip, oip) {
			return fmt.Errorf("segment %d: IP header % x, the original's % x (lengths, identifier, checksum aside)", k, ip, oip)
		}
		tcp := header.TCP(seg[g.L3Len:g.HdrLen])
		sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(seg)-g.L3Len))
		if checksum.Checksum(seg[g.L3Len:], sum) != 0xffff {
			return fmt.Errorf("segment %d: TCP checksum invalid", k)
		}
		if got, want := tcp.SequenceNumber(), otcp.SequenceNumber()+uint32(off); got != want {
			return fmt.Errorf("segment %d: sequence number %#x, want %#x", k, got, want)
		}
		f := otcp.Flags()
		if k > 0 {
			f &^= header.TCPFlagCwr
		}
		if k < n-1 {
			f &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if tcp.Flags() != f {
			return fmt.Errorf("segment %d: flags %v, want %v", k, tcp.Flags(), f)
		}
		th, oth := slices.Clone(tcp), slices.Clone(otcp)
		for _, h := range [][]byte{th, oth} {
			clear(h[4:8])
			h[header.TCPFlagsOffset] = 0
			clear(h[header.TCPChecksumOffset : header.TCPChecksumOffset+2])
		}
		if !bytes.Equal(th, oth) {
			return fmt.Errorf("segment %d: TCP header % x, the original's % x (sequence number, flags, checksum aside)", k, th, oth)
		}
	}
	if k != n {
		return fmt.Errorf("%d segments returned, want %d", k, n)
	}
	if s.Next() != nil {
		return fmt.Errorf("a segment after the last")
	}
	return nil
}

// TestSegmenter: a super-packet cut in place gives the segments Linux's
// segmentation would (checkSegments), also when a segment's payload is
// smaller than its headers (an agent that announces a small MSS, or sends
// a packet-too-big error, makes gVisor send such segments).
func TestSegmenter(t *testing.T) {
	all := header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr
	for _, c := range []struct {
		name            string
		v6              bool
		ipOpts, tcpOpts int
		payload, mss    int
		flags           header.TCPFlags
	}{
		{name: "two exact", payload: 2000, mss: 1000, flags: header.TCPFlagAck},
		{name: "short last", payload: 2001, mss: 1000, flags: all},
		{name: "one segment", payload: 999, mss: 1000, flags: all},
		{name: "empty", payload: 0, mss: 1000, flags: header.TCPFlagAck | header.TCPFlagFin},
		{name: "largest", payload: gsoMaxSize - 40, mss: 1134, flags: all},
		{name: "timestamps", tcpOpts: 12, payload: 5000, mss: 1122, flags: all},
		{name: "ip options", ipOpts: 4, tcpOpts: 12, payload: 3333, mss: 1000, flags: header.TCPFlagAck | header.TCPFlagPsh},
		{name: "ipv6", v6: true, tcpOpts: 12, payload: 4500, mss: 1000, flags: all},
		{name: "ece and urg kept", payload: 2500, mss: 1000, flags: all | header.TCPFlagEce | header.TCPFlagUrg},
		{name: "mss of the headers", payload: 300, mss: 52, flags: all},
		{name: "mss below the headers", tcpOpts: 12, payload: 300, mss: 36, flags: all},
		{name: "ipv6 mss below the headers", v6: true, tcpOpts: 40, payload: 500, mss: 8, flags: all},
		{name: "one-byte mss", ipOpts: 4, tcpOpts: 40, payload: 7, mss: 1, flags: all},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, g := superPacket(c.v6, c.ipOpts, c.tcpOpts, c.payload, c.flags)
			g.MSS = c.mss
			orig := slices.Clone(b)
			var s Segmenter
			if !s.Reset(b, g) {
				t.Fatal("refused")
			}
			if err := checkSegments(&s, orig, g); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSegmenterRefuses: a packet that does not match its layout is refused,
// not cut: among others one whose IP length field is not its length (a
// segment of a packet past 64 KiB would not fit an IPv4 total length),
// that is not TCP, or that is a fragment.
func TestSegmenterRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		v6   bool
		edit func(b []byte, g *GSO) []byte // returns the packet to cut
	}{
		{"no IP header", false, func(b []byte, g *GSO) []byte { g.L3Len = 0; return b }},
		{"TCP header cut", false, func(b []byte, g *GSO) []byte { g.HdrLen = g.L3Len + 10; return b }},
		{"TCP header length differs", false, func(b []byte, g *GSO) []byte { g.HdrLen -= 4; return b }},
		{"IP header length differs", false, func(b []byte, g *GSO) []byte { g.L3Len += 4; g.HdrLen += 4; return b }},
		{"headers too long", false, func(b []byte, g *GSO) []byte { g.HdrLen = maxGSOHeader + 1; return b }},
		{"zero MSS", false, func(b []byte, g *GSO) []byte { g.MSS = 0; return b }},
		{"negative MSS", false, func(b []byte, g *GSO) []byte { g.MSS = -1; return b }},
		{"headers past the packet", false, func(b []byte, _ *GSO) []byte { return b[:50] }},
		{"IPv6 said of IPv4", false, func(b []byte, g *GSO) []byte { g.V6, g.L3Len, g.HdrLen = true, 40, 72; return b }},
		{"IPv4 said of IPv6", true, func(b []byte, g *GSO) []byte { g.V6 = false; return b }},
		{"too large", false, func([]byte, *GSO) []byte { return make([]byte, gsoMaxSize+header.IPv6MinimumSize+1) }},
		{"a segment past an IPv4 total length", false, func(_ []byte, g *GSO) []byte {
			b, _ := superPacket(false, 0, 12, gsoMaxSize-40, header.TCPFlagAck) // its total length wrapped
			g.MSS = gsoMaxSize
			return b
		}},
		{"IPv4 total length short", false, func(b []byte, _ *GSO) []byte {
			header.IPv4(b).SetTotalLength(uint16(len(b) - 1))
			setIPv4Checksum(b)
			return b
		}},
		{"IPv4 total length long", false, func(b []byte, _ *GSO) []byte { return b[:len(b)-1] }},
		{"IPv6 payload length short", true, func(b []byte, _ *GSO) []byte { return append(b, 0) }},
		{"IPv6 payload length long", true, func(b []byte, _ *GSO) []byte { return b[:len(b)-1] }},
		{"not TCP", false, func(b []byte, _ *GSO) []byte { b[9] = uint8(header.UDPProtocolNumber); setIPv4Checksum(b); return b }},
		{"IPv6 next header not TCP", true, func(b []byte, _ *GSO) []byte { b[6] = uint8(header.UDPProtocolNumber); return b }},
		{"first fragment", false, func(b []byte, _ *GSO) []byte {
			header.IPv4(b).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
			setIPv4Checksum(b)
			return b
		}},
		{"later fragment", false, func(b []byte, _ *GSO) []byte {
			header.IPv4(b).SetFlagsFragmentOffset(header.IPv4FlagDontFragment, 1480)
			setIPv4Checksum(b)
			return b
		}},
	} {
		b, g := superPacket(c.v6, 0, 12, 3000, header.TCPFlagAck)
		b = c.edit(b, &g)
		var s Segmenter
		if s.Reset(b, g) {
			t.Errorf("%s: accepted", c.name)
		}
		if s.Next() != nil {
			t.Errorf("%s: a segment of a refused packet", c.name)
		}
	}
}

// FuzzSegmenter: any bytes and layout are refused or cut into the segments
// Linux's segmentation gives (checkSegments), without a panic.
func FuzzSegmenter(f *testing.F) {
	b, g := superPacket(false, 4, 12, 700, header.TCPFlagAck|header.TCPFlagFin|header.TCPFlagCwr)
	f.Add(b, g.V6, g.L3Len, g.HdrLen, 300)
	b, g = superPacket(true, 0, 0, 500, header.TCPFlagAck)
	f.Add(b, g.V6, g.L3Len, g.HdrLen, 100)
	b, g = superPacket(false, 0, 12, 100, header.TCPFlagAck|header.TCPFlagPsh)
	f.Add(b, g.V6, g.L3Len, g.HdrLen, 9) // segments smaller than their headers
	f.Add([]byte{0x45, 0, 0, 40}, false, 20, 40, 1000)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool, l3, hl, mss int) {
		g := GSO{V6: v6, L3Len: l3, HdrLen: hl, MSS: mss}
		orig := slices.Clone(b)
		var s Segmenter
		if !s.Reset(b, g) {
			if !bytes.Equal(b, orig) {
				t.Fatal("a refused packet was changed")
			}
			return
		}
		if err := checkSegments(&s, orig, g); err != nil {
			t.Fatal(err)
		}
	})
}
