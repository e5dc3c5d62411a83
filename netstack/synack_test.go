package netstack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// tcpOpts are the options of a segment the tests build.
type tcpOpts struct {
	noMSS        bool // no MSS option (a segment after the handshake)
	ts           bool // a timestamp option (after MSS and two no-ops)
	tsval, tsecr uint32
	data         []byte // the payload
}

// tcpPacket builds an IPv4 (or IPv6) packet with one TCP segment, options
// as o says, checksums correct.
func tcpPacket(src, dst netip.AddrPort, flags header.TCPFlags, seq, ack uint32, o tcpOpts) []byte {
	opts := []byte{2, 4, 0x05, 0xb4} // MSS 1460
	if o.noMSS {
		opts = nil
	}
	if o.ts {
		opts = append(opts, 1, 1, 8, 10)
		opts = binary.BigEndian.AppendUint32(opts, o.tsval)
		opts = binary.BigEndian.AppendUint32(opts, o.tsecr)
	}
	t := make([]byte, 20+len(opts), 20+len(opts)+len(o.data))
	binary.BigEndian.PutUint16(t[0:2], src.Port())
	binary.BigEndian.PutUint16(t[2:4], dst.Port())
	binary.BigEndian.PutUint32(t[4:8], seq)
	binary.BigEndian.PutUint32(t[8:12], ack)
	t[12] = byte(len(t)/4) << 4
	t[13] = byte(flags)
	binary.BigEndian.PutUint16(t[14:16], 65535)
	copy(t[20:], opts)
	t = append(t, o.data...)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpip.AddrFromSlice(src.Addr().AsSlice()),
		tcpip.AddrFromSlice(dst.Addr().AsSlice()), uint16(len(t)))
	binary.BigEndian.PutUint16(t[16:18], ^checksum.Checksum(t, sum))
	if src.Addr().Is6() {
		ip := make([]byte, 40, 40+len(t))
		ip[0] = 6 << 4
		binary.BigEndian.PutUint16(ip[4:6], uint16(len(t)))
		ip[6], ip[7] = 6, 64
		copy(ip[8:24], src.Addr().AsSlice())
		copy(ip[24:40], dst.Addr().AsSlice())
		return append(ip, t...)
	}
	ip := make([]byte, 20, 20+len(t))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+len(t)))
	ip[8], ip[9] = 64, 6
	copy(ip[12:16], src.Addr().AsSlice())
	copy(ip[16:20], dst.Addr().AsSlice())
	binary.BigEndian.PutUint16(ip[10:12], ^checksum.Checksum(ip, 0))
	return append(ip, t...)
}

// timestamps returns the TSval and TSecr of a packet tcpPacket built with
// a timestamp option.
func timestamps(p []byte) (tsval, tsecr uint32) {
	h, _ := parseIP(p)
	ts := h.l4[28:]
	return binary.BigEndian.Uint32(ts), binary.BigEndian.Uint32(ts[4:])
}

// synAckFamilies are the stack's and the client's addresses in the
// clock's tests, for each IP version.
var synAckFamilies = []struct {
	name        string
	vip, client netip.AddrPort
}{
	{"IPv4", netip.MustParseAddrPort("10.100.0.5:80"), netip.MustParseAddrPort("169.254.0.7:40000")},
	{"IPv6", netip.MustParseAddrPort("[2001:db8:100::5]:80"), netip.MustParseAddrPort("[2001:db8:1::7]:40000")},
}

