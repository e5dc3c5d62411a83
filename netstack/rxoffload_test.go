package netstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var (
	rxSrc4 = netip.MustParseAddr("198.51.100.10")
	rxDst4 = netip.MustParseAddr("10.100.0.10")
	rxSrc6 = netip.MustParseAddr("2001:db8::10")
	rxDst6 = netip.MustParseAddr("fd00:100::10")
)

// rxPayload is n bytes that differ from one offset to the next, so that a
// datagram cut at the wrong place shows.
func rxPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// rxPacket builds what a TUN read holds for a client's send: the IP header
// (with the lengths of the first segment only, as a super-packet may have
// them), the transport header whose checksum field holds the
// pseudo-header's partial sum (CHECKSUM_PARTIAL), the payload; behind a
// virtio-net header of gsoType with segments of gsoSize.
func rxPacket(v6 bool, proto uint8, gsoType uint8, gsoSize int, payload []byte) []byte {
	l3 := header.IPv4MinimumSize
	if v6 {
		l3 = header.IPv6MinimumSize
	}
	l4 := header.TCPMinimumSize
	csumOff := header.TCPChecksumOffset
	if proto == protoUDP {
		l4, csumOff = header.UDPMinimumSize, udpChecksumOffset
	}
	pkt := make([]byte, virtioNetHdrLen+l3+l4, virtioNetHdrLen+l3+l4+len(payload))
	h := pkt[:virtioNetHdrLen]
	h[0] = virtioNetFNeedsCsum
	h[1] = gsoType
	binary.NativeEndian.PutUint16(h[2:], uint16(l3+l4))
	binary.NativeEndian.PutUint16(h[4:], uint16(gsoSize))
	binary.NativeEndian.PutUint16(h[6:], uint16(l3))
	binary.NativeEndian.PutUint16(h[8:], uint16(csumOff))
	ip := pkt[virtioNetHdrLen:]
	seg := len(payload) // the first segment's payload
	if gsoType != virtioNetGSONone {
		seg = min(seg, gsoSize)
	}
	first := l3 + l4 + seg
	src, dst := rxSrc4, rxDst4
	if v6 {
		src, dst = rxSrc6, rxDst6
		header.IPv6(ip).Encode(&header.IPv6Fields{PayloadLength: uint16(first - l3), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
			SrcAddr: toAddr(src), DstAddr: toAddr(dst)})
		ip[6] = proto
	} else {
		header.IPv4(ip).Encode(&header.IPv4Fields{TotalLength: uint16(first), ID: 100, TTL: 64, Protocol: proto,
			SrcAddr: toAddr(src), DstAddr: toAddr(dst)})
		header.IPv4(ip).SetChecksum(^header.IPv4(ip).CalculateChecksum())
	}
	t := ip[l3:]
	if proto == protoUDP {
		binary.BigEndian.PutUint16(t[0:], 40000)
		binary.BigEndian.PutUint16(t[2:], 53)
		binary.BigEndian.PutUint16(t[4:], uint16(l4+seg))
	} else {
		header.TCP(t).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: 1, AckNum: 1, DataOffset: header.TCPMinimumSize,
			Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 1000})
	}
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, toAddr(src), toAddr(dst), uint16(l4+len(payload)))
	if proto == protoUDP {
		sum = header.PseudoHeaderChecksum(header.UDPProtocolNumber, toAddr(src), toAddr(dst), uint16(l4+len(payload)))
	}
	binary.BigEndian.PutUint16(t[csumOff:], sum)
	return append(pkt, payload...)
}

// checkRxPacket checks that p is a whole IP packet with right lengths and
// checksums carrying want, and returns its transport header.
func checkRxPacket(t *testing.T, p []byte, proto uint8, want []byte) []byte {
	t.Helper()
	h, ok := parseIP(p)
	if !ok || len(h.l4) != len(p)-h.hdrLen {
		t.Fatalf("not a whole IP packet (%d bytes): %v", len(p), ok)
	}
	if !h.v6 && !header.IPv4(p).IsChecksumValid() {
		t.Fatal("IPv4 header checksum wrong")
	}
	if h.proto != proto {
		t.Fatalf("protocol %d, want %d", h.proto, proto)
	}
	l4 := header.TCPMinimumSize
	tp := header.TCPProtocolNumber
	if proto == protoUDP {
		l4, tp = header.UDPMinimumSize, header.UDPProtocolNumber
		if got := int(binary.BigEndian.Uint16(h.l4[4:])); got != len(h.l4) {
			t.Fatalf("UDP length %d, want %d", got, len(h.l4))
		}
	}
	sum := header.PseudoHeaderChecksum(tp, toAddr(h.src), toAddr(h.dst), uint16(len(h.l4)))
	if checksum.Checksum(h.l4, sum) != 0xffff {
		t.Fatal("transport checksum wrong")
	}
	if !bytes.Equal(h.l4[l4:], want) {
		t.Fatalf("payload of %d bytes differs from the %d sent", len(h.l4)-l4, len(want))
	}
	return h.l4[:l4]
}

