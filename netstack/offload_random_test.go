package netstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ztgate/ztgate/internal/testseed"
)

// TestOffloadRandom checks the TUN offload code against a reference
// written here from Linux's segmentation rules and RFC 793/768/791/8200,
// sharing no code with it (its checksums are summed here byte by byte):
// random IPv4 and IPv6 TCP super-packets (IP options, TCP options, every
// flag, IDs, TTLs, DSCP/ECN, DF, payloads of 0, 1, MSS-1, MSS, MSS+1 bytes
// up to 64 KiB) cut by the Segmenter; random reads of a TUN device with
// virtio-net headers (TCP super-packets taken whole, UDP_SEGMENT runs cut
// into datagrams, single packets with a partial checksum) decoded by
// receiveVirtio; and malformed reads (checksum start or offset out of
// place, GSO size 0, a GSO type for another protocol or IP version,
// unknown types, too many segments, cut short), which must be refused
// (errVirtio: runVirtio counts them) with nothing delivered. Every segment
// or packet is compared byte for byte with the reference's, so lengths,
// header and transport checksums, sequence numbers, IPv4 IDs, flags and
// payloads are all checked. The seed is logged; ZTGATE_OFFLOAD_SEED
// replays one.
func TestOffloadRandom(t *testing.T) {
	seed := testseed.Get(t, "ZTGATE_OFFLOAD_SEED")
	t.Run("segmenter", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(seed, 1))
		for i := range 250 {
			if err := randomSegmenterCase(rng); err != nil {
				t.Fatalf("case %d: %v", i, err)
			}
		}
	})
	t.Run("receive", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(seed, 2))
		scratch := make([]byte, 65535)
		for i := range 400 {
			if err := randomReceiveCase(rng, scratch); err != nil {
				t.Fatalf("case %d: %v", i, err)
			}
		}
	})
	t.Run("malformed", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(seed, 3))
		scratch := make([]byte, 65535)
		for i := range 600 {
			if err := randomMalformedCase(rng, scratch); err != nil {
				t.Fatalf("case %d: %v", i, err)
			}
		}
	})
}

// The reference's own one's complement arithmetic.

func refSum(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func refFold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// refPseudo sums the pseudo-header of a transport segment of n bytes in
// the IP packet p (RFC 793 3.1, RFC 768, RFC 8200 8.1).
func refPseudo(p []byte, proto uint8, n int) uint32 {
	var s uint32
	if p[0]>>4 == 6 {
		s = refSum(p[8:40], 0)
	} else {
		s = refSum(p[12:20], 0)
	}
	return s + uint32(proto) + uint32(n)
}

// refIPv4Checksum sets the header checksum of the IPv4 header h.
func refIPv4Checksum(h []byte) {
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], ^refFold(refSum(h, 0)))
}

// refL4Checksum sets the checksum of the transport segment at l4 in the IP
// packet p, computed whole; a UDP checksum of 0 is sent as 0xffff (RFC 768:
// 0 is "none", which IPv6 does not allow).
func refL4Checksum(p []byte, l4 int, proto uint8) {
	at := l4 + 16
	if proto == protoUDP {
		at = l4 + 6
	}
	p[at], p[at+1] = 0, 0
	c := ^refFold(refSum(p[l4:], refPseudo(p, proto, len(p)-l4)))
	if proto == protoUDP && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(p[at:], c)
}

// refL4Valid reports whether the transport checksum of the segment at l4
// holds, summed from scratch.
func refL4Valid(p []byte, l4 int, proto uint8) bool {
	return refFold(refSum(p[l4:], refPseudo(p, proto, len(p)-l4))) == 0xffff
}

// refPacket is a random IP packet, whole: lengths and checksums right.
type refPacket struct {
	b      []byte
	v6     bool
	proto  uint8
	l4     int // transport header's offset
	hdrLen int // payload's offset
}

// protoTCP is TCP's IP protocol number.
const protoTCP = 6

// TCP flags by bit.
const (
	refFIN = 0x01
	refSYN = 0x02
	refRST = 0x04
	refPSH = 0x08
	refACK = 0x10
	refURG = 0x20
	refECE = 0x40
	refCWR = 0x80
)