func TestSynAckClock(t *testing.T) {
	const ms = int64(time.Millisecond)
	for _, fam := range synAckFamilies {
		vip, client := fam.vip, fam.client
		const isn, iss = 1000, 5000
		synAck := func(tsval, tsecr uint32) []byte {
			return tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, iss, isn+1, tcpOpts{ts: true, tsval: tsval, tsecr: tsecr})
		}
		syn := func(tsval uint32) []byte {
			return tcpPacket(client, vip, header.TCPFlagSyn, isn, 0, tcpOpts{ts: true, tsval: tsval})
		}
		t.Run(fam.name, func(t *testing.T) {
			for _, tc := range []struct {
				name      string
				run       func(c *synAckClock) []byte // returns the packet the test checks
				tsval     uint32                      // the TSval and TSecr the clock gives the packet
				tsecr     uint32
				unchanged bool // the packet has no timestamps and is left as it was
			}{
				{name: "first SYN-ACK untouched", tsval: 700, tsecr: 300, run: func(c *synAckClock) []byte {
					p := synAck(700, 300)
					c.outboundAt(p, 10*ms)
					return p
				}},
				{name: "retransmission gets the TSval of now", tsval: 700 + 1500, tsecr: 300, run: func(c *synAckClock) []byte {
					c.outboundAt(synAck(700, 300), 10*ms)
					p := synAck(700, 300)
					c.outboundAt(p, 1510*ms)
					return p
				}},
				{name: "and echoes the client's SYN sent again", tsval: 700 + 1000, tsecr: 1300, run: func(c *synAckClock) []byte {
					c.outboundAt(synAck(700, 300), 10*ms)
					c.inbound(syn(1300))
					p := synAck(700, 300)
					c.outboundAt(p, 1010*ms)
					return p
				}},
				{name: "a SYN of another attempt is not echoed", tsval: 700 + 1000, tsecr: 300, run: func(c *synAckClock) []byte {
					c.outboundAt(synAck(700, 300), 10*ms)
					c.inbound(tcpPacket(client, vip, header.TCPFlagSyn, isn+7, 0, tcpOpts{ts: true, tsval: 1300}))
					c.inbound(tcpPacket(netip.AddrPortFrom(client.Addr(), 40001), vip, header.TCPFlagSyn, isn, 0, tcpOpts{ts: true, tsval: 1300}))
					p := synAck(700, 300)
					c.outboundAt(p, 1010*ms)
					return p
				}},
				{name: "the second retransmission, in the next generation", tsval: 700 + 6000, tsecr: 300, run: func(c *synAckClock) []byte {
					c.outboundAt(synAck(700, 300), 10*ms)
					c.outboundAt(synAck(700, 300), 1010*ms)
					p := synAck(700, 300)
					c.outboundAt(p, 6010*ms)
					return p
				}},
				{name: "forgotten after two generations", tsval: 700, tsecr: 300, run: func(c *synAckClock) []byte {
					other := tcpPacket(vip, netip.AddrPortFrom(client.Addr(), 40001), header.TCPFlagSyn|header.TCPFlagAck, iss, isn+1, tcpOpts{ts: true, tsval: 900})
					c.outboundAt(synAck(700, 300), 10*ms)
					c.outboundAt(slices.Clone(other), 5000*ms) // another handshake: the first one's generation becomes the one before
					c.outboundAt(slices.Clone(other), 9500*ms) // and is forgotten
					p := synAck(700, 300)
					c.outboundAt(p, 9600*ms)
					return p
				}},
				{name: "a SYN-ACK built anew is left alone", tsval: 1690, tsecr: 300, run: func(c *synAckClock) []byte {
					c.outboundAt(synAck(700, 300), 10*ms)
					p := synAck(1690, 300)
					c.outboundAt(p, 1010*ms)
					return p
				}},
				{name: "no timestamps, nothing to mend", unchanged: true, run: func(c *synAckClock) []byte {
					c.outboundAt(tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, iss, isn+1, tcpOpts{}), 10*ms)
					p := tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, iss, isn+1, tcpOpts{})
					c.outboundAt(p, 1010*ms)
					return p
				}},
				{name: "not a SYN-ACK", tsval: 700, tsecr: 300, run: func(c *synAckClock) []byte {
					for _, f := range []header.TCPFlags{header.TCPFlagAck, header.TCPFlagSyn, header.TCPFlagSyn | header.TCPFlagAck | header.TCPFlagFin, header.TCPFlagRst | header.TCPFlagAck} {
						c.outboundAt(tcpPacket(vip, client, f, iss, isn+1, tcpOpts{ts: true, tsval: 700, tsecr: 300}), 10*ms)
					}
					if len(c.cur) != 0 {
						t.Fatalf("%d handshakes recorded from segments that are no SYN-ACK", len(c.cur))
					}
					p := synAck(700, 300)
					c.outboundAt(p, 1010*ms)
					return p
				}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					var c synAckClock
					p := tc.run(&c)
					if !tcpChecksumValid(p) {
						t.Fatalf("TCP checksum wrong after the clock: % x", p)
					}
					if tc.unchanged {
						if !bytes.Equal(p, tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, iss, isn+1, tcpOpts{})) {
							t.Fatalf("changed: % x", p)
						}
						return
					}
					if tsval, tsecr := timestamps(p); tsval != tc.tsval || tsecr != tc.tsecr {
						t.Fatalf("TSval %d, TSecr %d; want %d, %d", tsval, tsecr, tc.tsval, tc.tsecr)
					}
				})
			}
		})
	}
}

