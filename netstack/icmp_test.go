package netstack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// markerSeq is the sequence number of the echo request a test sends last
// and echoEnder always replies to: its reply, once written, shows that the
// link wrote every answer to the requests before it (writes keep order).
const markerSeq = 0xfffe

// echoEnder ends every echo request with end (Reply, Refuse or Drop),
// except the marker, which it replies to.
type echoEnder struct {
	end func(*EchoRequest)
}

func (echoEnder) HandleTCP(req *TCPRequest)      { req.Refuse() }
func (echoEnder) HandleUDP(req *UDPRequest) bool { return false }
func (h echoEnder) HandleEcho(req *EchoRequest) {
	if req.Seq == markerSeq {
		req.Reply()
		return
	}
	h.end(req)
}

// capture is an Output that keeps a copy of every packet.
type capture struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (c *capture) WritePackets(pkts [][]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range pkts {
		c.pkts = append(c.pkts, slices.Clone(p))
	}
	return nil
}

func (c *capture) all() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.pkts)
}

// untilMarker delivers the marker echo request (IPv4 or IPv6) on l, waits
// for its reply and returns the packets written before it.
func (c *capture) untilMarker(t *testing.T, l *Link, v6 bool) [][]byte {
	t.Helper()
	if v6 {
		l.Deliver(echo6(1, markerSeq, nil))
	} else {
		l.Deliver(echo4(nil, 1, markerSeq, nil))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pkts := c.all()
		for i, p := range pkts {
			if isMarkerReply(p) {
				return pkts[:i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reply to the marker request in 10s; %d packets written", len(pkts))
		}
		time.Sleep(time.Millisecond)
	}
}

// isMarkerReply tells whether p is the echo reply to the marker request.
func isMarkerReply(p []byte) bool {
	if len(p) == 0 {
		return false
	}
	switch p[0] >> 4 {
	case 4:
		hl := int(p[0]&0xf) * 4
		return len(p) >= hl+8 && p[hl] == byte(header.ICMPv4EchoReply) && binary.BigEndian.Uint16(p[hl+6:]) == markerSeq
	case 6:
		const hl = header.IPv6MinimumSize
		return len(p) >= hl+8 && p[hl] == byte(header.ICMPv6EchoReply) && binary.BigEndian.Uint16(p[hl+6:]) == markerSeq
	}
	return false
}

var (
	echoClient4 = netip.MustParseAddr("198.51.100.10")
	echoVIP4    = netip.MustParseAddr("10.100.0.5")
	echoClient6 = netip.MustParseAddr("2001:db8::10")
	echoVIP6    = netip.MustParseAddr("2001:db8:100::5")
)

// echo4 builds an IPv4 echo request with the given IP options.
func echo4(options []byte, id, seq uint16, payload []byte) []byte {
	hl := header.IPv4MinimumSize + len(options)
	b := make([]byte, hl+header.ICMPv4MinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: toAddr(echoClient4), DstAddr: toAddr(echoVIP4),
		Options: header.IPv4OptionsSerializer{&header.IPv4SerializableNOPOption{}, &header.IPv4SerializableNOPOption{},
			&header.IPv4SerializableNOPOption{}, &header.IPv4SerializableListEndOption{}}[:len(options)],
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(b[hl:])
	icmp.SetType(header.ICMPv4Echo)
	icmp.SetIdent(id)
	icmp.SetSequence(seq)
	copy(icmp.Payload(), payload)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return b
}

// echo6 builds an IPv6 echo request.
func echo6(id, seq uint16, payload []byte) []byte {
	b := make([]byte, header.IPv6MinimumSize+header.ICMPv6EchoMinimumSize+len(payload))
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(b) - header.IPv6MinimumSize), TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit: 64, SrcAddr: toAddr(echoClient6), DstAddr: toAddr(echoVIP6),
	})
	icmp := header.ICMPv6(b[header.IPv6MinimumSize:])
	icmp.SetType(header.ICMPv6EchoRequest)
	icmp.SetIdent(id)
	icmp.SetSequence(seq)
	copy(icmp.Payload(), payload)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: toAddr(echoClient6), Dst: toAddr(echoVIP6)}))
	return b
}

