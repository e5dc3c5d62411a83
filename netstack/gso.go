package netstack

import (
	"encoding/binary"

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
	// segments of g.MSS payload bytes, each with its checksum completed.
	// It is called from the goroutine that calls WritePackets, never at
	// the same time.
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