// TestSynAckClockAnswer: the stack's bare ACK to a client's SYN sent again
// leaves as the SYN-ACK again, timestamps mended; any other bare ACK, and
// one after the SYN's answer, is left as it is.
func TestSynAckClockAnswer(t *testing.T) {
	const ms = int64(time.Millisecond)
	for _, fam := range synAckFamilies {
		vip, client := fam.vip, fam.client
		const isn, iss = 1000, 5000
		synAck := func(o tcpOpts) []byte {
			return tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, iss, isn+1, o)
		}
		syn := func(o tcpOpts) []byte { return tcpPacket(client, vip, header.TCPFlagSyn, isn, 0, o) }
		// bareACK is gVisor's answer to a SYN sent again, in a buffer that
		// holds any packet, as the link's do.
		bareACK := func(seq uint32) []byte {
			p := tcpPacket(vip, client, header.TCPFlagAck, seq, isn+1, tcpOpts{noMSS: true, ts: true, tsval: 777, tsecr: 1300})
			return append(make([]byte, 0, 1500), p...)
		}
		ts := tcpOpts{ts: true, tsval: 700, tsecr: 300}
		// synAgain: the SYN-ACK sent, and the client's SYN sent again.
		synAgain := func(_ *testing.T, c *synAckClock) {
			c.outboundAt(synAck(ts), 10*ms)
			c.inbound(syn(tcpOpts{ts: true, tsval: 1300}))
		}
		t.Run(fam.name, func(t *testing.T) {
			for _, tc := range []struct {
				name  string
				setup func(t *testing.T, c *synAckClock)
				send  []byte // what the stack sends then (at 1010 ms), in its buffer
				want  []byte // the packet after the clock; nil: left as it was
			}{
				{name: "answered with the SYN-ACK", setup: synAgain, send: bareACK(iss + 1),
					want: synAck(tcpOpts{ts: true, tsval: 700 + 1000, tsecr: 1300})},
				{name: "answered once per SYN", send: bareACK(iss + 1), setup: func(t *testing.T, c *synAckClock) {
					synAgain(t, c)
					c.outboundAt(bareACK(iss+1), 1000*ms)
				}},
				{name: "and again for the next SYN", send: bareACK(iss + 1), want: synAck(tcpOpts{ts: true, tsval: 700 + 1000, tsecr: 3300}),
					setup: func(t *testing.T, c *synAckClock) {
						synAgain(t, c)
						c.outboundAt(bareACK(iss+1), 500*ms)
						c.inbound(syn(tcpOpts{ts: true, tsval: 3300}))
					}},
				{name: "without timestamps, as first sent", send: bareACK(iss + 1), want: synAck(tcpOpts{}),
					setup: func(_ *testing.T, c *synAckClock) {
						c.outboundAt(synAck(tcpOpts{}), 10*ms)
						c.inbound(syn(tcpOpts{}))
					}},
				{name: "no SYN sent again", send: bareACK(iss + 1), setup: func(_ *testing.T, c *synAckClock) { c.outboundAt(synAck(ts), 10*ms) }},
				{name: "another sequence number: not the handshake's answer", setup: synAgain, send: bareACK(iss + 2)},
				{name: "data is no answer", setup: synAgain,
					send: append(make([]byte, 0, 1500), tcpPacket(vip, client, header.TCPFlagAck, iss+1, isn+1, tcpOpts{noMSS: true, ts: true, tsval: 777, tsecr: 1300, data: []byte("x")})...)},
				{name: "a buffer too small for the SYN-ACK", setup: synAgain, send: slices.Clip(bareACK(iss + 1))},
				{name: "forgotten after two generations", send: bareACK(iss + 1), setup: func(t *testing.T, c *synAckClock) {
					c.outboundAt(synAck(ts), -9000*ms)
					c.inbound(syn(tcpOpts{ts: true, tsval: 1300}))
					c.outboundAt(tcpPacket(vip, client, header.TCPFlagAck|header.TCPFlagPsh, 1, 2, tcpOpts{}), -5000*ms) // the generation before now
					c.outboundAt(tcpPacket(vip, client, header.TCPFlagAck|header.TCPFlagPsh, 1, 2, tcpOpts{}), -500*ms)  // forgotten
					if n := c.pending.Load(); n != 0 {
						t.Fatalf("%d SYNs await an answer after two generations", n)
					}
				}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					var c synAckClock
					tc.setup(t, &c)
					before := slices.Clone(tc.send)
					after := tc.send[:c.outboundAt(tc.send, 1010*ms)]
					want := tc.want
					if want == nil {
						want = before
					}
					if !bytes.Equal(after, want) {
						t.Fatalf("got  % x\nwant % x", after, want)
					}
				})
			}
		})
	}
}