// TestReceiveVirtio: a TCP super-packet reaches the stack whole with its
// checksums right; a UDP one is cut into its datagrams, each whole and
// right; a single packet with a partial checksum gets it completed.
func TestReceiveVirtio(t *testing.T) {
	scratch := make([]byte, 65535)
	for _, v6 := range []bool{false, true} {
		name := map[bool]string{false: "v4", true: "v6"}[v6]
		t.Run(name+"/tcp", func(t *testing.T) {
			gso := uint8(virtioNetGSOTCPv4)
			if v6 {
				gso = virtioNetGSOTCPv6
			}
			payload := rxPayload(60000)
			var got [][]byte
			if err := receiveVirtio(rxPacket(v6, protoTCPTest, gso|virtioNetGSOECN, 1448, payload), scratch, func(p []byte) { got = append(got, slices.Clone(p)) }); err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("delivered %d packets, want the super-packet whole", len(got))
			}
			checkRxPacket(t, got[0], protoTCPTest, payload)
		})
		t.Run(name+"/udp", func(t *testing.T) {
			payload := rxPayload(2500)
			var got [][]byte
			if err := receiveVirtio(rxPacket(v6, protoUDP, virtioNetGSOUDPL4, 1000, payload), scratch, func(p []byte) { got = append(got, slices.Clone(p)) }); err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 {
				t.Fatalf("delivered %d datagrams, want 3", len(got))
			}
			for i, p := range got {
				checkRxPacket(t, p, protoUDP, payload[i*1000:min((i+1)*1000, len(payload))])
				if !v6 {
					if id := header.IPv4(p).ID(); id != uint16(100+i) {
						t.Errorf("datagram %d has IPv4 ID %d, want %d", i, id, 100+i)
					}
				}
			}
		})
		t.Run(name+"/udp empty", func(t *testing.T) {
			// No payload: one empty datagram, not nothing and no error.
			var got [][]byte
			if err := receiveVirtio(rxPacket(v6, protoUDP, virtioNetGSOUDPL4, 1000, nil), scratch, func(p []byte) { got = append(got, slices.Clone(p)) }); err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("delivered %d datagrams, want 1", len(got))
			}
			checkRxPacket(t, got[0], protoUDP, nil)
		})
		t.Run(name+"/single", func(t *testing.T) {
			payload := rxPayload(300)
			in := rxPacket(v6, protoUDP, virtioNetGSONone, 0, payload)
			var got [][]byte
			if err := receiveVirtio(in, scratch, func(p []byte) { got = append(got, slices.Clone(p)) }); err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("delivered %d packets, want 1", len(got))
			}
			checkRxPacket(t, got[0], protoUDP, payload)
		})
	}
	t.Run("v6/extension header", func(t *testing.T) {
		// A partial checksum of the UDP header behind a destination
		// options header (PadN) is completed there.
		in := rxPacket(true, protoUDP, virtioNetGSONone, 0, rxPayload(100))
		ip := virtioNetHdrLen
		in = slices.Insert(in, ip+header.IPv6MinimumSize, protoUDP, 0, 1, 4, 0, 0, 0, 0)
		in[ip+6] = uint8(header.IPv6DestinationOptionsExtHdrIdentifier)
		binary.BigEndian.PutUint16(in[ip+4:], binary.BigEndian.Uint16(in[ip+4:])+8)
		binary.NativeEndian.PutUint16(in[6:], header.IPv6MinimumSize+8)
		var got []byte
		if err := receiveVirtio(in, scratch, func(p []byte) { got = slices.Clone(p) }); err != nil {
			t.Fatal(err)
		}
		u := got[header.IPv6MinimumSize+8:]
		sum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, toAddr(rxSrc6), toAddr(rxDst6), uint16(len(u)))
		if checksum.Checksum(u, sum) != 0xffff {
			t.Fatal("UDP checksum behind the extension header wrong")
		}
	})
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v/UDP checksum 0 sent as 0xffff", v6), func(t *testing.T) {
			// The payload's first word makes the datagram's checksum 0,
			// which UDP sends as 0xffff (RFC 768; Linux's CSUM_MANGLED_0):
			// 0 would say "no checksum", which IPv6 does not allow.
			in := rxPacket(v6, protoUDP, virtioNetGSONone, 0, make([]byte, 20))
			l4 := virtioNetHdrLen + header.IPv4MinimumSize
			if v6 {
				l4 = virtioNetHdrLen + header.IPv6MinimumSize
			}
			s := checksum.Checksum(in[l4:], 0)
			binary.BigEndian.PutUint16(in[l4+header.UDPMinimumSize:], 0xffff-s)
			var got []byte
			if err := receiveVirtio(in, scratch, func(p []byte) { got = slices.Clone(p) }); err != nil {
				t.Fatal(err)
			}
			if c := binary.BigEndian.Uint16(got[l4-virtioNetHdrLen+udpChecksumOffset:]); c != 0xffff {
				t.Fatalf("UDP checksum %#04x, want 0xffff", c)
			}
		})
	}
	t.Run("no checksum to complete", func(t *testing.T) {
		in := rxPacket(false, protoUDP, virtioNetGSONone, 0, rxPayload(10))
		in[0] = 0 // the kernel's own checksum stands; nothing is touched
		before := slices.Clone(in)
		var got []byte
		if err := receiveVirtio(in, scratch, func(p []byte) { got = p }); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, before[virtioNetHdrLen:]) {
			t.Fatal("a packet without a partial checksum was changed")
		}
	})
}

