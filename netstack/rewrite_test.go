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

// icmpError is an ICMPv4 error of typ from src to dst quoting the first
// n bytes of orig, with valid checksums.
func icmpError(typ uint8, src, dst netip.Addr, orig []byte, n int) []byte {
	q := orig[:min(n, len(orig))]
	b := make([]byte, 20+8+len(q))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: 1, SrcAddr: toAddr(src), DstAddr: toAddr(dst)})
	ip.SetChecksum(^ip.CalculateChecksum())
	b[20], b[21] = typ, 3
	copy(b[28:], q)
	binary.BigEndian.PutUint16(b[22:], ^checksum.Checksum(b[20:], 0))
	return b
}

// TestRewriteICMPv4Quoted: the quoted packet of an ICMP error gets the new
// address with every checksum as a packet sent with it would have (the
// quoted header's, the quoted TCP or UDP checksum when quoted, the ICMP
// checksum), and the outer packet stays valid; what is not an ICMPv4
// error with a whole quoted header is left alone.
func TestRewriteICMPv4Quoted(t *testing.T) {
	vip, synth, inner := netip.MustParseAddr("10.100.0.20"), netip.MustParseAddr("169.254.0.1"), netip.MustParseAddr("100.64.0.1")
	udp := buildPacket(17, synth, vip, []byte("some payload"), false)
	tcp := buildPacket(6, synth, vip, []byte("some payload"), false)
	cases := []struct {
		name string
		orig []byte // the packet the error quotes, from synth
		typ  uint8
		n    int // bytes quoted
		dst  bool
		want bool
	}{
		{"udp, 8 bytes quoted", udp, 3, 28, false, true},
		{"udp, whole", udp, 3, len(udp), false, true},
		{"udp without checksum", buildPacket(17, synth, vip, []byte("x"), true), 3, 28, false, true},
		{"tcp, 8 bytes quoted", tcp, 3, 28, false, true},
		{"tcp, checksum quoted", tcp, 11, 40, false, true},
		{"time exceeded", udp, 11, 28, false, true},
		{"parameter problem", udp, 12, 28, false, true},
		{"the destination", buildPacket(17, vip, synth, []byte("x"), false), 3, 28, true, true},
		{"echo reply is no error", udp, 0, 28, false, false},
		{"redirect is not rewritten", udp, 5, 28, false, false},
		{"quote shorter than an IPv4 header", udp, 3, 19, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pkt := icmpError(tc.typ, vip, synth, tc.orig, tc.n)
			before := append([]byte(nil), pkt...)
			rewrite := RewriteICMPv4QuotedSource
			want := append([]byte(nil), tc.orig...)
			RewriteIPv4Source(want, inner)
			if tc.dst {
				rewrite = RewriteICMPv4QuotedDestination
				want = append(want[:0], tc.orig...)
				RewriteIPv4Destination(want, inner)
			}
			if got := rewrite(pkt, synth, inner); got != tc.want {
				t.Fatalf("rewrite = %v, want %v", got, tc.want)
			}
			if !tc.want {
				if string(pkt) != string(before) {
					t.Errorf("a packet that was not rewritten changed")
				}
				return
			}
			if got, w := pkt[28:], want[:len(pkt)-28]; string(got) != string(w) {
				t.Errorf("quote\n% x\nwant (the packet as sent with the address)\n% x", got, w)
			}
			if string(pkt[:20]) != string(before[:20]) {
				t.Errorf("the outer header changed")
			}
			if c := checksum.Checksum(pkt[20:], 0); c != 0xffff {
				t.Errorf("ICMP checksum does not verify: %#x", c)
			}
		})
	}
	t.Run("not ICMP", func(t *testing.T) {
		if RewriteICMPv4QuotedSource(append([]byte(nil), udp...), synth, inner) {
			t.Error("a UDP datagram was taken for an ICMP error")
		}
	})
	t.Run("a fragment", func(t *testing.T) {
		pkt := icmpError(3, vip, synth, udp, 28)
		pkt[6] |= 0x20 // more fragments
		header.IPv4(pkt).SetChecksum(0)
		header.IPv4(pkt).SetChecksum(^header.IPv4(pkt).CalculateChecksum())
		if RewriteICMPv4QuotedSource(pkt, synth, inner) {
			t.Error("the first fragment of an ICMP error was rewritten")
		}
	})
	t.Run("a quote from another address", func(t *testing.T) {
		pkt := icmpError(3, vip, synth, buildPacket(17, inner, vip, []byte("x"), false), 28)
		before := string(pkt)
		if RewriteICMPv4QuotedSource(pkt, synth, inner) || string(pkt) != before {
			t.Error("a quote whose source is not the one to replace was rewritten")
		}
	})
}

// FuzzRewriteICMPv4Quoted: an ICMP error from a client is hostile input.
// The rewrite never panics nor reads or writes past the packet, changes
// nothing when it reports false, and when it reports true leaves the outer
// IP header as it was, the quoted address replaced, and a valid ICMP
// checksum.
func FuzzRewriteICMPv4Quoted(f *testing.F) {
	vip, synth := netip.MustParseAddr("10.100.0.20"), netip.MustParseAddr("169.254.0.1")
	udp := buildPacket(17, synth, vip, []byte("some payload"), false)
	f.Add(icmpError(3, vip, synth, udp, 28), false)
	f.Add(icmpError(11, vip, synth, buildPacket(6, synth, vip, []byte("x"), false), 48), false)
	f.Add(icmpError(3, synth, vip, buildPacket(17, vip, synth, []byte("x"), false), 28), true)
	f.Add([]byte{0x45, 0, 0, 20}, false)
	inner := netip.MustParseAddr("100.64.0.1")
	f.Fuzz(func(t *testing.T, pkt []byte, dst bool) {
		before := append([]byte(nil), pkt...)
		rewrite, off := RewriteICMPv4QuotedSource, 12
		if dst {
			rewrite, off = RewriteICMPv4QuotedDestination, 16
		}
		from := synth
		if len(pkt) >= 28+20 && pkt[9] == 1 {
			from = netip.AddrFrom4([4]byte(pkt[28+off : 28+off+4])) // whatever it quotes
		}
		if !rewrite(pkt, from, inner) || from == inner {
			if string(pkt) != string(before) {
				t.Fatal("changed a packet it did not rewrite (or whose quote had the address already)")
			}
			return
		}
		hl := int(pkt[0]&0x0f) * 4
		if string(pkt[:hl]) != string(before[:hl]) {
			t.Fatal("changed the outer IP header")
		}
		if got := netip.AddrFrom4([4]byte(pkt[hl+8+off : hl+8+off+4])); got != inner {
			t.Fatalf("quoted address %v, want %v", got, inner)
		}
		end := int(binary.BigEndian.Uint16(pkt[2:4])) // the packet, without what trails it in the buffer
		if c := checksum.Checksum(pkt[hl:end], 0); c != 0xffff {
			t.Fatalf("ICMP checksum does not verify: %#x", c)
		}
	})
}
