package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TCP segmentation offload out of the stack. A link whose Output takes
// super-packets (a TUN device written with a virtio-net header: the kernel
// cuts them) tells gVisor so, and gVisor's TCP then sends up to 64 KiB per
// packet, running its send path once per super-packet instead of once per
// MTU-sized segment. Such packets carry a partial TCP checksum (the
// pseudo-header's sum, CHECKSUM_PARTIAL in Linux): the output completes it,
// or, for a packet that fits one segment, the link does.

// GSOOutput is an Output that also writes TCP super-packets.
type GSOOutput interface {
	Output
	// GSO reports whether WriteGSO works (a TUN device opened without
	// offloads cannot take them).
	GSO() bool
	// WriteGSO writes one TCP packet whose payload is larger than one
	// segment: b holds Headroom scratch bytes, then the packet. Its TCP
	// checksum field holds the pseudo-header's sum; it is to be cut into
	// segments of g.MSS payload bytes, each with its checksum completed
	// (by a device, or in place by a Segmenter: b is the output's to
	// change until it returns). It is called from the goroutine that calls
	// WritePackets, never at the same time.
	WriteGSO(b []byte, g GSO) error
}

// GSO describes a TCP super-packet.
type GSO struct {
	V6     bool
	L3Len  int // IP header length: the TCP header's offset
	HdrLen int // IP and TCP header lengths: the payload's offset
	MSS    int // payload bytes per segment
}

// gsoMaxSize is the largest packet the link asks gVisor for: within an IPv4
// total length, as Linux's TSO limit.
const gsoMaxSize = 1<<16 - 1

// gsoOf tells what p is: GSO when it is a super-packet for WriteGSO, and
// partial when its TCP checksum needs completing either way.
func gsoOf(p *stack.PacketBuffer) (g GSO, super, partial bool) {
	o := p.GSOOptions
	if o.Type != stack.GSOTCPv4 && o.Type != stack.GSOTCPv6 || !o.NeedsCsum {
		return g, false, false
	}
	g = GSO{V6: o.Type == stack.GSOTCPv6, L3Len: int(o.L3HdrLen), HdrLen: p.HeaderSize(), MSS: int(o.MSS)}
	return g, p.Data().Size() > g.MSS, true
}

// completePartial finishes a partial checksum (CHECKSUM_PARTIAL in Linux)
// at start+off in b: the field holds the pseudo-header's sum, so the sum
// from start to the end is the checksum's complement.
func completePartial(b []byte, start, off int) {
	binary.BigEndian.PutUint16(b[start+off:], ^checksum.Checksum(b[start:], 0))
}

// setIPv4Checksum computes the checksum of an IPv4 header whose fields
// were changed.
func setIPv4Checksum(ip header.IPv4) {
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
}

// virtio-net header (linux/virtio_net.h), in the TUN's native byte order.
const (
	virtioNetHdrLen     = 10
	virtioNetFNeedsCsum = 1
	virtioNetGSOTCPv4   = 1
	virtioNetGSOTCPv6   = 4
	virtioCsumOffsetTCP = header.TCPChecksumOffset
)

// putVirtioGSO writes the virtio-net header of a TCP super-packet g into h.
func putVirtioGSO(h []byte, g GSO) {
	h[0] = virtioNetFNeedsCsum
	h[1] = virtioNetGSOTCPv4
	if g.V6 {
		h[1] = virtioNetGSOTCPv6
	}
	binary.NativeEndian.PutUint16(h[2:], uint16(g.HdrLen))
	binary.NativeEndian.PutUint16(h[4:], uint16(g.MSS))
	binary.NativeEndian.PutUint16(h[6:], uint16(g.L3Len))
	binary.NativeEndian.PutUint16(h[8:], virtioCsumOffsetTCP)
}