// checkICMP checks the IP and ICMP headers of an answer from the VIP to the
// client and returns its ICMP message.
func checkICMP(t *testing.T, pkt []byte, v6 bool) []byte {
	t.Helper()
	if !v6 {
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) || !ip.IsChecksumValid() || ip.HeaderLength() != header.IPv4MinimumSize {
			t.Fatalf("bad IPv4 header: % x", pkt[:min(len(pkt), 20)])
		}
		if ip.SourceAddress() != toAddr(echoVIP4) || ip.DestinationAddress() != toAddr(echoClient4) ||
			ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || int(ip.TotalLength()) != len(pkt) {
			t.Fatalf("IPv4 header %v → %v proto %d length %d of %d", ip.SourceAddress(), ip.DestinationAddress(),
				ip.Protocol(), ip.TotalLength(), len(pkt))
		}
		icmp := pkt[header.IPv4MinimumSize:]
		if checksum.Checksum(icmp, 0) != 0xffff {
			t.Fatal("bad ICMP checksum")
		}
		return icmp
	}
	ip := header.IPv6(pkt)
	if !ip.IsValid(len(pkt)) || ip.SourceAddress() != toAddr(echoVIP6) || ip.DestinationAddress() != toAddr(echoClient6) ||
		ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) || int(ip.PayloadLength())+header.IPv6MinimumSize != len(pkt) {
		t.Fatalf("bad IPv6 header: % x", pkt[:min(len(pkt), 40)])
	}
	icmp := header.ICMPv6(pkt[header.IPv6MinimumSize:])
	want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: toAddr(echoVIP6), Dst: toAddr(echoClient6)})
	if icmp.Checksum() != want {
		t.Fatalf("bad ICMPv6 checksum %#04x, want %#04x", icmp.Checksum(), want)
	}
	return icmp
}

// TestEchoAnswers checks the packets an echo request is answered with: the
// reply (identifier, sequence and data kept, IPv4 options dropped), the
// administratively-prohibited error quoting the request (cut at 576 bytes
// for IPv4, 1280 for IPv6), and nothing for a dropped one.
func TestEchoAnswers(t *testing.T) {
	data := []byte("ztgate echo data")
	big := bytes.Repeat([]byte{0xab}, 1300)
	for _, tc := range []struct {
		name     string
		pkt      []byte
		end      func(*EchoRequest)
		v6       bool
		typ      byte   // 0xff: no answer
		code     byte   // of the answer
		body     []byte // of the answer after the ICMP header
		checkSeq bool   // identifier and sequence number of the request
	}{
		{"IPv4 reply", echo4(nil, 7, 9, data), (*EchoRequest).Reply, false, 0, 0, data, true},
		{"IPv4 with options, reply", echo4([]byte{1, 1, 1, 0}, 7, 10, data), (*EchoRequest).Reply, false, 0, 0, data, true},
		{"IPv6 reply", echo6(8, 11, data), (*EchoRequest).Reply, true, 129, 0, data, true},
		{"IPv4 refused", echo4(nil, 7, 12, data), (*EchoRequest).Refuse, false, 3, 13, echo4(nil, 7, 12, data), false},
		{"IPv4 with options, refused", echo4([]byte{1, 1, 1, 0}, 7, 13, data), (*EchoRequest).Refuse, false, 3, 13,
			echo4([]byte{1, 1, 1, 0}, 7, 13, data), false},
		{"IPv4 refused, quote cut", echo4(nil, 7, 14, big), (*EchoRequest).Refuse, false, 3, 13, echo4(nil, 7, 14, big)[:576-28], false},
		{"IPv6 refused", echo6(8, 15, data), (*EchoRequest).Refuse, true, 1, 1, echo6(8, 15, data), false},
		{"IPv6 refused, quote cut", echo6(8, 16, big), (*EchoRequest).Refuse, true, 1, 1, echo6(8, 16, big)[:1280-48], false},
		{"IPv4 dropped", echo4(nil, 7, 17, data), (*EchoRequest).Drop, false, 0xff, 0, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &capture{}
			ns, l := newTestLink(t, Config{Handler: echoEnder{end: tc.end}}, out)
			l.Deliver(tc.pkt)
			got := out.untilMarker(t, l, tc.v6)
			if tc.typ == 0xff {
				if len(got) != 0 {
					t.Fatalf("dropped request answered: % x", got[0])
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("%d answers, want 1", len(got))
			}
			icmp := checkICMP(t, got[0], tc.v6)
			if icmp[0] != tc.typ || icmp[1] != tc.code {
				t.Fatalf("ICMP type %d code %d, want %d %d", icmp[0], icmp[1], tc.typ, tc.code)
			}
			if tc.checkSeq && !bytes.Equal(icmp[4:8], tc.pkt[len(tc.pkt)-len(tc.body)-4:len(tc.pkt)-len(tc.body)]) {
				t.Errorf("identifier and sequence % x, want those of the request", icmp[4:8])
			}
			if !tc.checkSeq && !bytes.Equal(icmp[4:8], make([]byte, 4)) {
				t.Errorf("unused field of the error % x, want zeros", icmp[4:8])
			}
			if !bytes.Equal(icmp[8:], tc.body) {
				t.Errorf("body %d bytes % x…, want %d bytes % x…", len(icmp[8:]), icmp[8:min(len(icmp), 24)],
					len(tc.body), tc.body[:min(len(tc.body), 16)])
			}
			if st := ns.Stats(); tc.typ == 3 || tc.typ == 1 {
				if st.ICMPErrorsSent != 1 {
					t.Errorf("ICMP errors counted: %d, want 1", st.ICMPErrorsSent)
				}
			}
		})
	}
}

