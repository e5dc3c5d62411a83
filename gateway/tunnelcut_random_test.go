package gateway

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/internal/testseed"
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// tunnelCutSeedEnv replays a TestTunnelCutRandom run:
// ZTGATE_TUNNELCUT_SEED=<seed>.
const tunnelCutSeedEnv = "ZTGATE_TUNNELCUT_SEED"

// TestTunnelCutRandom drives random TCP super-packets, as gVisor hands
// them to the tunnel link (partial checksum, up to 64 KiB, TCP options,
// IPv4 options now and then, every flag TCP segmentation treats apart),
// and plain UDP, ICMP and TCP packets between them, through the tunnel
// link's Output to two direct agents and one behind a relay, each with a
// random datagram size the MSS was chosen for. What each agent receives is
// checked against a reference built here from scratch, as Linux's TCP
// segmentation (tcp_gso_segment) cuts a super-packet: every datagram within
// the session's size, the agent's address put back, IPv4 header and TCP/UDP
// checksums valid when computed whole, sequence numbers advancing by the
// payload before, IPv4 identifiers by one, CWR on the first segment only,
// FIN and PSH on the last only, every other header byte as it came, the
// payloads concatenated the super-packet's, nothing lost, duplicated or
// reordered.
func TestTunnelCutRandom(t *testing.T) {
	seed := testseed.Get(t, tunnelCutSeedEnv)
	rng := rand.New(rand.NewPCG(seed, seed^0x7c17c17c))

	f := newOutputFixture(t)
	type agent struct {
		in     *ingress
		got    chanSender
		tagged bool
	}
	var agents []*agent
	for i := range 2 {
		c := make(chanSender, 4096)
		agents = append(agents, &agent{in: f.add(t, fmt.Sprintf("laptop%d", i), c), got: c})
	}
	{
		c := make(chanSender, 4096)
		out := f.g.relayOutbox(c)
		t.Cleanup(out.Close)
		agents = append(agents, &agent{in: f.addTag(t, 9, out), got: c, tagged: true})
	}
	vips := []netip.Addr{netip.MustParseAddr("10.100.0.20"), netip.MustParseAddr("10.100.0.21")}

	const steps = 300
	for step := range steps {
		a := agents[rng.IntN(len(agents))]
		// The datagram size of the agent's session, and the MSS gVisor
		// chose for it (the link's MTU follows the sessions'; a smaller
		// MSS when the agent announced one, or a path MTU, now and then
		// below the headers).
		limit := 576 + rng.IntN(1452-576+1)
		overhead := 0
		if a.tagged {
			overhead = tunnel.TagReturnOverhead
		}
		src := netip.AddrPortFrom(vips[rng.IntN(len(vips))], uint16(80+rng.IntN(3)))
		dstPort := uint16(40000 + rng.IntN(4))
		var sent [][]byte // what the agent must receive, in order, as IP packets
		what := ""
		switch r := rng.IntN(10); {
		case r < 7: // a super-packet
			ipOpts, tcpOpts := randIPOptions(rng), randTCPOptions(rng)
			hdrLen := 20 + len(ipOpts) + 20 + len(tcpOpts)
			mss := limit - overhead - hdrLen
			switch rng.IntN(6) {
			case 0:
				mss -= rng.IntN(200) // the agent announced less
			case 1:
				mss = 1 + rng.IntN(100) // tiny: below the headers, or not far above
			}
			size := randPayloadSize(rng, mss)
			pl := make([]byte, size)
			for i := range pl {
				pl[i] = byte(rng.Uint32())
			}
			seg := cutSegment{
				src: src, dst: netip.AddrPortFrom(a.in.synth, dstPort),
				ipOpts: ipOpts, tcpOpts: tcpOpts,
				id: uint16(rng.Uint32()), df: rng.IntN(4) != 0, tos: uint8(rng.IntN(4)) << 2, ttl: uint8(1 + rng.IntN(255)),
				seq: rng.Uint32(), ack: rng.Uint32(), wnd: uint16(rng.Uint32()),
				flags: tcpACK | randBits(rng, tcpPSH, tcpFIN, tcpCWR, tcpECE),
			}
			if rng.IntN(8) == 0 {
				seg.seq = -uint32(rng.IntN(3 * mss)) // the sequence number wraps within the packet
			}
			if rng.IntN(8) == 0 {
				seg.id = -uint16(1 + rng.IntN(3)) // so does the identifier
			}
			super := seg.build(pl, true)
			what = fmt.Sprintf("super-packet of %d payload bytes, MSS %d, headers %d, flags %#x, datagrams of %d", size, mss, hdrLen, seg.flags, limit)
			want := seg.cut(pl, mss, agentInner)
			if err := f.out.WriteGSO(super, netstack.GSO{L3Len: 20 + len(ipOpts), HdrLen: hdrLen, MSS: mss}); err != nil {
				t.Fatalf("step %d: %s: %v", step, what, err)
			}
			sent = want
		default: // packets that are no super-packets, a few in one batch
			n := 1 + rng.IntN(4)
			var batch [][]byte
			for range n {
				p, w := randPlainPacket(rng, src, netip.AddrPortFrom(a.in.synth, dstPort), limit-overhead)
				batch = append(batch, p)
				sent = append(sent, w)
			}
			what = fmt.Sprintf("%d plain packets, datagrams of %d", n, limit)
			f.out.WritePackets(batch)
		}
		for k, w := range sent {
			var d []byte
			select {
			case d = <-a.got:
			case <-time.After(5 * time.Second):
				t.Fatalf("step %d: %s: %d of %d packets received (drops: %v)", step, what, k, len(sent), tunnelDrops(f))
			}
			if len(d) > limit {
				t.Fatalf("step %d: %s: packet %d of %d in a datagram of %d bytes, the session takes %d", step, what, k, len(sent), len(d), limit)
			}
			if a.tagged {
				tag, p, err := tunnel.ParseTagReturn(d)
				if err != nil || tag != a.in.tag {
					t.Fatalf("step %d: %s: packet %d to a relayed agent: tag %d, %v", step, what, k, tag, err)
				}
				d = p
			}
			if err := sameCutPacket(d, w); err != nil {
				t.Fatalf("step %d: %s: packet %d of %d: %v\n got % x\nwant % x", step, what, k, len(sent), err, d[:min(len(d), 80)], w[:min(len(w), 80)])
			}
		}
		for _, o := range agents {
			select {
			case d := <-o.got:
				t.Fatalf("step %d: %s: a datagram more than the reference: % x", step, what, d[:min(len(d), 64)])
			default:
			}
		}
	}
	if d := tunnelDrops(f); len(d) != 0 {
		t.Errorf("drops: %v", d)
	}
}

