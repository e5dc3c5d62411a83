package netstack

import (
	"encoding/binary"
	"errors"
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Receive offload from a TUN device. With virtio-net headers on, the kernel
// hands the reader whole super-packets: a client's TCP send of up to 64 KiB
// (TSO, or segments its GRO merged) or a run of UDP datagrams sent with
// UDP_SEGMENT, each with a partial checksum. A TCP super-packet goes to
// gVisor whole, as one segment, its checksum completed once: cutting it
// into MTU-sized segments only for gVisor's GRO to merge them again would
// cost two copies and three more passes over every byte. UDP super-packets
// are cut into their datagrams, which are separate messages.

// virtio-net header fields of a read (linux/virtio_net.h).
const (
	virtioNetGSONone  = 0    // one packet
	virtioNetGSOUDPL4 = 5    // UDP_SEGMENT: datagrams of gsoSize payload bytes
	virtioNetGSOECN   = 0x80 // a flag on the GSO type: the TCP sender saw ECN
)

// virtioHdr is a decoded virtio-net header.
type virtioHdr struct {
	flags     uint8
	gsoType   uint8
	gsoSize   int
	csumStart int
	csumOff   int
}

func decodeVirtioHdr(b []byte) virtioHdr {
	return virtioHdr{
		flags:     b[0],
		gsoType:   b[1] &^ virtioNetGSOECN,
		gsoSize:   int(binary.NativeEndian.Uint16(b[4:])),
		csumStart: int(binary.NativeEndian.Uint16(b[6:])),
		csumOff:   int(binary.NativeEndian.Uint16(b[8:])),
	}
}

// errVirtio marks a read the kernel should never produce: a header that
// does not fit its packet.
var errVirtio = errors.New("netstack: malformed virtio-net read")

// udpChecksumOffset is where a UDP header keeps its checksum.
const udpChecksumOffset = 6

// maxUDPSegments bounds the datagrams one UDP super-packet is cut into
// (Linux allows 64 per UDP_SEGMENT send).
const maxUDPSegments = 128

// receiveVirtio decodes one read from a TUN device with virtio-net
// headers (in: the header, then the packet) and hands deliver each packet
// it holds: the packet itself, its checksum completed if the kernel left
// it partial; or, for UDP_SEGMENT, each datagram, built in scratch (at
// least 64 KiB), which deliver must not keep. The packet's own bytes are
// edited in place.
func receiveVirtio(in, scratch []byte, deliver func([]byte)) error {
	if len(in) < virtioNetHdrLen {
		return fmt.Errorf("%w: %d bytes", errVirtio, len(in))
	}
	h := decodeVirtioHdr(in)
	pkt := in[virtioNetHdrLen:]
	if len(pkt) == 0 {
		return fmt.Errorf("%w: no packet", errVirtio)
	}
	v6 := pkt[0]>>4 == 6
	switch h.gsoType {
	case virtioNetGSONone:
		if h.flags&virtioNetFNeedsCsum != 0 {
			if err := completeChecksum(pkt, h); err != nil {
				return err
			}
		}
		deliver(pkt)
		return nil
	case virtioNetGSOTCPv4, virtioNetGSOTCPv6:
		if v6 != (h.gsoType == virtioNetGSOTCPv6) || h.csumOff != virtioCsumOffsetTCP || h.gsoSize == 0 {
			return fmt.Errorf("%w: GSO type %d of %d for IP version %d", errVirtio, h.gsoType, h.gsoSize, pkt[0]>>4)
		}
		if err := transportIs(pkt, h.csumStart, uint8(header.TCPProtocolNumber)); err != nil {
			return err
		}
		if err := fixLengths(pkt, v6); err != nil {
			return err
		}
		if err := completeL4(pkt, h.csumStart, header.TCPProtocolNumber, header.TCPChecksumOffset); err != nil {
			return err
		}
		deliver(pkt)
		return nil
	case virtioNetGSOUDPL4:
		return splitUDP(pkt, v6, h, scratch, deliver)
	}
	return fmt.Errorf("%w: GSO type %d", errVirtio, h.gsoType)
}

// completeChecksum finishes the partial checksum the header points at,
// once it is known to be the checksum field of the packet's TCP or UDP
// header: completed anywhere else, it would write over other bytes — the
// IPv4 source address, a port, a TCP sequence number — after every check
// of the router's.
func completeChecksum(pkt []byte, h virtioHdr) error {
	proto, l4, ok := transportOf(pkt)
	field := -1
	switch proto {
	case uint8(header.TCPProtocolNumber):
		field = header.TCPChecksumOffset
	case protoUDP:
		field = udpChecksumOffset
	}
	if !ok || h.csumStart != l4 || h.csumOff != field || l4+field+2 > len(pkt) {
		return fmt.Errorf("%w: checksum at %d+%d in %d bytes", errVirtio, h.csumStart, h.csumOff, len(pkt))
	}
	completePartial(pkt, h.csumStart, h.csumOff)
	if proto == protoUDP && pkt[l4+field] == 0 && pkt[l4+field+1] == 0 {
		pkt[l4+field], pkt[l4+field+1] = 0xff, 0xff // 0 means "no checksum" for UDP, as in completeL4
	}
	return nil
}

// maxIPv6ExtHeaders bounds the extension headers transportOf walks.
const maxIPv6ExtHeaders = 8

// transportOf finds pkt's transport header: its protocol and offset,
// behind the IPv4 header (its IHL) or behind IPv6's fixed header and any
// hop-by-hop, routing and destination options headers. ok is false for
// a packet too short for its headers, an IP fragment (the kernel leaves
// no checksum of one partial, and segments none), or another IP version.
func transportOf(pkt []byte) (proto uint8, l4 int, ok bool) {
	switch pkt[0] >> 4 {
	case 4:
		l4 = int(pkt[0]&0x0f) * 4
		if len(pkt) < header.IPv4MinimumSize || l4 < header.IPv4MinimumSize || l4 > len(pkt) ||
			binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 {
			return 0, 0, false
		}
		return pkt[9], l4, true
	case 6:
		if len(pkt) < header.IPv6MinimumSize {
			return 0, 0, false
		}
		proto, l4 = pkt[6], header.IPv6MinimumSize
		for range maxIPv6ExtHeaders {
			switch proto {
			case uint8(header.IPv6HopByHopOptionsExtHdrIdentifier), uint8(header.IPv6RoutingExtHdrIdentifier),
				uint8(header.IPv6DestinationOptionsExtHdrIdentifier):
			default:
				return proto, l4, true
			}
			if l4+8 > len(pkt) {
				return 0, 0, false
			}
			proto, l4 = pkt[l4], l4+(int(pkt[l4+1])+1)*8
		}
	}
	return 0, 0, false
}

// transportIs checks that the header of a super-packet of proto describes
// pkt: the transport header at l4 is of proto.
func transportIs(pkt []byte, l4 int, proto uint8) error {
	if p, at, ok := transportOf(pkt); !ok || p != proto || at != l4 {
		return fmt.Errorf("%w: GSO of protocol %d at %d, the packet's is %d at %d", errVirtio, proto, l4, p, at)
	}
	return nil
}

// fixLengths makes the IP header's length the packet's (a super-packet's
// header may describe its first segment only) and the IPv4 header
// checksum right.
func fixLengths(pkt []byte, v6 bool) error {
	if v6 {
		if len(pkt) < header.IPv6MinimumSize {
			return fmt.Errorf("%w: short IPv6 packet", errVirtio)
		}
		binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)-header.IPv6MinimumSize))
		return nil
	}
	if ihl := int(pkt[0]&0x0f) * 4; len(pkt) < ihl || ihl < header.IPv4MinimumSize || len(pkt) > 0xffff {
		return fmt.Errorf("%w: bad IPv4 packet", errVirtio)
	}
	ip := header.IPv4(pkt)
	if int(ip.TotalLength()) != len(pkt) {
		ip.SetTotalLength(uint16(len(pkt)))
		setIPv4Checksum(ip)
	}
	return nil
}