// TestEchoRefuseRateLimited: refused echo requests share gVisor's ICMP
// rate limit; beyond its burst they go unanswered and are counted.
func TestEchoRefuseRateLimited(t *testing.T) {
	out := &capture{}
	ns, l := newTestLink(t, Config{
		Pools:   []netip.Prefix{netip.MustParsePrefix("10.100.0.0/24")},
		Handler: echoEnder{end: (*EchoRequest).Refuse},
	}, out)
	ns.s.SetICMPLimit(rate.Limit(1e-6)) // no token refilled during the test, however slow the machine
	ns.s.SetICMPBurst(5)
	const sent = 50
	for i := range sent {
		l.Deliver(echo4(nil, 1, uint16(i), nil))
	}
	n := len(out.untilMarker(t, l, false))
	st := ns.Stats()
	if n != 5 || uint64(n) != st.ICMPErrorsSent || st.ICMPErrorsSent+st.ICMPRateLimited != sent {
		t.Fatalf("%d errors written, stats %d sent + %d rate limited, want the burst of 5 of %d", n,
			st.ICMPErrorsSent, st.ICMPRateLimited, sent)
	}
}

// TestEchoBadChecksumDropped: the link answers echo requests before gVisor
// would verify them, so it verifies them itself: a request whose IPv4
// header checksum, ICMP checksum or ICMPv6 checksum (pseudo-header
// included) is wrong reaches no handler and is counted as malformed.
func TestEchoBadChecksumDropped(t *testing.T) {
	data := []byte("ztgate echo data")
	flip := func(pkt []byte, at int) []byte {
		pkt[at] ^= 0x40
		return pkt
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
		v6   bool
	}{
		{"IPv4 header checksum", flip(echo4(nil, 7, 9, data), 10), false},
		{"IPv4 header with options", flip(echo4([]byte{1, 1, 1, 0}, 7, 9, data), 21), false},
		{"ICMP checksum", flip(echo4(nil, 7, 9, data), 20+2), false},
		{"ICMP data", flip(echo4(nil, 7, 9, data), 20+8), false},
		{"ICMPv6 checksum", flip(echo6(8, 11, data), 40+2), true},
		{"ICMPv6 data", flip(echo6(8, 11, data), 40+8), true},
		{"ICMPv6 pseudo-header source", flip(echo6(8, 11, data), 8+15), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dropsMalformed(t, tc.pkt, tc.v6, "corrupted request")
		})
	}
}