// tunnelDrops returns the gateway's tunnel drops by reason, those counted.
func tunnelDrops(f *outputFixture) map[string]float64 {
	m := map[string]float64{}
	for _, r := range []string{"malformed_out", "no_ingress", "outbox_full", "outbox_budget", "send_error"} {
		if n := testutil.ToFloat64(f.g.m.dropped.WithLabelValues(r)); n != 0 {
			m[r] = n
		}
	}
	return m
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpECE = 0x40
	tcpCWR = 0x80
)

// randBits returns each of bits with even odds, or'ed.
func randBits(rng *rand.Rand, bits ...uint8) uint8 {
	var b uint8
	for _, x := range bits {
		if rng.IntN(2) == 0 {
			b |= x
		}
	}
	return b
}

// randPayloadSize draws a super-packet's payload size: the edges around
// one and several segments more often than the rest.
func randPayloadSize(rng *rand.Rand, mss int) int {
	most := 65535 - 120
	if mss < 200 {
		most = 900 // a tiny MSS makes many segments; keep the step small
	}
	var n int
	switch rng.IntN(8) {
	case 0:
		n = rng.IntN(2) // 0 or 1
	case 1:
		n = mss - 1 + rng.IntN(3)
	case 2:
		n = (1+rng.IntN(most/mss+1))*mss - 1 + rng.IntN(3)
	case 3:
		n = most
	default:
		n = rng.IntN(most + 1)
	}
	return max(0, min(n, most))
}

// randIPOptions returns no IPv4 options mostly, else a few that Linux
// copies into every segment.
func randIPOptions(rng *rand.Rand) []byte {
	switch rng.IntN(8) {
	case 0:
		return []byte{148, 4, 0, 0} // router alert
	case 1:
		o := make([]byte, 4*(1+rng.IntN(10)))
		for i := range o {
			o[i] = 1 // NOP
		}
		o[len(o)-1] = 0 // EOL
		return o
	}
	return nil
}

