package netstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
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

func tcpChecksumValid(pkt []byte) bool {
	ip := header.IPv4(pkt)
	tcp := header.TCP(ip.Payload())
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	return checksum.Checksum(tcp, xsum) == 0xffff
}

// TestGSOFlush: a link whose output takes super-packets hands them to
// WriteGSO with their layout, in order with the batched packets around
// them, and completes the partial checksum of the packets that fit one
// segment; a link whose output cannot take them tells gVisor so.
func TestGSOFlush(t *testing.T) {
	out := &gsoCapture{on: true}
	_, l := newTestLink(t, Config{Handler: echoEnder{}}, out)
	if l.ep.SupportedGSO() != stack.GSONotSupported {
		t.Fatal("a link with a small WriteCap offers GSO")
	}
	ns2, err := New(Config{Handler: echoEnder{}, Pools: l.ns.cfg.Pools}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns2.Close)
	l2, err := ns2.NewLink(LinkConfig{MTU: 1500, Output: out, Headroom: tunHeadroom, WriteCap: tunHeadroom + gsoMaxSize, Async: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l2.Close)
	if l2.ep.SupportedGSO() != stack.HostGSOSupported || l2.ep.GSOMaxSize() != gsoMaxSize {
		t.Fatal("a link whose output takes super-packets does not offer GSO")
	}
	off, err := ns2.NewLink(LinkConfig{MTU: 1500, Output: &gsoCapture{on: false}, Headroom: tunHeadroom, WriteCap: tunHeadroom + gsoMaxSize})
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