// Segmenter cuts a TCP super-packet into its segments in software, for an
// output with no device to do it (a tunnel, whose every datagram carries
// one packet). It works in place: segment k's headers are written over the
// last bytes of segment k-1's payload, right in front of its own, so no
// payload byte is copied. Each segment Next returns is valid until the
// next call, which overwrites its tail; the caller copies it before. A
// segment whose payload (MSS) is smaller than its headers, whose headers
// would not fit there, is built in a buffer of the Segmenter's instead:
// gVisor sends such segments to a peer that announces an MSS that small or
// reports a path MTU that small (it keeps at least a byte of payload).
//
// Segments are built as Linux's TCP segmentation builds them: sequence
// numbers advance by the payload before, IPv4 identifiers by one, FIN and
// PSH only on the last segment, CWR only on the first, and every checksum
// computed whole.
type Segmenter struct {
	b    []byte // the super-packet, headers first
	g    GSO
	hdr  [maxGSOHeader]byte     // the super-packet's headers as they came
	tiny [2 * maxGSOHeader]byte // a segment whose MSS is below its headers
	seq  uint32
	id   uint16
	k    int // next segment
	n    int // segments in all
	size int // payload bytes in all
}

// maxGSOHeader bounds the IP and TCP headers of a super-packet: an IPv4
// header with options (60) and a TCP header with options (60).
const maxGSOHeader = 120

// Reset makes s the Segmenter of the super-packet b laid out as g,
// reporting whether b matches g: headers that fit, a TCP header where g
// says, an unfragmented IP packet of TCP whose length field is len(b), a
// positive MSS.
func (s *Segmenter) Reset(b []byte, g GSO) bool {
	*s = Segmenter{}
	if g.L3Len <= 0 || g.HdrLen < g.L3Len+header.TCPMinimumSize || g.HdrLen > maxGSOHeader ||
		g.HdrLen > len(b) || g.MSS <= 0 || len(b) > gsoMaxSize+header.IPv6MinimumSize {
		return false
	}
	tcp := header.TCP(b[g.L3Len:g.HdrLen])
	if int(tcp.DataOffset()) != g.HdrLen-g.L3Len {
		return false
	}
	// The IP header must say what the layout does: TCP, not a fragment,
	// and the packet's length, which bounds every segment's length field.
	if g.V6 {
		ip := header.IPv6(b)
		if g.L3Len != header.IPv6MinimumSize || header.IPVersion(b) != header.IPv6Version ||
			ip.NextHeader() != uint8(header.TCPProtocolNumber) || header.IPv6MinimumSize+int(ip.PayloadLength()) != len(b) {
			return false
		}
	} else {
		ip := header.IPv4(b)
		if header.IPVersion(b) != header.IPv4Version || int(ip.HeaderLength()) != g.L3Len ||
			ip.Protocol() != uint8(header.TCPProtocolNumber) || int(ip.TotalLength()) != len(b) ||
			ip.More() || ip.FragmentOffset() != 0 {
			return false
		}
	}
	s.b, s.g = b, g
	copy(s.hdr[:], b[:g.HdrLen])
	s.seq = tcp.SequenceNumber()
	if !g.V6 {
		s.id = header.IPv4(b).ID()
	}
	s.size = len(b) - g.HdrLen
	s.n = max((s.size+g.MSS-1)/g.MSS, 1)
	return true
}

// Next returns the next segment, nil after the last.
func (s *Segmenter) Next() []byte {
	if s.k >= s.n {
		return nil
	}
	g, k := s.g, s.k
	s.k++
	off := k * g.MSS
	pay := min(g.MSS, s.size-off)
	var seg []byte
	if g.MSS >= g.HdrLen {
		seg = s.b[off : off+g.HdrLen+pay]
	} else {
		seg = s.tiny[:g.HdrLen+pay]
		copy(seg[g.HdrLen:], s.b[g.HdrLen+off:])
	}
	copy(seg, s.hdr[:g.HdrLen])
	if g.V6 {
		header.IPv6(seg).SetPayloadLength(uint16(g.HdrLen - g.L3Len + pay))
	} else {
		ip := header.IPv4(seg)
		ip.SetTotalLength(uint16(g.HdrLen + pay))
		ip.SetID(s.id + uint16(k))
		setIPv4Checksum(ip)
	}
	tcp := header.TCP(seg[g.L3Len:])
	tcp.SetSequenceNumber(s.seq + uint32(off))
	flags := tcp.Flags()
	if k > 0 {
		flags &^= header.TCPFlagCwr
	}
	if k < s.n-1 {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	tcp.SetFlags(uint8(flags))
	tcp.SetChecksum(0)
	var src, dst tcpip.Address
	if g.V6 {
		ip := header.IPv6(seg)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv4(seg)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(seg)-g.L3Len))
	tcp.SetChecksum(^checksum.Checksum(seg[g.L3Len:], sum))
	return seg
}