// randTCPOptions returns TCP options as gVisor sends them on an
// established connection: none, timestamps, SACK blocks, or both.
func randTCPOptions(rng *rand.Rand) []byte {
	var o []byte
	if rng.IntN(2) == 0 {
		o = append(o, 1, 1, 8, 10)
		o = binary.BigEndian.AppendUint32(o, rng.Uint32())
		o = binary.BigEndian.AppendUint32(o, rng.Uint32())
	}
	if rng.IntN(3) == 0 {
		n := 1 + rng.IntN(3)
		o = append(o, 1, 1, 5, byte(2+8*n))
		for range 2 * n {
			o = binary.BigEndian.AppendUint32(o, rng.Uint32())
		}
	}
	return o
}

// cutSegment is what the reference knows of a super-packet: its headers'
// fields.
type cutSegment struct {
	src, dst        netip.AddrPort
	ipOpts, tcpOpts []byte
	id              uint16
	df              bool
	tos, ttl        uint8
	seq, ack        uint32
	wnd             uint16
	flags           uint8
}

// build returns the IPv4 packet of s with payload pl; partial leaves in
// the TCP checksum field what gVisor leaves there in a super-packet (the
// pseudo-header's sum, or anything: no one reads it), else the checksum.
func (s cutSegment) build(pl []byte, partial bool) []byte {
	ihl := 20 + len(s.ipOpts)
	thl := 20 + len(s.tcpOpts)
	b := make([]byte, ihl+thl+len(pl))
	b[0] = 0x40 | byte(ihl/4)
	b[1] = s.tos
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], s.id)
	if s.df {
		b[6] = 0x40
	}
	b[8] = s.ttl
	b[9] = 6
	sa, da := s.src.Addr().As4(), s.dst.Addr().As4()
	copy(b[12:], sa[:])
	copy(b[16:], da[:])
	copy(b[20:], s.ipOpts)
	binary.BigEndian.PutUint16(b[10:], ^irSum(b[:ihl], 0))
	tcp := b[ihl:]
	binary.BigEndian.PutUint16(tcp[0:], s.src.Port())
	binary.BigEndian.PutUint16(tcp[2:], s.dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], s.seq)
	binary.BigEndian.PutUint32(tcp[8:], s.ack)
	tcp[12] = byte(thl/4) << 4
	tcp[13] = s.flags
	binary.BigEndian.PutUint16(tcp[14:], s.wnd)
	copy(tcp[20:], s.tcpOpts)
	copy(tcp[thl:], pl)
	if partial {
		binary.BigEndian.PutUint16(tcp[16:], uint16(len(pl)*7)) // not a checksum
	} else {
		binary.BigEndian.PutUint16(tcp[16:], ^irSum(tcp, uint32(pseudoSum(sa, da, 6, len(tcp)))))
	}
	return b
}

// cut is the reference: the segments Linux's TCP segmentation makes of
// the super-packet s with payload pl, addressed to the agent's address.
func (s cutSegment) cut(pl []byte, mss int, inner netip.Addr) [][]byte {
	n := max((len(pl)+mss-1)/mss, 1)
	var out [][]byte
	for k := range n {
		c := s
		c.dst = netip.AddrPortFrom(inner, s.dst.Port())
		c.seq = s.seq + uint32(k*mss)
		c.id = s.id + uint16(k)
		if k > 0 {
			c.flags &^= tcpCWR
		}
		if k < n-1 {
			c.flags &^= tcpFIN | tcpPSH
		}
		out = append(out, c.build(pl[k*mss:min((k+1)*mss, len(pl))], false))
	}
	return out
}

// randPlainPacket returns a packet that the link writes as it is (UDP,
// with or without a checksum; an ICMP echo reply; a TCP segment of at most
// one MSS) from src to dst, and the packet the agent must receive: the
// same to the agent's address.
func randPlainPacket(rng *rand.Rand, src, dst netip.AddrPort, mtu int) (pkt, want []byte) {
	inner := netip.AddrPortFrom(agentInner, dst.Port())
	switch rng.IntN(3) {
	case 0:
		pl := randBytes(rng, rng.IntN(mtu-28+1))
		noSum := rng.IntN(4) == 0
		return plainUDP(src, dst, pl, noSum), plainUDP(src, inner, pl, noSum)
	case 1:
		pl := randBytes(rng, rng.IntN(min(mtu-28, 200)+1))
		id, seq := uint16(rng.Uint32()), uint16(rng.Uint32())
		return plainICMPEchoReply(src.Addr(), dst.Addr(), id, seq, pl), plainICMPEchoReply(src.Addr(), inner.Addr(), id, seq, pl)
	default:
		opts := randTCPOptions(rng)
		pl := randBytes(rng, rng.IntN(mtu-40-len(opts)+1))
		s := cutSegment{src: src, dst: dst, tcpOpts: opts, id: uint16(rng.Uint32()), df: true, ttl: 64,
			seq: rng.Uint32(), ack: rng.Uint32(), wnd: 512, flags: tcpACK | randBits(rng, tcpPSH, tcpFIN, tcpCWR, tcpECE)}
		w := s
		w.dst = inner
		return s.build(pl, false), w.build(pl, false)
	}
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// plainIPv4 wraps an encoded transport payload in an IPv4 header.
func plainIPv4(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	b := make([]byte, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], 0x1234)
	b[8] = 64
	b[9] = proto
	sa, da := src.As4(), dst.As4()
	copy(b[12:], sa[:])
	copy(b[16:], da[:])
	binary.BigEndian.PutUint16(b[10:], ^irSum(b[:20], 0))
	copy(b[20:], l4)
	return b
}

