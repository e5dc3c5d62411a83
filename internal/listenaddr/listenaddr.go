// Package listenaddr picks the network a listener binds for an address as
// the operator wrote it. Go listens on the IPv6 addresses as well when told
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