// TestReceiveVirtioMalformed: reads that do not fit their virtio-net
// header are refused whole, with nothing delivered.
func TestReceiveVirtioMalformed(t *testing.T) {
	tcp4 := func() []byte { return rxPacket(false, protoTCPTest, virtioNetGSOTCPv4, 1448, rxPayload(3000)) }
	udp4 := func() []byte { return rxPacket(false, protoUDP, virtioNetGSOUDPL4, 1000, rxPayload(3000)) }
	set16 := func(b []byte, at int, v uint16) []byte { binary.NativeEndian.PutUint16(b[at:], v); return b }
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"shorter than the header", make([]byte, virtioNetHdrLen-1)},
		{"no packet", make([]byte, virtioNetHdrLen)},
		{"TCPv4 GSO on an IPv6 packet", func() []byte {
			b := rxPacket(true, protoTCPTest, virtioNetGSOTCPv6, 1448, rxPayload(3000))
			b[1] = virtioNetGSOTCPv4
			return b
		}()},
		{"TCP checksum not at 16", set16(tcp4(), 8, 6)},
		{"TCP header beyond the packet", set16(tcp4(), 6, 60000)},
		{"TCP header inside the IP header", set16(tcp4(), 6, 4)},
		{"IPv4 header longer than the packet", func() []byte {
			b := make([]byte, virtioNetHdrLen+22) // no capacity beyond
			copy(b, tcp4())
			b[virtioNetHdrLen] = 0x47 // 28 bytes of header in 22
			return b
		}()},
		{"UDP segments of 0", set16(udp4(), 4, 0)},
		{"UDP header beyond the packet", set16(udp4(), 6, 60000)},
		{"UDP header not after the IPv4 header", set16(udp4(), 6, 24)},
		{"too many UDP segments", set16(udp4(), 4, 1)},
		{"partial checksum beyond the packet", set16(rxPacket(false, protoUDP, virtioNetGSONone, 0, rxPayload(10)), 8, 500)},
		// A checksum completed anywhere but in the transport header's
		// checksum field writes over other bytes: over the IPv4 source
		// address (a source of another tenant's prefix, past the
		// router's reverse-path filter), or a port.
		{"partial checksum over the IPv4 source", set16(set16(rxPacket(false, protoUDP, virtioNetGSONone, 0, rxPayload(10)), 6, 0), 8, 14)},
		{"partial checksum over the IPv6 destination", set16(set16(rxPacket(true, protoUDP, virtioNetGSONone, 0, rxPayload(10)), 6, 20), 8, 16)},
		{"partial checksum over the UDP destination port", set16(rxPacket(false, protoUDP, virtioNetGSONone, 0, rxPayload(10)), 8, 2)},
		{"partial checksum at TCP's place in UDP", set16(rxPacket(false, protoUDP, virtioNetGSONone, 0, rxPayload(30)), 8, 16)},
		{"TCP header inside the IPv6 header", set16(rxPacket(true, protoTCPTest, virtioNetGSOTCPv6, 1428, rxPayload(3000)), 6, 20)},
		{"TCP header not after the IPv4 header", set16(tcp4(), 6, 24)},
		{"unknown GSO type", func() []byte { b := udp4(); b[1] = 3; return b }()},
		// A GSO type or checksum offset of another protocol than the
		// packet's (Linux's virtio_net_hdr_to_skb refuses these too): a
		// TCP checksum completed in a UDP datagram writes over its
		// payload, UDP lengths and checksums cut into a TCP segment over
		// its sequence and acknowledgement numbers.
		{"TCP GSO of a UDP packet", set16(rxPacket(false, protoUDP, virtioNetGSOTCPv4, 1000, rxPayload(3000)), 8, 16)},
		{"TCPv6 GSO of a UDP packet", set16(rxPacket(true, protoUDP, virtioNetGSOTCPv6, 1000, rxPayload(3000)), 8, 16)},
		{"UDP GSO of a TCP packet", set16(rxPacket(false, protoTCPTest, virtioNetGSOUDPL4, 1000, rxPayload(3000)), 8, 6)},
		{"UDP GSO with the checksum not at 6", set16(udp4(), 8, 16)},
		{"UDP GSO without a partial checksum", func() []byte { b := udp4(); b[0] = 0; return b }()},
		{"TCP GSO of size 0", set16(tcp4(), 4, 0)},
		{"IPv6 UDP header not after the IPv6 header", set16(rxPacket(true, protoUDP, virtioNetGSOUDPL4, 1000, rxPayload(3000)), 6, 48)},
		{"IPv6 partial checksum at TCP's place in UDP", set16(rxPacket(true, protoUDP, virtioNetGSONone, 0, rxPayload(30)), 8, 16)},
		{"IPv6 partial checksum over the TCP sequence number", set16(rxPacket(true, protoTCPTest, virtioNetGSONone, 0, rxPayload(30)), 8, 6)},
		{"partial checksum of an IPv4 fragment", func() []byte {
			b := rxPacket(false, protoUDP, virtioNetGSONone, 0, rxPayload(30))
			b[virtioNetHdrLen+6] |= 0x20 // more fragments
			return b
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 0
			err := receiveVirtio(tc.in, make([]byte, 65535), func([]byte) { n++ })
			if !errors.Is(err, errVirtio) || n != 0 {
				t.Fatalf("err %v, %d delivered; want errVirtio and nothing", err, n)
			}
		})
	}
}