// randomPayloadSize draws a payload size around mss (0, 1, MSS-1, MSS,
// MSS+1, multiples of it and one off them, any) of at most limit bytes.
func randomPayloadSize(rng *rand.Rand, mss, limit int) int {
	var n int
	switch rng.IntN(9) {
	case 0:
		n = 0
	case 1:
		n = 1
	case 2:
		n = mss - 1
	case 3:
		n = mss
	case 4:
		n = mss + 1
	case 5:
		n = mss*(1+rng.IntN(8)) + rng.IntN(3) - 1
	case 6:
		n = limit
	default:
		n = rng.IntN(limit + 1)
	}
	return max(0, min(n, limit))
}

// randomPacket builds a random IPv4 or IPv6 packet of proto with
// ipOpts bytes of IPv4 options (a multiple of 4), tcpOpts bytes of TCP
// options and payload bytes, lengths and checksums right.
func randomPacket(rng *rand.Rand, v6 bool, proto uint8, ipOpts, tcpOpts, payload int) refPacket {
	l3 := 20 + ipOpts
	if v6 {
		l3 = 40
	}
	l4len := 8
	if proto != protoUDP {
		l4len = 20 + tcpOpts
	}
	hl := l3 + l4len
	b := make([]byte, hl+payload)
	for i := range b[hl:] {
		b[hl+i] = byte(rng.Uint32())
	}
	if v6 {
		tc := uint32(rng.IntN(256))
		binary.BigEndian.PutUint32(b, 6<<28|tc<<20|rng.Uint32()&0xfffff)
		binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
		b[6] = proto
		b[7] = byte(1 + rng.IntN(255))
		for i := 8; i < 40; i++ {
			b[i] = byte(rng.Uint32())
		}
	} else {
		b[0] = 0x40 | byte(l3/4)
		b[1] = byte(rng.IntN(256)) // DSCP and ECN
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		binary.BigEndian.PutUint16(b[4:], uint16(rng.Uint32()))
		if rng.IntN(2) == 0 {
			b[6] = 0x40 // DF
		}
		b[8] = byte(1 + rng.IntN(255))
		b[9] = proto
		for i := 12; i < 20; i++ {
			b[i] = byte(rng.Uint32())
		}
		for i := 20; i < l3; i++ {
			b[i] = 1 // NOP
		}
		if ipOpts >= 4 && rng.IntN(2) == 0 {
			copy(b[20:], []byte{0x94, 4, 0, 0}) // router alert
		}
		refIPv4Checksum(b[:l3])
	}
	t := b[l3:]
	binary.BigEndian.PutUint16(t[0:], uint16(rng.Uint32()))
	binary.BigEndian.PutUint16(t[2:], uint16(rng.Uint32()))
	if proto == protoUDP {
		binary.BigEndian.PutUint16(t[4:], uint16(len(t)))
	} else {
		binary.BigEndian.PutUint32(t[4:], rng.Uint32())
		binary.BigEndian.PutUint32(t[8:], rng.Uint32())
		t[12] = byte(l4len/4) << 4
		flags := byte(refACK)
		for _, f := range []byte{refFIN, refPSH, refURG, refECE, refCWR} {
			if rng.IntN(3) == 0 {
				flags |= f
			}
		}
		t[13] = flags
		binary.BigEndian.PutUint16(t[14:], uint16(rng.Uint32()))
		if flags&refURG != 0 {
			binary.BigEndian.PutUint16(t[18:], uint16(rng.IntN(payload+1)))
		}
		for i := 20; i < l4len; i++ {
			t[i] = 1 // NOP
		}
		if tcpOpts >= 12 && rng.IntN(2) == 0 {
			copy(t[20:], []byte{1, 1, 8, 10})
			binary.BigEndian.PutUint64(t[24:], rng.Uint64()) // timestamps
		}
	}
	refL4Checksum(b, l3, proto)
	return refPacket{b: b, v6: v6, proto: proto, l4: l3, hdrLen: hl}
}

