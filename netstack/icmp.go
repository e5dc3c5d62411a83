package netstack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// EchoRequest is an ICMP echo request to a pool address. The stack does not
// answer it: the handler pings a backend and calls Reply only when the
// backend answered, so that ping tells the truth about the service.
type EchoRequest struct {
	Src, Dst netip.Addr // client and VIP
	ID, Seq  uint16
	Payload  []byte // the echo data; owned by the handler
	link     *Link
}

func (ns *Stack) handleEcho(l *Link, h ipHeader, pkt []byte) {
	req := &EchoRequest{
		Src:     h.src,
		Dst:     h.dst,
		ID:      binary.BigEndian.Uint16(h.l4[4:6]),
		Seq:     binary.BigEndian.Uint16(h.l4[6:8]),
		Payload: append([]byte(nil), h.l4[8:]...),
		link:    l,
	}
	ns.cfg.Handler.HandleEcho(req)
}

// Reply sends the echo reply from the VIP to the client, on the link the
// request came from.
func (r *EchoRequest) Reply() {
	r.link.writeRaw(r.encodeReply())
}

// encodeReply builds the reply packet: IPv4+ICMP or IPv6+ICMPv6.
func (r *EchoRequest) encodeReply() []byte {
	if r.Src.Is4() {
		b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(r.Payload))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			TTL:         64,
			Protocol:    uint8(header.ICMPv4ProtocolNumber),
			SrcAddr:     toAddr(r.Dst),
			DstAddr:     toAddr(r.Src),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
		icmp.SetType(header.ICMPv4EchoReply)
		icmp.SetIdent(r.ID)
		icmp.SetSequence(r.Seq)
		copy(icmp.Payload(), r.Payload)
		icmp.SetChecksum(0)
		icmp.SetChecksum(^checksum.Checksum(icmp, 0))
		return b
	}
	b := make([]byte, header.IPv6MinimumSize+header.ICMPv6EchoMinimumSize+len(r.Payload))
	ip := header.IPv6(b)
	ip.Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(b) - header.IPv6MinimumSize),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           toAddr(r.Dst),
		DstAddr:           toAddr(r.Src),
	})
	icmp := header.ICMPv6(b[header.IPv6MinimumSize:])
	icmp.SetType(header.ICMPv6EchoReply)
	icmp.SetIdent(r.ID)
	icmp.SetSequence(r.Seq)
	copy(icmp.Payload(), r.Payload)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: icmp,
		Src:    toAddr(r.Dst),
		Dst:    toAddr(r.Src),
	}))
	return b
}