// FuzzReceiveVirtio: no read, however malformed, makes the decoder panic
// or deliver anything but a parseable IP packet of at most 64 KiB.
func FuzzReceiveVirtio(f *testing.F) {
	f.Add(rxPacket(false, protoTCPTest, virtioNetGSOTCPv4, 1448, rxPayload(3000)))
	f.Add(rxPacket(true, protoTCPTest, virtioNetGSOTCPv6, 1428, rxPayload(3000)))
	f.Add(rxPacket(false, protoUDP, virtioNetGSOUDPL4, 1000, rxPayload(2500)))
	f.Add(rxPacket(true, protoUDP, virtioNetGSOUDPL4, 100, rxPayload(250)))
	f.Add(rxPacket(false, protoUDP, virtioNetGSONone, 0, rxPayload(10)))
	scratch := make([]byte, 65535)
	f.Fuzz(func(t *testing.T, in []byte) {
		// receiveVirtio edits the packet in place; the fuzzer's input must
		// stay as it was (its minimizer spins on an input that changes).
		in = append([]byte(nil), in...)
		// What the decoder may change are lengths, IDs and checksums:
		// never the addresses a packet is from and to.
		var addrs []byte
		if len(in) >= virtioNetHdrLen+40 && in[virtioNetHdrLen]>>4 == 6 {
			addrs = slices.Clone(in[virtioNetHdrLen+8 : virtioNetHdrLen+40])
		} else if len(in) >= virtioNetHdrLen+20 {
			addrs = slices.Clone(in[virtioNetHdrLen+12 : virtioNetHdrLen+20])
		}
		receiveVirtio(in, scratch, func(p []byte) {
			if len(p) == 0 || len(p) > 65535 {
				t.Fatalf("delivered %d bytes", len(p))
			}
			at := 12
			if len(addrs) == 32 {
				at = 8
			}
			if addrs != nil && (len(p) < at+len(addrs) || !bytes.Equal(p[at:at+len(addrs)], addrs)) {
				t.Fatalf("addresses % x delivered as % x", addrs, p[at:min(len(p), at+len(addrs))])
			}
		})
	})
}

const protoTCPTest = uint8(header.TCPProtocolNumber)