// refSegments cuts the whole TCP packet p into segments of mss payload
// bytes as Linux's TCP segmentation does (tcp_gso_segment,
// inet_gso_segment, ipv6_gso_segment): headers copied, IP lengths of each
// segment, IPv4 IDs one more each, sequence numbers advanced by the
// payload before, FIN and PSH on the last segment only, CWR on the first
// only, every checksum computed whole.
func refSegments(p refPacket, mss int) [][]byte {
	size := len(p.b) - p.hdrLen
	var segs [][]byte
	for off := 0; off < size || off == 0; off += mss {
		pay := min(mss, size-off)
		last := off+pay >= size
		s := make([]byte, 0, p.hdrLen+pay)
		s = append(s, p.b[:p.hdrLen]...)
		s = append(s, p.b[p.hdrLen+off:p.hdrLen+off+pay]...)
		if p.v6 {
			binary.BigEndian.PutUint16(s[4:], uint16(len(s)-40))
		} else {
			binary.BigEndian.PutUint16(s[2:], uint16(len(s)))
			binary.BigEndian.PutUint16(s[4:], binary.BigEndian.Uint16(p.b[4:])+uint16(len(segs)))
			refIPv4Checksum(s[:p.l4])
		}
		t := s[p.l4:]
		binary.BigEndian.PutUint32(t[4:], binary.BigEndian.Uint32(p.b[p.l4+4:])+uint32(off))
		if off > 0 {
			t[13] &^= refCWR
		}
		if !last {
			t[13] &^= refFIN | refPSH
		}
		refL4Checksum(s, p.l4, p.proto)
		segs = append(segs, s)
		if last {
			break
		}
	}
	return segs
}

// diffPacket names the first difference between got and want, two
// packets of the kind of p, by field.
func diffPacket(got, want []byte, p refPacket) error {
	if bytes.Equal(got, want) {
		return nil
	}
	if len(got) != len(want) {
		return fmt.Errorf("%d bytes, want %d", len(got), len(want))
	}
	i := 0
	for got[i] == want[i] {
		i++
	}
	field := "payload"
	switch {
	case p.v6 && i < 40:
		field = map[bool]string{true: "IPv6 payload length", false: "IPv6 header"}[i == 4 || i == 5]
	case !p.v6 && i < p.l4:
		field = map[int]string{2: "IPv4 total length", 3: "IPv4 total length", 4: "IPv4 ID", 5: "IPv4 ID",
			10: "IPv4 checksum", 11: "IPv4 checksum"}[i]
		if field == "" {
			field = "IPv4 header"
		}
	case i < p.hdrLen:
		o := i - p.l4
		if p.proto == protoUDP {
			field = [4]string{"UDP ports", "UDP ports", "UDP length", "UDP checksum"}[o/2]
		} else {
			switch {
			case o >= 4 && o < 8:
				field = "TCP sequence number"
			case o == 13:
				field = fmt.Sprintf("TCP flags %#x, want %#x", got[i], want[i])
			case o == 16 || o == 17:
				field = "TCP checksum"
			default:
				field = "TCP header"
			}
		}
	}
	return fmt.Errorf("byte %d differs (%s): % x, want % x", i, field, got[i:min(i+4, len(got))], want[i:min(i+4, len(want))])
}

// randomSegmenterCase cuts a random super-packet, as gVisor's TCP hands
// one to a link with GSO (lengths of the whole, the pseudo-header's sum in
// the checksum field), with the Segmenter and compares each segment with
// the reference's.
func randomSegmenterCase(rng *rand.Rand) error {
	v6 := rng.IntN(2) == 0
	ipOpts := 0
	if !v6 && rng.IntN(3) == 0 {
		ipOpts = 4 * (1 + rng.IntN(10))
	}
	tcpOpts := 0
	if rng.IntN(3) > 0 {
		tcpOpts = 4 * rng.IntN(11)
	}
	hl := 20 + ipOpts + 20 + tcpOpts
	if v6 {
		hl = 40 + 20 + tcpOpts
	}
	var mss int
	switch rng.IntN(6) {
	case 0:
		mss = 1 + rng.IntN(hl+8) // around its headers: built out of place
	case 1:
		mss = []int{536, 1220, 1232, 1380, 1440, 1448, 1460}[rng.IntN(7)]
	case 2:
		mss = 1 + rng.IntN(9000)
	default:
		mss = 1 + rng.IntN(1500)
	}
	limit := 65535 - hl // an IPv4 total length; IPv6 the same, as gVisor
	if mss < 64 {
		limit = min(limit, mss*200) // keep the segments' count in bounds
	}
	p := randomPacket(rng, v6, protoTCP, ipOpts, tcpOpts, randomPayloadSize(rng, mss, limit))
	want := refSegments(p, mss)
	b := slices.Clone(p.b)
	binary.BigEndian.PutUint16(b[p.l4+16:], refFold(refPseudo(b, protoTCP, len(b)-p.l4)))
	g := GSO{V6: v6, L3Len: p.l4, HdrLen: p.hdrLen, MSS: mss}
	desc := fmt.Sprintf("v6=%v headers %d+%d, payload %d, MSS %d, flags %#x", v6, p.l4, p.hdrLen-p.l4, len(b)-p.hdrLen, mss, p.b[p.l4+13])
	var s Segmenter
	if !s.Reset(b, g) {
		return fmt.Errorf("%s: refused", desc)
	}
	var payload []byte
	k := 0
	for seg := s.Next(); seg != nil; seg, k = s.Next(), k+1 {
		if k >= len(want) {
			return fmt.Errorf("%s: more than %d segments", desc, len(want))
		}
		// What the reference checks of it, from scratch.
		if !refL4Valid(seg, p.l4, protoTCP) {
			return fmt.Errorf("%s: segment %d: TCP checksum invalid", desc, k)
		}
		if !v6 && refFold(refSum(seg[:p.l4], 0)) != 0xffff {
			return fmt.Errorf("%s: segment %d: IPv4 header checksum invalid", desc, k)
		}
		if err := diffPacket(seg, want[k], p); err != nil {
			return fmt.Errorf("%s: segment %d of %d: %w", desc, k, len(want), err)
		}
		payload = append(payload, seg[p.hdrLen:]...)
	}
	if k != len(want) {
		return fmt.Errorf("%s: %d segments, want %d", desc, k, len(want))
	}
	if !bytes.Equal(payload, p.b[p.hdrLen:]) {
		return fmt.Errorf("%s: the segments' payloads are not the packet's", desc)
	}
	return nil
}

