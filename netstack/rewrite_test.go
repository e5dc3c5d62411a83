package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// buildPacket makes an IPv4 packet with a valid TCP, UDP or ICMP checksum.
func buildPacket(proto uint8, src, dst netip.Addr, payload []byte, udpNoSum bool) []byte {
	l4len := map[uint8]int{6: 20, 17: 8, 1: 8}[proto]
	b := make([]byte, 20+l4len+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: proto, SrcAddr: toAddr(src), DstAddr: toAddr(dst)})
	ip.SetChecksum(^ip.CalculateChecksum())
	l4 := b[20:]
	copy(l4[l4len:], payload)
	switch proto {
	case 6:
		t := header.TCP(l4)
		t.Encode(&header.TCPFields{SrcPort: 1234, DstPort: 80, SeqNum: 1, DataOffset: 20, Flags: header.TCPFlagAck, WindowSize: 100})
		x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, toAddr(src), toAddr(dst), uint16(len(l4)))
		t.SetChecksum(^checksum.Checksum(l4, x))
	case 17:
		u := header.UDP(l4)
		u.Encode(&header.UDPFields{SrcPort: 1234, DstPort: 53, Length: uint16(len(l4))})
		if !udpNoSum {
			x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, toAddr(src), toAddr(dst), uint16(len(l4)))
			u.SetChecksum(^checksum.Checksum(l4, x))
		}
	case 1:
		l4[0] = 8
		binary.BigEndian.PutUint16(l4[2:], ^checksum.Checksum(l4, 0))
	}
	return b
}

func checksumsValid(t *testing.T, b []byte) {
	t.Helper()
	ip := header.IPv4(b)
	if !ip.IsChecksumValid() {
		t.Fatal("IP header checksum invalid")
	}
	src, dst := ip.SourceAddress(), ip.DestinationAddress()
	l4 := b[ip.HeaderLength():]
	switch ip.Protocol() {
	case 6:
		x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(l4)))
		if checksum.Checksum(l4, x) != 0xffff {
			t.Fatal("TCP checksum invalid")
		}
	case 17:
		if header.UDP(l4).Checksum() == 0 {
			return
		}
		x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(l4)))
		if checksum.Checksum(l4, x) != 0xffff {
			t.Fatal("UDP checksum invalid")
		}
	case 1:
		if checksum.Checksum(l4, 0) != 0xffff {
			t.Fatal("ICMP checksum invalid")
		}
	}
}

func TestRewriteIPv4(t *testing.T) {
	a, b := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("10.100.0.7")
	synth := netip.MustParseAddr("169.254.3.9")
	cases := []struct {
		name     string
		proto    uint8
		noSum    bool
		payload  []byte
		rewrite  func([]byte, netip.Addr) bool
		wantSrc  netip.Addr
		wantDest netip.Addr
	}{
		{"tcp source", 6, false, []byte("hello"), RewriteIPv4Source, synth, b},
		{"tcp destination", 6, false, []byte("hello!"), RewriteIPv4Destination, a, synth},
		{"udp source", 17, false, []byte("q"), RewriteIPv4Source, synth, b},
		{"udp without checksum", 17, true, []byte("q"), RewriteIPv4Source, synth, b},
		{"icmp", 1, false, []byte("ping"), RewriteIPv4Source, synth, b},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := buildPacket(tc.proto, a, b, tc.payload, tc.noSum)
			if !tc.rewrite(p, synth) {
				t.Fatal("rewrite refused a valid packet")
			}
			src, dst, ok := IPv4Addrs(p)
			if !ok || src != tc.wantSrc || dst != tc.wantDest {
				t.Fatalf("addresses %v %v", src, dst)
			}
			checksumsValid(t, p)
			if tc.noSum && header.UDP(p[20:]).Checksum() != 0 {
				t.Fatal("UDP without checksum got one")
			}
		})
	}
	if RewriteIPv4Source([]byte{0x45, 0, 0}, synth) {
		t.Fatal("rewrote a truncated packet")
	}
}

func BenchmarkRewriteIPv4(b *testing.B) {
	p := buildPacket(6, netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("10.100.0.7"), make([]byte, 1200), false)
	x, y := netip.MustParseAddr("169.254.0.1"), netip.MustParseAddr("100.64.0.1")
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			RewriteIPv4Source(p, x)
		} else {
			RewriteIPv4Source(p, y)
		}
	}
}
