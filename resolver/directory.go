package resolver

import (
	"net/netip"

	"github.com/ztgate/ztgate/catalog"
)

// Entry is what the zone knows of one service.
type Entry struct {
	Name string     // DNS label, lower case
	VIP  netip.Addr // IPv4 VIP
	VIP6 netip.Addr // IPv6 VIP; invalid when there is no IPv6 pool
	// Ports become SRV records:
	// _<port.Name or port number>._<tcp|udp>.<name>.<zone> → <name>.<zone>:Port.
	Ports []catalog.Port
}

// Directory maps a client to its view of the zone.
type Directory interface {
	// View returns the zone as client may see it, or nil when the client may
	// not query at all (every name is then REFUSED). It is called once per
	// query, concurrently, and should be cheap (a prefix lookup and a load).
	View(client netip.Addr) View
}

// View is an immutable snapshot of the zone for one tenant. The roles build
// a new View whenever services change, so a View value is used as a cache
// key: its dynamic type should be comparable (a pointer is best). Answers
// for a View whose value is not comparable are simply not cached.
type View interface {
	// Lookup returns the service named by label, a lower-case DNS label.
	Lookup(label string) (Entry, bool)
	// Reverse returns the service whose VIP (IPv4 or IPv6) is addr.
	Reverse(addr netip.Addr) (Entry, bool)
}
