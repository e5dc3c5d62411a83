package netstack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// DropReason says why the stack dropped a packet before gVisor saw it.
type DropReason uint8

// Reasons for dropping a packet.
const (
	DropMalformed     DropReason = iota // not a parseable IPv4/IPv6 packet
	DropUnknownSource                   // the link's Admit refused the source (deny by default)
	DropNotRouted                       // destination outside every pool
	DropLinkDown                        // the link is detached
	DropQueueFull                       // outbound queue full
	DropTooBig                          // outbound packet larger than the link's buffers
	DropWriteError                      // the output failed
	DropUDPQueueFull                    // a UDP flow's receive queue is full (its reader is behind)
	DropICMPRefused                     // an ICMP error about another client's packet, or ICMPv6 behind extension headers
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"malformed", "unknown_source", "not_routed", "link_down", "queue_full", "too_big", "write_error", "udp_queue_full",
	"icmp_refused",
}

// String returns the reason as a metric label.
func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// DropReasons lists every reason, for pre-creating metric labels.
func DropReasons() []DropReason {
	rs := make([]DropReason, numDropReasons)
	for i := range rs {
		rs[i] = DropReason(i)
	}
	return rs
}

func (ns *Stack) drop(r DropReason) {
	if ns.cfg.OnDrop != nil {
		ns.cfg.OnDrop(r)
	}
}

// ipHeader is what the link needs to know of an inbound packet.
type ipHeader struct {
	v6       bool
	src, dst netip.Addr
	proto    uint8 // transport protocol (IPv6: the first next-header only)
	hdrLen   int   // offset of the transport header
	fragment bool  // IPv4 fragment (offset or more-fragments set)
	later    bool  // IPv4 fragment other than the first (offset set)
	l4       []byte
}

// parseIP checks the fixed header of an IP packet: version, header length
// and total length against the buffer. gVisor validates the rest.
func parseIP(b []byte) (ipHeader, bool) {
	var h ipHeader
	if len(b) < 1 {
		return h, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return h, false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < 20 || total < ihl || total > len(b) {
			return h, false
		}
		h.src = netip.AddrFrom4([4]byte(b[12:16]))
		h.dst = netip.AddrFrom4([4]byte(b[16:20]))
		h.proto = b[9]
		h.hdrLen = ihl
		h.fragment = binary.BigEndian.Uint16(b[6:8])&0x3fff != 0
		h.later = binary.BigEndian.Uint16(b[6:8])&0x1fff != 0
		h.l4 = b[ihl:total]
	case 6:
		if len(b) < 40 {
			return h, false
		}
		payload := int(binary.BigEndian.Uint16(b[4:6]))
		if 40+payload > len(b) {
			return h, false
		}
		h.v6 = true
		h.src = netip.AddrFrom16([16]byte(b[8:24]))
		h.dst = netip.AddrFrom16([16]byte(b[24:40]))
		h.proto = b[6]
		h.hdrLen = 40
		h.l4 = b[40 : 40+payload]
	default:
		return h, false
	}
	return h, true
}

const (
	protoICMPv4 = 1
	protoICMPv6 = 58
)

// icmpAdmissible reports whether an inbound packet may go on as far as
// ICMP is concerned. An ICMP error must be about a packet sent to a client
// its source may report on (from(source, quoted destination): a router on
// the way, or the client itself): gVisor hands an error to the endpoint
// the quoted packet names, so another client's forged "port unreachable"
// would end that endpoint's UDP flow, and a forged "packet too big" would
// shrink its TCP's segments. Redirects are never taken from a client.
// ICMPv6 behind extension headers is not taken at all: the stack's own
// handling of echo requests (tenant, service and rate checks) sees only
// the first next-header. Anything else — non-ICMP, echo, malformed ICMP
// that gVisor drops — passes.
func (h *ipHeader) icmpAdmissible(from func(src, dst netip.Addr) bool) bool {
	if h.v6 {
		switch h.proto {
		case protoICMPv6:
			if len(h.l4) >= 1 && h.l4[0] == 137 { // redirect
				return false
			}
			if len(h.l4) < 1 || h.l4[0] < 1 || h.l4[0] > 4 { // not an error
				return true
			}
			return len(h.l4) >= 8+40 && from(h.src, netip.AddrFrom16([16]byte(h.l4[8+24:8+40])))
		case 0, 43, 44, 60: // hop-by-hop, routing, fragment, destination options
			last := lastNextHeader(h.proto, h.l4)
			return last != protoICMPv6 && last != unwalkable
		}
		return true
	}
	if h.proto != protoICMPv4 || h.later || len(h.l4) < 1 {
		return true // later fragments are taken only with a first one
	}
	switch h.l4[0] {
	case 5: // redirect
		return false
	case 3, 4, 11, 12: // unreachable, source quench, time exceeded, parameter problem
		q := h.l4[min(8, len(h.l4)):]
		return len(q) >= 20 && q[0]>>4 == 4 && from(h.src, netip.AddrFrom4([4]byte(q[16:20])))
	}
	return true
}