// completeL4 computes the checksum of the transport segment that starts at
// l4 (transportOf's) from scratch: the pseudo-header with the segment's real length, then
// the segment with its checksum field zero.
func completeL4(pkt []byte, l4 int, proto tcpip.TransportProtocolNumber, field int) error {
	if l4+field+2 > len(pkt) {
		return fmt.Errorf("%w: transport header at %d in %d bytes", errVirtio, l4, len(pkt))
	}
	var src, dst tcpip.Address
	if pkt[0]>>4 == 6 {
		src, dst = header.IPv6(pkt).SourceAddress(), header.IPv6(pkt).DestinationAddress()
	} else {
		src, dst = header.IPv4(pkt).SourceAddress(), header.IPv4(pkt).DestinationAddress()
	}
	seg := pkt[l4:]
	seg[field], seg[field+1] = 0, 0
	sum := header.PseudoHeaderChecksum(proto, src, dst, uint16(len(seg)))
	c := ^checksum.Checksum(seg, sum)
	if proto == header.UDPProtocolNumber && c == 0 {
		c = 0xffff // 0 means "no checksum" for UDP
	}
	binary.BigEndian.PutUint16(seg[field:], c)
	return nil
}

// splitUDP cuts a UDP super-packet into its datagrams of h.gsoSize payload
// bytes (the last may be shorter), each with its own IP and UDP lengths
// and checksums, and IPv4 identification numbers counting up as Linux's
// own segmentation does.
func splitUDP(pkt []byte, v6 bool, h virtioHdr, scratch []byte, deliver func([]byte)) error {
	l4 := h.csumStart
	// As Linux's virtio_net_hdr_to_skb: a partial UDP checksum, segments
	// of some size; and a UDP header where the header says.
	if h.flags&virtioNetFNeedsCsum == 0 || h.csumOff != udpChecksumOffset || h.gsoSize == 0 ||
		l4+header.UDPMinimumSize > len(pkt) {
		return fmt.Errorf("%w: UDP segments of %d at %d+%d in %d bytes", errVirtio, h.gsoSize, l4, h.csumOff, len(pkt))
	}
	if err := transportIs(pkt, l4, protoUDP); err != nil {
		return err
	}
	hdrLen := l4 + header.UDPMinimumSize
	payload := pkt[hdrLen:]
	if (len(payload)+h.gsoSize-1)/h.gsoSize > maxUDPSegments || hdrLen+h.gsoSize > len(scratch) {
		return fmt.Errorf("%w: %d bytes in UDP segments of %d", errVirtio, len(payload), h.gsoSize)
	}
	var id uint16
	if !v6 {
		id = header.IPv4(pkt).ID()
	}
	// A run of no payload is one empty datagram (Linux takes a GSO
	// packet no longer than one segment as that packet).
	for i := 0; i == 0 || len(payload) > 0; i++ {
		n := min(h.gsoSize, len(payload))
		d := scratch[:hdrLen+n]
		copy(d, pkt[:hdrLen])
		copy(d[hdrLen:], payload[:n])
		payload = payload[n:]
		if v6 {
			binary.BigEndian.PutUint16(d[4:], uint16(len(d)-header.IPv6MinimumSize))
		} else {
			ip := header.IPv4(d)
			ip.SetTotalLength(uint16(len(d)))
			ip.SetID(id + uint16(i))
			setIPv4Checksum(ip)
		}
		binary.BigEndian.PutUint16(d[l4+4:], uint16(len(d)-l4))
		if err := completeL4(d, l4, header.UDPProtocolNumber, udpChecksumOffset); err != nil {
			return err
		}
		deliver(d)
	}
	return nil
}