// TestSynAckClockBounded: at most synAckMax handshakes are recorded per
// generation; the next is retransmitted as gVisor built it.
func TestSynAckClockBounded(t *testing.T) {
	var c synAckClock
	vip := netip.MustParseAddrPort("10.100.0.5:80")
	synAck := func(i int) []byte {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{169, 254, byte(i >> 8), byte(i)}), 40000)
		return tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, 5000, 1001, tcpOpts{ts: true, tsval: 700, tsecr: 300})
	}
	for i := range synAckMax + 1 {
		c.outboundAt(synAck(i), 1)
	}
	if len(c.cur) != synAckMax {
		t.Fatalf("%d handshakes recorded, want %d", len(c.cur), synAckMax)
	}
	last, first := synAck(synAckMax), synAck(0)
	c.outboundAt(last, int64(time.Second))
	c.outboundAt(first, int64(time.Second))
	if v, _ := timestamps(last); v != 700 {
		t.Fatalf("the handshake beyond the bound was mended: TSval %d", v)
	}
	if v, _ := timestamps(first); v != 700+999 {
		t.Fatalf("a recorded handshake's retransmission has TSval %d, want %d", v, 700+999)
	}
}

// TestSynAckClockMalformed: segments cut short or with broken options are
// left as they are, without a panic.
func TestSynAckClockMalformed(t *testing.T) {
	vip, client := netip.MustParseAddrPort("10.100.0.5:80"), netip.MustParseAddrPort("169.254.0.7:40000")
	good := tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, 5000, 1001, tcpOpts{ts: true, tsval: 700, tsecr: 300})
	var c synAckClock
	c.outboundAt(slices.Clone(good), 0)
	for name, mangle := range map[string]func([]byte) []byte{
		"cut in the options":    func(p []byte) []byte { return p[:len(p)-3] },
		"cut in the header":     func(p []byte) []byte { return p[:30] },
		"option length 0":       func(p []byte) []byte { p[20+20+6+1] = 0; return p },
		"option past the end":   func(p []byte) []byte { p[20+20+6+1] = 40; return p },
		"data offset too big":   func(p []byte) []byte { p[20+12] = 15 << 4; return p },
		"data offset too short": func(p []byte) []byte { p[20+12] = 4 << 4; return p },
		"fragment":              func(p []byte) []byte { p[6] = 0x20; return p },
		"not IP":                func(p []byte) []byte { p[0] = 0x55; return p },
	} {
		p := mangle(slices.Clone(good))
		want := slices.Clone(p)
		c.outboundAt(p, int64(time.Second))
		c.inbound(p)
		if !bytes.Equal(p, want) {
			t.Errorf("%s: changed to % x", name, p)
		}
	}
}

// acceptHandler accepts every TCP connection and hands it to the test.
type acceptHandler struct {
	echoEnder
	conns chan *TCPConn
}

func (h acceptHandler) HandleTCP(req *TCPRequest) {
	if c, err := req.Accept(); err == nil {
		h.conns <- c
	}
}