// virtioRead is a TUN read: a virtio-net header and the packet.
func virtioRead(flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOff int, pkt []byte) []byte {
	h := make([]byte, virtioNetHdrLen, virtioNetHdrLen+len(pkt))
	h[0], h[1] = flags, gsoType
	binary.NativeEndian.PutUint16(h[2:], uint16(hdrLen))
	binary.NativeEndian.PutUint16(h[4:], uint16(gsoSize))
	binary.NativeEndian.PutUint16(h[6:], uint16(csumStart))
	binary.NativeEndian.PutUint16(h[8:], uint16(csumOff))
	return append(h, pkt...)
}

// asKernelReads makes p what the kernel hands a TUN reader with
// CHECKSUM_PARTIAL: the transport checksum field holds the pseudo-header's
// sum (over the segment's length, or the first segment's, or garbage: the
// decoder computes it whole), and for a super-packet the IP and UDP length
// fields may be the first segment's.
func asKernelReads(rng *rand.Rand, p refPacket, first int, super bool) []byte {
	b := slices.Clone(p.b)
	at := p.l4 + 16
	if p.proto == protoUDP {
		at = p.l4 + 6
	}
	n := len(b) - p.l4
	if super && rng.IntN(2) == 0 {
		n = p.hdrLen - p.l4 + first
		if p.proto == protoUDP {
			binary.BigEndian.PutUint16(b[p.l4+4:], uint16(n))
		}
		if p.v6 {
			binary.BigEndian.PutUint16(b[4:], uint16(p.hdrLen-40+first))
		} else {
			binary.BigEndian.PutUint16(b[2:], uint16(p.hdrLen+first))
			refIPv4Checksum(b[:p.l4])
		}
	}
	binary.BigEndian.PutUint16(b[at:], refFold(refPseudo(b, p.proto, n)))
	if super && rng.IntN(4) == 0 {
		binary.BigEndian.PutUint16(b[at:], uint16(rng.Uint32()))
	}
	return b
}

