package tunnel

import (
	"net/netip"

	"github.com/ztgate/ztgate/internal/listenaddr"
)

// HostAddrs returns the host's addresses another host could reach
// (Dialable ones): what a gateway listening on 0.0.0.0 or :: offers as
// direct-path candidates, and an agent as its own.
func HostAddrs() []netip.Addr {
	var out []netip.Addr
	for _, a := range listenaddr.HostAddrs() {
		if Dialable(a) {
			out = append(out, a)
		}
	}
	return out
}

// Dialable reports whether a host elsewhere could reach a: a valid unicast
// address that is neither loopback, link-local nor unspecified.
func Dialable(a netip.Addr) bool {
	return a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast() && !a.IsUnspecified()
}