func plainUDP(src, dst netip.AddrPort, pl []byte, noSum bool) []byte {
	u := make([]byte, 8+len(pl))
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], pl)
	if !noSum {
		c := ^irSum(u, uint32(pseudoSum(src.Addr().As4(), dst.Addr().As4(), 17, len(u))))
		if c == 0 {
			c = 0xffff // RFC 768: a computed zero is sent as all ones
		}
		binary.BigEndian.PutUint16(u[6:], c)
	}
	return plainIPv4(src.Addr(), dst.Addr(), 17, u)
}

func plainICMPEchoReply(src, dst netip.Addr, id, seq uint16, pl []byte) []byte {
	m := make([]byte, 8+len(pl))
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	copy(m[8:], pl)
	binary.BigEndian.PutUint16(m[2:], ^irSum(m, 0))
	return plainIPv4(src, dst, 1, m)
}

// pseudoSum is the sum of the IPv4 pseudo-header of a transport segment
// of n bytes.
func pseudoSum(src, dst [4]byte, proto uint8, n int) uint16 {
	var p [12]byte
	copy(p[0:], src[:])
	copy(p[4:], dst[:])
	p[9] = proto
	binary.BigEndian.PutUint16(p[10:], uint16(n))
	return irSum(p[:], 0)
}

// sameCutPacket checks that got is the IPv4 packet want, its checksums
// valid when computed whole (each may differ from want's in how it writes
// zero: 0x0000 against 0xffff, both valid for TCP and ICMP).
func sameCutPacket(got, want []byte) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d bytes, want %d", len(got), len(want))
	}
	if len(got) < 20 || got[0]>>4 != 4 {
		return fmt.Errorf("not an IPv4 packet")
	}
	ihl := int(got[0]&0x0f) * 4
	if irSum(got[:ihl], 0) != 0xffff {
		return fmt.Errorf("IPv4 header checksum %#04x invalid", binary.BigEndian.Uint16(got[10:]))
	}
	l4 := got[ihl:]
	sa, da := [4]byte(got[12:16]), [4]byte(got[16:20])
	sumOff := -1
	switch got[9] {
	case 6:
		sumOff = 16
		if irSum(l4, uint32(pseudoSum(sa, da, 6, len(l4)))) != 0xffff {
			return fmt.Errorf("TCP checksum %#04x invalid", binary.BigEndian.Uint16(l4[16:]))
		}
	case 17:
		sumOff = 6
		c := binary.BigEndian.Uint16(l4[6:])
		wc := binary.BigEndian.Uint16(want[ihl+6:])
		if (c == 0) != (wc == 0) {
			return fmt.Errorf("UDP checksum %#04x, want %#04x (zero is none)", c, wc)
		}
		if c != 0 && irSum(l4, uint32(pseudoSum(sa, da, 17, len(l4)))) != 0xffff {
			return fmt.Errorf("UDP checksum %#04x invalid", c)
		}
	case 1:
		sumOff = 2
		if irSum(l4, 0) != 0xffff {
			return fmt.Errorf("ICMP checksum invalid")
		}
	}
	g, w := bytes.Clone(got), bytes.Clone(want)
	for _, b := range [][]byte{g, w} {
		b[10], b[11] = 0, 0
		if sumOff >= 0 {
			b[ihl+sumOff], b[ihl+sumOff+1] = 0, 0
		}
	}
	if !bytes.Equal(g, w) {
		for i := range g {
			if g[i] != w[i] {
				return fmt.Errorf("byte %d is %#02x, want %#02x", i, g[i], w[i])
			}
		}
	}
	return nil
}