// randomReceiveCase decodes a random read and compares what is delivered
// with the reference: a TCP super-packet whole, its lengths and checksums
// those of the whole; a UDP run as its datagrams (Linux's
// __udp_gso_segment: IPv4 IDs one more each, lengths and checksums of
// each); a single packet with its partial checksum completed.
func randomReceiveCase(rng *rand.Rand, scratch []byte) error {
	v6 := rng.IntN(2) == 0
	ipOpts := 0
	if !v6 && rng.IntN(4) == 0 {
		ipOpts = 4 * (1 + rng.IntN(10))
	}
	tcpOpts := 4 * rng.IntN(11)
	var (
		p    refPacket
		in   []byte
		want [][]byte
		desc string
	)
	switch rng.IntN(3) {
	case 0: // a TCP super-packet
		mss := 1 + rng.IntN(9000)
		hl := 20 + ipOpts + 20 + tcpOpts
		if v6 {
			hl = 60 + tcpOpts
		}
		p = randomPacket(rng, v6, protoTCP, ipOpts, tcpOpts, randomPayloadSize(rng, mss, 65535-hl))
		gso := uint8(virtioNetGSOTCPv4)
		if v6 {
			gso = virtioNetGSOTCPv6
		}
		if rng.IntN(3) == 0 {
			gso |= virtioNetGSOECN
		}
		size := len(p.b) - p.hdrLen
		in = virtioRead(virtioNetFNeedsCsum, gso, p.hdrLen, mss, p.l4, 16, asKernelReads(rng, p, min(mss, size), true))
		want = [][]byte{p.b}
		desc = fmt.Sprintf("TCP v6=%v headers %d+%d, payload %d, MSS %d", v6, p.l4, p.hdrLen-p.l4, size, mss)
	case 1: // a UDP_SEGMENT run
		gsoSize := 1 + rng.IntN(1500)
		if rng.IntN(4) == 0 {
			gsoSize = 1 + rng.IntN(9000)
		}
		hl := 20 + ipOpts + 8
		if v6 {
			hl = 48
		}
		limit := min(65535-hl, gsoSize*maxUDPSegments)
		size := randomPayloadSize(rng, gsoSize, limit)
		p = randomPacket(rng, v6, protoUDP, ipOpts, 0, size)
		in = virtioRead(virtioNetFNeedsCsum, virtioNetGSOUDPL4, p.hdrLen, gsoSize, p.l4, 6, asKernelReads(rng, p, min(gsoSize, size), true))
		for off := 0; off < size || off == 0; off += gsoSize {
			n := min(gsoSize, size-off)
			d := append(slices.Clone(p.b[:p.hdrLen]), p.b[p.hdrLen+off:p.hdrLen+off+n]...)
			if v6 {
				binary.BigEndian.PutUint16(d[4:], uint16(len(d)-40))
			} else {
				binary.BigEndian.PutUint16(d[2:], uint16(len(d)))
				binary.BigEndian.PutUint16(d[4:], binary.BigEndian.Uint16(p.b[4:])+uint16(len(want)))
				refIPv4Checksum(d[:p.l4])
			}
			binary.BigEndian.PutUint16(d[p.l4+4:], uint16(len(d)-p.l4))
			refL4Checksum(d, p.l4, protoUDP)
			want = append(want, d)
		}
		desc = fmt.Sprintf("UDP v6=%v headers %d, payload %d, segments of %d", v6, p.hdrLen, size, gsoSize)
	default: // one packet with a partial checksum, or none
		proto := uint8(protoTCP)
		off := 16
		if rng.IntN(2) == 0 {
			proto, off, tcpOpts = protoUDP, 6, 0
		}
		hl := 20 + ipOpts + 20 + tcpOpts
		if v6 {
			hl = 60 + tcpOpts
		}
		p = randomPacket(rng, v6, proto, ipOpts, tcpOpts, randomPayloadSize(rng, 1460, min(9000, 65535-hl)))
		if rng.IntN(4) == 0 {
			// Checksum complete (CHECKSUM_UNNECESSARY or done): untouched.
			in = virtioRead(0, virtioNetGSONone, 0, 0, 0, 0, p.b)
		} else {
			in = virtioRead(virtioNetFNeedsCsum, virtioNetGSONone, p.hdrLen, 0, p.l4, off, asKernelReads(rng, p, 0, false))
		}
		want = [][]byte{p.b}
		desc = fmt.Sprintf("single proto %d v6=%v headers %d, payload %d, flags %#x", proto, v6, p.hdrLen, len(p.b)-p.hdrLen, in[0])
	}
	var got [][]byte
	if err := receiveVirtio(in, scratch, func(b []byte) { got = append(got, slices.Clone(b)) }); err != nil {
		return fmt.Errorf("%s: %w", desc, err)
	}
	if len(got) != len(want) {
		return fmt.Errorf("%s: %d packets delivered, want %d", desc, len(got), len(want))
	}
	var payload []byte
	for i := range got {
		if !refL4Valid(got[i], p.l4, p.proto) {
			return fmt.Errorf("%s: packet %d: transport checksum invalid", desc, i)
		}
		if !v6 && refFold(refSum(got[i][:p.l4], 0)) != 0xffff {
			return fmt.Errorf("%s: packet %d: IPv4 header checksum invalid", desc, i)
		}
		if err := diffPacket(got[i], want[i], p); err != nil {
			return fmt.Errorf("%s: packet %d of %d: %w", desc, i, len(want), err)
		}
		payload = append(payload, got[i][p.hdrLen:]...)
	}
	if !bytes.Equal(payload, p.b[p.hdrLen:]) {
		return fmt.Errorf("%s: the payloads delivered are not the packet's", desc)
	}
	return nil
}

