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
//
// Requests are pooled: the handler ends each with exactly one call of
// Reply, Refuse or Drop, after which it must not touch the request (nor
// its Payload) again. A request that is never ended only costs the pool
// one object.
type EchoRequest struct {
	Src, Dst netip.Addr // client and VIP
	ID, Seq  uint16
	Payload  []byte // the echo data, valid until the request is ended

	link *Link
	// buf holds echoHeadroom scratch bytes, then the request's packet (n
	// bytes, its ICMP header at offset l4): the reply and the ICMP error are
	// both built in place, in front of or over the request.
	buf   []byte
	n, l4 int
}

// echoHeadroom is the room in front of a request's packet for the headers
// of an ICMP error that quotes it (IPv6 + ICMPv6, the larger).
const echoHeadroom = header.IPv6MinimumSize + header.ICMPv6MinimumSize

// Quotes of an ICMP error: as much of the request as fits in 576 bytes
// (IPv4, RFC 1812 4.3.2.3) or 1280 bytes (IPv6, RFC 4443 2.4(c)).
const (
	maxError4 = 576
	maxError6 = header.IPv6MinimumMTU
)

func (ns *Stack) handleEcho(l *Link, h ipHeader, pkt []byte) {
	req, _ := ns.echoes.Get().(*EchoRequest)
	if req == nil {
		req = new(EchoRequest)
	}
	req.n, req.l4 = h.hdrLen+len(h.l4), h.hdrLen
	if need := echoHeadroom + req.n; cap(req.buf) < need {
		req.buf = make([]byte, need)
	}
	req.buf = req.buf[:echoHeadroom+req.n]
	p := req.buf[echoHeadroom:]
	copy(p, pkt[:req.n])
	req.Src, req.Dst = h.src, h.dst
	req.ID = binary.BigEndian.Uint16(p[req.l4+4:])
	req.Seq = binary.BigEndian.Uint16(p[req.l4+6:])
	req.Payload = p[req.l4+8 : req.n]
	req.link = l
	ns.cfg.Handler.HandleEcho(req)
}

// Reply sends the echo reply from the VIP to the client, on the link the
// request came from, and ends the request.
func (r *EchoRequest) Reply() {
	if r.link == nil {
		return // already ended
	}
	r.link.writeRaw(r.encodeReply())
	r.release()
}

// Refuse answers the request with an ICMP destination unreachable,
// communication administratively prohibited (ICMPv4 type 3 code 13,
// ICMPv6 type 1 code 1), from the VIP, so that ping reports the refusal at
// once; and ends the request. The errors share the stack's ICMP rate limit
// with the port unreachables of refused UDP flows: over it the request is
// ended without an answer (and counted in Stats.ICMPRateLimited).
func (r *EchoRequest) Refuse() {
	if r.link == nil {
		return
	}
	ns := r.link.ns
	if ns.s.AllowICMPMessage() {
		r.link.writeRaw(r.encodeProhibited())
		ns.icmpSent.Add(1)
	} else {
		ns.icmpLimited.Add(1)
	}
	r.release()
}

// Drop ends the request without an answer.
func (r *EchoRequest) Drop() {
	if r.link != nil {
		r.release()
	}
}

// release returns the request to the stack's pool.
func (r *EchoRequest) release() {
	ns := r.link.ns
	r.link, r.Payload = nil, nil
	ns.echoes.Put(r)
}

// encodeReply turns the request into its reply in place: IPv4+ICMP or
// IPv6+ICMPv6 from the VIP to the client, the request's IPv4 options
// dropped, the identifier, sequence number and data kept.
func (r *EchoRequest) encodeReply() []byte {
	end := echoHeadroom + r.n
	icmpAt := echoHeadroom + r.l4
	if r.Src.Is4() {
		b := r.buf[icmpAt-header.IPv4MinimumSize : end]
		r.encodeIPv4(b)
		icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
		// Only the type changes (8 to 0, the code is 0): the checksum the
		// link verified is updated incrementally (RFC 1624), so that a
		// reply never carries a checksum its request did not earn.
		icmp.SetType(header.ICMPv4EchoReply)
		icmp.SetChecksum(checksum.Combine(icmp.Checksum(), 0x0800))
		return b
	}
	b := r.buf[icmpAt-header.IPv6MinimumSize : end]
	r.encodeIPv6(b)
	icmp := header.ICMPv6(b[header.IPv6MinimumSize:])
	// Type 128 to 129, the code 0, the pseudo-header's addresses swapped
	// (the same sum): the checksum drops by 0x0100.
	icmp.SetType(header.ICMPv6EchoReply)
	icmp.SetChecksum(checksum.Combine(icmp.Checksum(), ^uint16(0x0100)))
	return b
}

// encodeProhibited builds, in the headroom in front of the request, the
// ICMP error that quotes it.
func (r *EchoRequest) encodeProhibited() []byte {
	if r.Src.Is4() {
		hdr := header.IPv4MinimumSize + header.ICMPv4MinimumSize
		b := r.buf[echoHeadroom-hdr : echoHeadroom+min(r.n, maxError4-hdr, r.link.MTU()-hdr)]
		r.encodeIPv4(b)
		icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
		clear(icmp[:header.ICMPv4MinimumSize])
		icmp.SetType(header.ICMPv4DstUnreachable)
		icmp.SetCode(header.ICMPv4AdminProhibited)
		icmp.SetChecksum(^checksum.Checksum(icmp, 0))
		return b
	}
	hdr := header.IPv6MinimumSize + header.ICMPv6MinimumSize
	b := r.buf[echoHeadroom-hdr : echoHeadroom+min(r.n, maxError6-hdr, r.link.MTU()-hdr)]
	r.encodeIPv6(b)
	icmp := header.ICMPv6(b[header.IPv6MinimumSize:])
	clear(icmp[:header.ICMPv6MinimumSize])
	icmp.SetType(header.ICMPv6DstUnreachable)
	icmp.SetCode(header.ICMPv6Prohibited)
	r.setICMPv6Checksum(icmp)
	return b
}

// encodeIPv4 writes an IPv4 header from the VIP to the client at the start
// of b, for an ICMP packet of len(b) bytes.
func (r *EchoRequest) encodeIPv4(b []byte) {
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     toAddr(r.Dst),
		DstAddr:     toAddr(r.Src),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
}

// encodeIPv6 is encodeIPv4 for IPv6 (ICMPv6 payload).
func (r *EchoRequest) encodeIPv6(b []byte) {
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(b) - header.IPv6MinimumSize),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           toAddr(r.Dst),
		DstAddr:           toAddr(r.Src),
	})
}

func (r *EchoRequest) setICMPv6Checksum(icmp header.ICMPv6) {
	icmp.SetChecksum(0)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: icmp,
		Src:    toAddr(r.Dst),
		Dst:    toAddr(r.Src),
	}))
}