// waitSegments waits up to within for n segments among those the stack
// sent (out) that answer the client's handshake of initial sequence number
// isn, with flags (the SYN, ACK, RST and FIN bits) among flags, and
// returns them all.
func waitSegments(t *testing.T, out *capture, isn uint32, n int, within time.Duration, flags ...header.TCPFlags) [][]byte {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var got [][]byte
		for _, p := range out.all() {
			for _, f := range flags {
				if s, ok := parseTCPSeg(p, f, true); ok && s.key.isn == isn {
					got = append(got, p)
					break
				}
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d segments in %v, want %d", len(got), within, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestSynAckRetransmitRTT: a client whose SYN-ACK was lost, and the
// answer to its SYN sent again too (TestSynAgainAnswered). gVisor sends it
// again a second after the first; the link gives it a TSval of that moment
// and echoes the client's SYN sent again in between, so the client's ACK
// echoes a TSval of a round trip ago and gVisor's first sample of the
// round trip is that, not the second and more since its first SYN-ACK
// (which made its retransmission timeout some 3 s).
func TestSynAckRetransmitRTT(t *testing.T) {
	out := &capture{}
	h := acceptHandler{conns: make(chan *TCPConn, 1)}
	_, l := newTestLink(t, Config{Handler: h}, out)
	client, vip := netip.MustParseAddrPort("192.0.2.7:40000"), netip.MustParseAddrPort("10.100.0.5:80")
	const isn = 1000
	synAcks := func(n int) [][]byte {
		t.Helper()
		return waitSegments(t, out, isn, n, 5*time.Second, header.TCPFlagSyn|header.TCPFlagAck)
	}
	l.Deliver(tcpPacket(client, vip, header.TCPFlagSyn, isn, 0, tcpOpts{ts: true, tsval: 100}))
	first := synAcks(1)[0]
	time.Sleep(300 * time.Millisecond) // the client's SYN timer fired first: its SYN again, a newer TSval
	l.Deliver(tcpPacket(client, vip, header.TCPFlagSyn, isn, 0, tcpOpts{ts: true, tsval: 400}))
	second := synAcks(3)[2] // [1]: the answer to the SYN sent again, lost
	tsval1, _ := timestamps(first)
	tsval2, tsecr2 := timestamps(second)
	if d := tsval2 - tsval1; d < 900 || d > 5000 || tsecr2 != 400 || !tcpChecksumValid(second) {
		t.Fatalf("the retransmitted SYN-ACK has TSval %d ms after the first's and TSecr %d (checksum valid %v); want about 1000 ms and 400",
			d, tsecr2, tcpChecksumValid(second))
	}
	iss := binary.BigEndian.Uint32(second[20+4:])
	l.Deliver(tcpPacket(client, vip, header.TCPFlagAck, isn+1, iss+1, tcpOpts{ts: true, tsval: 500, tsecr: tsval2}))
	var c *TCPConn
	select {
	case c = <-h.conns:
	case <-time.After(5 * time.Second):
		t.Fatal("the handshake did not complete")
	}
	defer c.Close()
	var info tcpip.TCPInfoOption
	if err := c.ep.GetSockOpt(&info); err != nil {
		t.Fatal(err)
	}
	if info.RTT > 500*time.Millisecond {
		t.Fatalf("gVisor's first round-trip sample is %v (RTO %v): the stale TSval of the first SYN-ACK", info.RTT, info.RTO)
	}
	t.Logf("round trip %v, RTO %v", info.RTT, info.RTO)
}

// FuzzSynAckClock: whatever the bytes, the clock leaves a packet as it
// was unless it is a SYN-ACK with timestamps sent again, and then changes
// only the timestamps and the checksum, which stays valid when it was.
func FuzzSynAckClock(f *testing.F) {
	vip, client := netip.MustParseAddrPort("10.100.0.5:80"), netip.MustParseAddrPort("169.254.0.7:40000")
	vip6, client6 := netip.MustParseAddrPort("[2001:db8:100::5]:80"), netip.MustParseAddrPort("[2001:db8:1::7]:40000")
	f.Add(tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, 5000, 1001, tcpOpts{ts: true, tsval: 700, tsecr: 300}))
	f.Add(tcpPacket(vip6, client6, header.TCPFlagSyn|header.TCPFlagAck, 5000, 1001, tcpOpts{ts: true, tsval: 700, tsecr: 300}))
	f.Add(tcpPacket(client, vip, header.TCPFlagSyn, 1000, 0, tcpOpts{ts: true, tsval: 300}))
	f.Add(tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, 5000, 1001, tcpOpts{}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c synAckClock
		p := slices.Clone(data)
		c.outboundAt(p, 0)
		c.inbound(p)
		if !bytes.Equal(p, data) {
			t.Fatalf("a first SYN-ACK or a SYN was changed: % x", p)
		}
		c.outboundAt(p, int64(1500*time.Millisecond))
		if bytes.Equal(p, data) {
			return
		}
		s, ok := parseTCPSeg(data, header.TCPFlagSyn|header.TCPFlagAck, true)
		if !ok || s.ts == 0 {
			t.Fatalf("changed a packet that is no SYN-ACK with timestamps: % x", data)
		}
		h, _ := parseIP(data)
		sum := h.hdrLen + 16
		for i := range p {
			if p[i] != data[i] && (i < s.ts || i >= s.ts+8) && i != sum && i != sum+1 {
				t.Fatalf("byte %d changed, beyond the timestamps (%d) and the checksum (%d)", i, s.ts, sum)
			}
		}
		if tcpChecksumValid(data) && !tcpChecksumValid(p) {
			t.Fatal("a valid checksum made invalid")
		}
	})
}

// FuzzSynAckAnswer: with a client's SYN sent again awaiting its answer,
// whatever the stack sends leaves as it was or, when it is the bare ACK of
// that handshake, as the SYN-ACK again; never anything else.
func FuzzSynAckAnswer(f *testing.F) {
	vip, client := netip.MustParseAddrPort("10.100.0.5:80"), netip.MustParseAddrPort("169.254.0.7:40000")
	const isn, iss = 1000, 5000
	synAck := tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, iss, isn+1, tcpOpts{ts: true, tsval: 700, tsecr: 300})
	again := tcpPacket(vip, client, header.TCPFlagSyn|header.TCPFlagAck, iss, isn+1, tcpOpts{ts: true, tsval: 700 + 1000, tsecr: 1300})
	f.Add(tcpPacket(vip, client, header.TCPFlagAck, iss+1, isn+1, tcpOpts{noMSS: true, ts: true, tsval: 777, tsecr: 1300}))
	f.Add(tcpPacket(vip, client, header.TCPFlagAck, iss+1, isn+1, tcpOpts{noMSS: true}))
	f.Add(tcpPacket(vip, client, header.TCPFlagAck, iss+1, isn+1, tcpOpts{noMSS: true, data: []byte("x")}))
	f.Add(tcpPacket(vip, netip.MustParseAddrPort("169.254.0.7:40001"), header.TCPFlagAck, iss+1, isn+1, tcpOpts{noMSS: true}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c synAckClock
		c.outboundAt(slices.Clone(synAck), 0)
		c.inbound(tcpPacket(client, vip, header.TCPFlagSyn, isn, 0, tcpOpts{ts: true, tsval: 1300}))
		p := append(make([]byte, 0, len(data)+len(synAck)), data...)
		got := p[:c.outboundAt(p, int64(time.Second))]
		if bytes.Equal(got, data) {
			return
		}
		if !bytes.Equal(got, again) {
			t.Fatalf("changed into % x, neither as it was nor the SYN-ACK", got)
		}
		s, ok := parseTCPSeg(data, header.TCPFlagAck, true)
		h, _ := parseIP(data)
		if !ok || s.key != (synAckKey{local: vip.Addr(), remote: client.Addr(), lport: vip.Port(), rport: client.Port(), isn: isn}) ||
			binary.BigEndian.Uint32(h.l4[4:8]) != iss+1 || int(h.l4[12]>>4)*4 != len(h.l4) {
			t.Fatalf("% x, no bare ACK of the handshake, was answered", data)
		}
		if p := append(make([]byte, 0, 1500), data...); c.outboundAt(p, int64(time.Second)) != len(data) || !bytes.Equal(p, data) {
			t.Fatal("the SYN sent again was answered twice")
		}
	})
}