// unwalkable is what lastNextHeader returns for a chain it cannot follow
// to its end (255 is reserved, never a real protocol).
const unwalkable = 255

// lastNextHeader follows IPv6 extension headers from next, whose header
// starts b, and returns the protocol after the last one (an ESP, AH or
// unknown header ends the walk), or unwalkable when b ends first or there
// are more than 8.
func lastNextHeader(next uint8, b []byte) uint8 {
	for range 8 {
		var n int
		switch next {
		case 0, 43, 60:
			if len(b) < 2 {
				return unwalkable
			}
			n = (int(b[1]) + 1) * 8
		case 44:
			n = 8
		default:
			return next
		}
		if len(b) < n {
			return unwalkable
		}
		next, b = b[0], b[n:]
	}
	switch next {
	case 0, 43, 44, 60:
		return unwalkable
	}
	return next
}

// sourceValid reports whether gVisor takes packets from h's source at
// all: not a multicast or loopback address, nor IPv4's limited broadcast
// (its IPv4 and IPv6 input count those as invalid sources and drop them).
// The link's own paths — echo requests it hands to the handler, datagrams
// it queues on a listener — leave the others to gVisor, which drops them.
// (A flow's datagrams need no check: gVisor took the flow's first one.)
func (h *ipHeader) sourceValid() bool {
	return !h.src.IsMulticast() && !h.src.IsLoopback() && h.src != limitedBroadcast
}

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// isEchoRequest reports whether the packet is a complete ICMP echo request.
func (h *ipHeader) isEchoRequest() bool {
	if len(h.l4) < 8 || h.l4[1] != 0 {
		return false
	}
	if h.v6 {
		return h.proto == protoICMPv6 && h.l4[0] == 128
	}
	return h.proto == protoICMPv4 && !h.fragment && h.l4[0] == 8
}

// echoChecksumsValid reports whether an echo request's checksums hold: the
// IPv4 header checksum and the ICMP checksum, or the ICMPv6 checksum with
// its pseudo-header. The stack answers echo requests itself, so it must
// verify what gVisor would have verified; pkt is the packet h was parsed
// from.
func (h *ipHeader) echoChecksumsValid(pkt []byte) bool {
	if h.v6 {
		icmp := header.ICMPv6(h.l4)
		return icmp.Checksum() == header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: icmp,
			Src:    toAddr(h.src),
			Dst:    toAddr(h.dst),
		})
	}
	return header.IPv4(pkt[:h.hdrLen]).IsChecksumValid() && checksum.Checksum(h.l4, 0) == 0xffff
}

// optionsParse reports whether the IPv4 options of the packet h was parsed
// from (pkt) are a list gVisor takes: each option's length within the
// header and no shorter than its type's fixed part (gVisor's own
// iterator), no option but NOP twice. gVisor drops a packet whose options
// fail, and the stack answers echo requests before gVisor sees them.
func (h *ipHeader) optionsParse(pkt []byte) bool {
	if h.v6 || h.hdrLen == header.IPv4MinimumSize {
		return true
	}
	var seen [256]bool
	it := header.IPv4Options(pkt[header.IPv4MinimumSize:h.hdrLen]).MakeIterator()
	for {
		opt, done, problem := it.Next()
		if problem != nil {
			return false
		}
		if done {
			return true
		}
		switch t := opt.Type(); t {
		case header.IPv4OptionListEndType:
			return true
		case header.IPv4OptionNOPType:
		default:
			if seen[t] {
				return false
			}
			seen[t] = true
		}
	}
}
