package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// icmp4 builds an IPv4 packet from src to dst carrying an ICMP message of
// type typ whose body (after the 8-byte ICMP header) is quoted. Checksums
// are left zero: icmpAdmissible does not read them.
func icmp4(src, dst netip.Addr, typ uint8, quoted []byte) []byte {
	b := make([]byte, 20+8+len(quoted))
	b[0], b[9] = 0x45, protoICMPv4
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	b[20] = typ
	copy(b[28:], quoted)
	return b
}

// quoted4 is the first 28 bytes of a UDP packet from src to dst, as an
// ICMP error quotes it.
func quoted4(src, dst netip.Addr) []byte {
	q := make([]byte, 28)
	q[0], q[9] = 0x45, 17
	s, d := src.As4(), dst.As4()
	copy(q[12:], s[:])
	copy(q[16:], d[:])
	return q
}

// icmp6 builds an IPv6 packet from src to dst: the extension headers
// exts (each 8 bytes, next-header filled in), then ICMPv6 of type typ with
// body.
func icmp6(src, dst netip.Addr, exts []uint8, typ uint8, body []byte) []byte {
	b := make([]byte, 40+8*len(exts)+8+len(body))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	next := &b[6]
	off := 40
	for _, e := range exts {
		*next = e
		next = &b[off]
		off += 8
	}
	*next = protoICMPv6
	b[off] = typ
	copy(b[off+8:], body)
	return b
}

// quoted6 is the IPv6 header of a packet from src to dst, as an ICMPv6
// error quotes it.
func quoted6(src, dst netip.Addr) []byte {
	q := make([]byte, 40)
	q[0], q[6] = 0x60, 17
	s, d := src.As16(), dst.As16()
	copy(q[8:], s[:])
	copy(q[24:], d[:])
	return q
}

func TestICMPAdmissible(t *testing.T) {
	vip, client, other := netip.MustParseAddr("10.100.0.10"), netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("203.0.113.9")
	router := netip.MustParseAddr("198.51.100.1") // may report on client's packets, not on other's
	vip6, client6, other6 := netip.MustParseAddr("2001:db8:100::10"), netip.MustParseAddr("2001:db8:1::7"), netip.MustParseAddr("2001:db8:2::9")
	later := icmp4(client, vip, 3, quoted4(vip, other))
	binary.BigEndian.PutUint16(later[6:], 100) // a fragment at offset 800
	tests := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"echo request", icmp4(client, vip, 8, nil), true},
		{"unreachable about its own packet", icmp4(client, vip, 3, quoted4(vip, client)), true},
		{"unreachable about another client's packet", icmp4(client, vip, 3, quoted4(vip, other)), false},
		{"a router's host unreachable about a client it may report on", icmp4(router, vip, 3, quoted4(vip, client)), true},
		{"a router's host unreachable about another", icmp4(router, vip, 3, quoted4(vip, other)), false},
		{"time exceeded about another's", icmp4(client, vip, 11, quoted4(vip, other)), false},
		{"parameter problem about another's", icmp4(client, vip, 12, quoted4(vip, other)), false},
		{"unreachable quoting too little", icmp4(client, vip, 3, quoted4(vip, client)[:12]), false},
		{"unreachable quoting no IPv4 header", icmp4(client, vip, 3, append([]byte{0x60}, quoted4(vip, client)[1:]...)), false},
		{"redirect", icmp4(client, vip, 5, quoted4(vip, client)), false},
		{"a later fragment", later, true},
		{"UDP", netstackUDP(client, vip), true},
		{"ICMPv6 echo", icmp6(client6, vip6, nil, 128, nil), true},
		{"ICMPv6 redirect", icmp6(client6, vip6, nil, 137, quoted6(vip6, client6)), false},
		{"ICMPv6 packet too big about its own", icmp6(client6, vip6, nil, 2, append(make([]byte, 0), quoted6(vip6, client6)...)), true},
		{"ICMPv6 packet too big about another's", icmp6(client6, vip6, nil, 2, quoted6(vip6, other6)), false},
		{"ICMPv6 unreachable about another's", icmp6(client6, vip6, nil, 1, quoted6(vip6, other6)), false},
		{"ICMPv6 error quoting too little", icmp6(client6, vip6, nil, 1, quoted6(vip6, client6)[:30]), false},
		{"ICMPv6 echo behind destination options", icmp6(client6, vip6, []uint8{60}, 128, nil), false},
		{"ICMPv6 echo behind hop-by-hop and routing", icmp6(client6, vip6, []uint8{0, 43}, 128, nil), false},
		{"ICMPv6 in a fragment", icmp6(client6, vip6, []uint8{44}, 128, nil), false},
		{"nine extension headers", icmp6(client6, vip6, []uint8{60, 60, 60, 60, 60, 60, 60, 60, 60}, 0, nil), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, ok := parseIP(tc.pkt)
			if !ok {
				t.Fatal("test packet does not parse")
			}
			from := func(src, dst netip.Addr) bool { return src == dst || (src == router && dst == client) }
			if got := h.icmpAdmissible(from); got != tc.want {
				t.Errorf("icmpAdmissible %v, want %v", got, tc.want)
			}
		})
	}
}

func netstackUDP(src, dst netip.Addr) []byte {
	b := quoted4(src, dst)
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	return b
}

// TestEcho6BehindExtensionHeaders: an ICMPv6 echo request behind a
// destination options header is dropped and counted, never answered by
// gVisor past the handler (which refuses every request here).
func TestEcho6BehindExtensionHeaders(t *testing.T) {
	var refused int
	out := &capture{}
	_, l := newTestLink(t, Config{
		Handler: echoEnder{end: func(r *EchoRequest) { r.Drop() }},
		OnDrop: func(r DropReason) {
			if r == DropICMPRefused {
				refused++
			}
		},
	}, out)
	plain := echo6(8, 42, []byte("x"))
	b := make([]byte, len(plain)+8)
	copy(b, plain[:header.IPv6MinimumSize])
	b[6] = 60 // destination options, then the ICMPv6 of plain
	b[header.IPv6MinimumSize] = protoICMPv6
	b[header.IPv6MinimumSize+2], b[header.IPv6MinimumSize+3] = 1, 4 // PadN of 4
	copy(b[header.IPv6MinimumSize+8:], plain[header.IPv6MinimumSize:])
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-header.IPv6MinimumSize))
	l.Deliver(b)
	for _, p := range out.untilMarker(t, l, true) {
		if len(p) > 40 && p[6] == protoICMPv6 && p[40] == 129 {
			t.Errorf("an echo reply went out although the handler refused every request")
		}
	}
	if refused != 1 {
		t.Errorf("%d drops counted as icmp_refused, want 1", refused)
	}
}
