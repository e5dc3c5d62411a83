package netstack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// RewriteIPv4Source replaces the source address of an IPv4 packet and
// updates the header checksum and, in a first fragment or an unfragmented
// packet, the TCP or UDP checksum (whose pseudo-header covers the
// addresses), incrementally (RFC 1624). It returns false, leaving pkt
// unchanged, when pkt is not a well-formed IPv4 packet or a is not IPv4.
func RewriteIPv4Source(pkt []byte, a netip.Addr) bool { return rewriteIPv4(pkt, 12, a) }

// RewriteIPv4Destination is RewriteIPv4Source for the destination address.
func RewriteIPv4Destination(pkt []byte, a netip.Addr) bool { return rewriteIPv4(pkt, 16, a) }

// IPv4Addrs returns the source and destination of an IPv4 packet, or
// ok=false when pkt is not a well-formed IPv4 packet.
func IPv4Addrs(pkt []byte) (src, dst netip.Addr, ok bool) {
	h, ok := parseIP(pkt)
	if !ok || h.v6 {
		return src, dst, false
	}
	return h.src, h.dst, true
}

func rewriteIPv4(pkt []byte, off int, a netip.Addr) bool {
	h, ok := parseIP(pkt)
	if !ok || h.v6 || !a.Is4() {
		return false
	}
	na := a.As4()
	old := [4]byte(pkt[off : off+4])
	if old == na {
		return true
	}
	copy(pkt[off:off+4], na[:])
	fixChecksum(pkt[10:12], old, na)
	if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return true // a later fragment: no transport header
	}
	fixTransportChecksum(h.proto, pkt[h.hdrLen:], old, na)
	return true
}

// fixTransportChecksum updates the TCP or UDP checksum in l4, when l4 holds
// it, for an address of the pseudo-header that changed from old to new.
func fixTransportChecksum(proto uint8, l4 []byte, old, new [4]byte) {
	switch proto {
	case 6: // TCP
		if len(l4) >= 18 {
			fixChecksum(l4[16:18], old, new)
		}
	case 17: // UDP: a zero checksum means none
		if len(l4) >= 8 && (l4[6] != 0 || l4[7] != 0) {
			fixChecksum(l4[6:8], old, new)
			if l4[6] == 0 && l4[7] == 0 {
				l4[6], l4[7] = 0xff, 0xff
			}
		}
	}
}

// fixChecksum updates the ones'-complement checksum at sum for a 32-bit
// field that changed from old to new (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
func fixChecksum(sum []byte, old, new [4]byte) {
	acc := uint32(^binary.BigEndian.Uint16(sum))
	for i := 0; i < 4; i += 2 {
		acc += uint32(^binary.BigEndian.Uint16(old[i:]))
		acc += uint32(binary.BigEndian.Uint16(new[i:]))
	}
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	binary.BigEndian.PutUint16(sum, ^uint16(acc))
}

// RewriteICMPv4QuotedSource replaces, in an ICMPv4 error (destination
// unreachable, time exceeded, parameter problem), the source address of
// the packet it quotes when it is from, by to, and updates the quoted IP
// header's checksum, the quoted TCP or UDP checksum when the quote holds
// it, and the ICMP checksum. It returns false, leaving pkt unchanged, when
// pkt is not such an error, its quote is too short to hold an IPv4 header,
// or the quoted source is not from.
//
// A gateway that gives a tunnel's packets another source address (the
// ingress's) must give the errors it sends about them the agent's address
// back in their quote, not only in their IP header: the agent's kernel
// finds the socket an error is for by the quoted addresses and ports.
func RewriteICMPv4QuotedSource(pkt []byte, from, to netip.Addr) bool {
	return rewriteQuoted(pkt, 12, from, to)
}

// RewriteICMPv4QuotedDestination is RewriteICMPv4QuotedSource for the
// quoted packet's destination: the errors an agent sends about packets
// sent to it.
func RewriteICMPv4QuotedDestination(pkt []byte, from, to netip.Addr) bool {
	return rewriteQuoted(pkt, 16, from, to)
}

func rewriteQuoted(pkt []byte, off int, from, a netip.Addr) bool {
	h, ok := parseIP(pkt)
	if !ok || h.v6 || h.proto != 1 || !a.Is4() || !from.Is4() || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
		return false // not ICMPv4, or a fragment: the quote may not be whole
	}
	icmp := h.l4
	if len(icmp) < 8+20 || (icmp[0] != 3 && icmp[0] != 11 && icmp[0] != 12) {
		return false
	}
	q := icmp[8:]
	qhl := int(q[0]&0x0f) * 4
	if q[0]>>4 != 4 || qhl < 20 || len(q) < qhl {
		return false
	}
	na, old := a.As4(), [4]byte(q[off:off+4])
	if old != from.As4() {
		return false
	}
	if old == na {
		return true
	}
	copy(q[off:off+4], na[:])
	fixChecksum(q[10:12], old, na)
	if binary.BigEndian.Uint16(q[6:8])&0x1fff == 0 { // the quote starts the transport header
		fixTransportChecksum(q[9], q[qhl:], old, na)
	}
	// The ICMP checksum covers the whole quote: computed again (an error
	// is at most 576 bytes), not patched for each field that changed.
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint16(icmp[2:4], ^checksum.Checksum(icmp, 0))
	return true
}
