// Package listenaddr opens listeners on addresses as the operator wrote
// them, and lists the host's own addresses. Go listens on the IPv6 addresses as well when told
// 0.0.0.0 with "tcp" or "udp" (one dual-stack socket on [::]); an operator
// who writes an IPv4 address, the unspecified one included, means IPv4
// only, and firewalls it as such. An IPv6 address or an empty host (":53")
// keeps Go's dual-stack listener.
package listenaddr

import (
	"net"
	"net/netip"
)

// Network returns the network ("tcp4", "udp4", or base itself) to listen
// on addr, a host:port, with base "tcp" or "udp".
func Network(base, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return base
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Unmap().Is4() {
		return base + "4"
	}
	return base
}

// Listen is net.Listen("tcp", addr) on the network Network gives.
func Listen(addr string) (net.Listener, error) { return net.Listen(Network("tcp", addr), addr) }

// ListenPacket is net.ListenPacket("udp", addr) on the network Network
// gives.
func ListenPacket(addr string) (net.PacketConn, error) {
	return net.ListenPacket(Network("udp", addr), addr)
}

// HostAddrs returns the addresses of this host's interfaces, IPv4-mapped
// ones as IPv4; none when they cannot be read.
func HostAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}
