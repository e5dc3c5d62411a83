package relay

import "net/netip"

// Minimum header sizes of the IP packets the relay looks into.
const (
	ipv4Header = 20
	ipv6Header = 40
)

// ipAddrs returns the source and destination addresses of an IPv4 or IPv6
// packet; ok is false for anything else or a truncated header. It reads
// the IP header only; the flow table also reads an IPv4 packet's transport
// header ([tunnel.Fragments.Flow]).
func ipAddrs(p []byte) (src, dst netip.Addr, ok bool) {
	if len(p) == 0 {
		return netip.Addr{}, netip.Addr{}, false
	}
	switch p[0] >> 4 {
	case 4:
		if len(p) < ipv4Header {
			break
		}
		return netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20])), true
	case 6:
		if len(p) < ipv6Header {
			break
		}
		return netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40])), true
	}
	return netip.Addr{}, netip.Addr{}, false
}