// randomMalformedCase spoils a random valid read in one of the ways the
// kernel never produces (Linux's virtio_net_hdr_to_skb refuses them, or
// the header does not describe the packet) and checks the decoder refuses
// it: errVirtio (counted by runVirtio), nothing delivered.
func randomMalformedCase(rng *rand.Rand, scratch []byte) error {
	v6 := rng.IntN(2) == 0
	proto := uint8(protoTCP)
	if rng.IntN(2) == 0 {
		proto = protoUDP
	}
	tcpOpts := 4 * rng.IntN(11)
	if proto == protoUDP {
		tcpOpts = 0
	}
	p := randomPacket(rng, v6, proto, 0, tcpOpts, 1+rng.IntN(4000))
	size := len(p.b) - p.hdrLen
	gsoSize := 1 + rng.IntN(size)
	flags, gso, start, off := uint8(virtioNetFNeedsCsum), uint8(virtioNetGSOUDPL4), p.l4, 6
	switch {
	case proto == protoTCP && v6:
		gso, off = virtioNetGSOTCPv6, 16
	case proto == protoTCP:
		gso, off = virtioNetGSOTCPv4, 16
	}
	if rng.IntN(3) == 0 {
		gso = virtioNetGSONone
	}
	pkt := asKernelReads(rng, p, min(gsoSize, size), gso != virtioNetGSONone)
	var what string
	switch rng.IntN(11) {
	case 0:
		what = "checksum start past the packet"
		start = len(pkt) - off - 1 + rng.IntN(65536-len(pkt)+off)
	case 1:
		what = "checksum start inside the IP header"
		start = rng.IntN(p.l4)
	case 2:
		what = "checksum start inside the transport header or payload"
		start = p.l4 + 1 + rng.IntN(len(pkt)-p.l4-off-2)
	case 3:
		what = "checksum offset not the protocol's"
		for off == 6 && proto == protoUDP || off == 16 && proto == protoTCP {
			off = rng.IntN(40)
		}
	case 4:
		what = "GSO size 0"
		if gso == virtioNetGSONone {
			gso = virtioNetGSOUDPL4
			if proto == protoTCP {
				gso = map[bool]uint8{false: virtioNetGSOTCPv4, true: virtioNetGSOTCPv6}[v6]
			}
		}
		gsoSize = 0
	case 5:
		what = "TCP GSO of the other IP version"
		gso, off = map[bool]uint8{true: virtioNetGSOTCPv4, false: virtioNetGSOTCPv6}[v6], 16
	case 6:
		what = "TCP GSO of a UDP packet, UDP GSO of a TCP packet"
		if proto == protoUDP {
			gso, off = map[bool]uint8{false: virtioNetGSOTCPv4, true: virtioNetGSOTCPv6}[v6], 16
		} else {
			gso, off = virtioNetGSOUDPL4, 6
		}
	case 7:
		what = "unknown GSO type"
		for gso == virtioNetGSONone || gso == virtioNetGSOTCPv4 || gso == virtioNetGSOTCPv6 || gso == virtioNetGSOUDPL4 {
			gso = uint8(rng.IntN(0x80))
		}
	case 8:
		what = "UDP GSO without a partial checksum"
		if proto == protoTCP {
			return nil
		}
		gso, flags = virtioNetGSOUDPL4, 0
	case 9:
		what = "more UDP segments than Linux sends"
		if proto == protoTCP || size <= maxUDPSegments {
			return nil
		}
		gso, gsoSize = virtioNetGSOUDPL4, rng.IntN(size/(maxUDPSegments+1))+1
		if (size+gsoSize-1)/gsoSize <= maxUDPSegments {
			return nil
		}
	case 10:
		what = "cut short"
		pkt = pkt[:rng.IntN(p.l4+off+2)]
	}
	in := virtioRead(flags, gso, p.hdrLen, gsoSize, start, off, pkt)
	if rng.IntN(20) == 0 {
		what = "shorter than its virtio-net header"
		in = in[:rng.IntN(virtioNetHdrLen+1)]
	}
	n := 0
	err := receiveVirtio(in, scratch, func([]byte) { n++ })
	if !errors.Is(err, errVirtio) || n != 0 {
		return fmt.Errorf("%s (proto %d v6=%v GSO type %d size %d, checksum at %d+%d, flags %d, %d bytes): err %v, %d delivered; want errVirtio and nothing",
			what, proto, v6, gso, gsoSize, start, off, flags, len(pkt), err, n)
	}
	return nil
}