// dropsMalformed delivers echo request pkt (what: how it is malformed) to a
// link whose handler answers every request, and fails t unless it is
// neither answered nor handed to the handler, and counted as malformed
// once.
func dropsMalformed(t *testing.T, pkt []byte, v6 bool, what string) {
	t.Helper()
	var handled, malformed atomic.Int64
	out := &capture{}
	_, l := newTestLink(t, Config{
		Handler: echoEnder{end: func(r *EchoRequest) {
			handled.Add(1)
			r.Reply()
		}},
		OnDrop: func(r DropReason) {
			if r == DropMalformed {
				malformed.Add(1)
			}
		},
	}, out)
	l.Deliver(pkt)
	if got := out.untilMarker(t, l, v6); len(got) != 0 {
		t.Errorf("%s answered: % x", what, got[0])
	}
	if n := handled.Load(); n != 0 {
		t.Errorf("%s handed to the handler %d times", what, n)
	}
	if n := malformed.Load(); n != 1 {
		t.Errorf("%d malformed drops counted, want 1", n)
	}
}

// newTestLink starts a stack with cfg (over 10.100.0.0/24 and
// 2001:db8:100::/64 unless cfg names pools) and a 1500-byte link into it
// that writes to out; both are closed when the test ends.
func newTestLink(t *testing.T, cfg Config, out Output) (*Stack, *Link) {
	t.Helper()
	if cfg.Pools == nil {
		cfg.Pools = []netip.Prefix{netip.MustParsePrefix("10.100.0.0/24"), netip.MustParsePrefix("2001:db8:100::/64")}
	}
	ns, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Close)
	l, err := ns.NewLink(LinkConfig{MTU: 1500, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return ns, l
}

// TestEchoMalformedOptionsDropped: gVisor drops a packet whose IPv4
// options it cannot parse (and counts it); the link, which answers echo
// requests before gVisor sees them, does the same: such a request reaches
// no handler and is counted as malformed. A well-formed option list
// (TestEchoAnswers) is answered, its options dropped.
func TestEchoMalformedOptionsDropped(t *testing.T) {
	withOptions := func(opts []byte) []byte {
		pkt := echo4(make([]byte, len(opts)), 7, 9, []byte("ztgate echo data"))
		copy(pkt[header.IPv4MinimumSize:], opts)
		header.IPv4(pkt).SetChecksum(0)
		header.IPv4(pkt).SetChecksum(^header.IPv4(pkt).CalculateChecksum())
		return pkt
	}
	for _, tc := range []struct {
		name string
		opts []byte
	}{
		{"option length zero", []byte{0x07, 0, 0, 0}},
		{"option length past the header", []byte{0x44, 40, 5, 0}},
		{"option length one", []byte{0x94, 1, 0, 0}},
		{"option type without a length", []byte{1, 1, 1, 0x94}},
		{"record route shorter than its header", []byte{0x07, 2, 1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dropsMalformed(t, withOptions(tc.opts), false, "request with malformed options")
		})
	}
}

// TestOptionsParseTwice: an option other than NOP given twice is refused,
// as gVisor refuses it; NOPs may repeat.
func TestOptionsParseTwice(t *testing.T) {
	for _, tc := range []struct {
		opts []byte
		want bool
	}{
		{[]byte{0x94, 4, 0, 0, 0x94, 4, 0, 0}, false},
		{[]byte{0x94, 4, 0, 0, 1, 1, 1, 0}, true},
	} {
		pkt := make([]byte, header.IPv4MinimumSize+len(tc.opts)+8)
		pkt[0] = 0x40 | byte((header.IPv4MinimumSize+len(tc.opts))/4)
		binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
		copy(pkt[header.IPv4MinimumSize:], tc.opts)
		h, ok := parseIP(pkt)
		if !ok {
			t.Fatal("test packet does not parse")
		}
		if got := h.optionsParse(pkt); got != tc.want {
			t.Errorf("options % x: %v, want %v", tc.opts, got, tc.want)
		}
	}
}