// BenchmarkSynAckClockData: what the clock costs every other packet the
// stack sends (a data segment: a few comparisons), and a SYN-ACK.
func BenchmarkSynAckClock(b *testing.B) {
	vip, client := netip.MustParseAddrPort("10.100.0.5:80"), netip.MustParseAddrPort("169.254.0.7:40000")
	for _, bc := range []struct {
		name  string
		flags header.TCPFlags
	}{{"data", header.TCPFlagAck | header.TCPFlagPsh}, {"synack", header.TCPFlagSyn | header.TCPFlagAck}} {
		b.Run(bc.name, func(b *testing.B) {
			var c synAckClock
			p := tcpPacket(vip, client, bc.flags, 5000, 1001, tcpOpts{ts: true, tsval: 700, tsecr: 300})
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				binary.BigEndian.PutUint16(p[22:24], uint16(i)) // another handshake each time
				c.outboundAt(p, int64(i))
			}
		})
	}
}

// TestSynAgainAnswered: a client whose SYN-ACK was lost sends its SYN
// again; gVisor, in SYN-RCVD, answers it with a bare ACK, which a client
// in SYN-SENT drops. The link sends the SYN-ACK again in its place (as
// Linux answers a SYN sent again), with a TSval of the moment and the new
// SYN's TSval as TSecr, so the handshake completes a round trip later
// instead of at gVisor's next retransmission a second or more later.
func TestSynAgainAnswered(t *testing.T) {
	for _, tc := range []struct {
		name        string
		client, vip netip.AddrPort
	}{
		{"IPv4", netip.MustParseAddrPort("192.0.2.7:40000"), netip.MustParseAddrPort("10.100.0.5:80")},
		{"IPv6", netip.MustParseAddrPort("[2001:db8:1::7]:40000"), netip.MustParseAddrPort("[2001:db8:100::5]:80")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &capture{}
			h := acceptHandler{conns: make(chan *TCPConn, 1)}
			_, l := newTestLink(t, Config{Handler: h}, out)
			const isn = 1000
			replies := func(n int) [][]byte {
				t.Helper()
				return waitSegments(t, out, isn, n, 2*time.Second, header.TCPFlagSyn|header.TCPFlagAck, header.TCPFlagAck)
			}
			l.Deliver(tcpPacket(tc.client, tc.vip, header.TCPFlagSyn, isn, 0, tcpOpts{ts: true, tsval: 100}))
			first := replies(1)[0]
			time.Sleep(50 * time.Millisecond)
			sent := time.Now()
			l.Deliver(tcpPacket(tc.client, tc.vip, header.TCPFlagSyn, isn, 0, tcpOpts{ts: true, tsval: 150}))
			second := replies(2)[1]
			took := time.Since(sent)
			h1, _ := parseIP(first)
			h2, _ := parseIP(second)
			if header.TCPFlags(h2.l4[13]) != header.TCPFlagSyn|header.TCPFlagAck || took > 500*time.Millisecond {
				t.Fatalf("a SYN sent again was answered by flags %v after %v, want a SYN-ACK at once", header.TCPFlags(h2.l4[13]), took)
			}
			if !bytes.Equal(h1.l4[4:8], h2.l4[4:8]) || !bytes.Equal(h1.l4[8:12], h2.l4[8:12]) || !tcpChecksumValid(second) {
				t.Fatalf("the SYN-ACK sent again: seq/ack % x, want the first's % x; checksum valid %v", h2.l4[4:12], h1.l4[4:12], tcpChecksumValid(second))
			}
			tsval1, _ := timestamps(first)
			tsval2, tsecr2 := timestamps(second)
			if d := tsval2 - tsval1; d < 40 || d > 1000 || tsecr2 != 150 {
				t.Fatalf("the SYN-ACK sent again has TSval %d ms after the first's and TSecr %d; want about 50 ms and 150", d, tsecr2)
			}
			if n := l.ns.Stats().TCPSynAgain; n != 1 {
				t.Errorf("TCPSynAgain %d, want 1", n)
			}
			iss := binary.BigEndian.Uint32(h2.l4[4:8])
			l.Deliver(tcpPacket(tc.client, tc.vip, header.TCPFlagAck, isn+1, iss+1, tcpOpts{ts: true, tsval: 160, tsecr: tsval2}))
			select {
			case c := <-h.conns:
				c.Close()
			case <-time.After(2 * time.Second):
				t.Fatal("the handshake did not complete")
			}
		})
	}
}
