package catalog

import "net/netip"

// The sizes a VIP pool may have, wherever one comes from: a role's
// configuration, a relay's assign to its gateways, its directory to its
// agents. An IPv4 pool is a /8 (agents route no more into their TUN) to a
// /29 (five usable VIPs); an IPv6 pool a /64 to a /126.
const (
	MinPoolBits  = 8
	MaxPoolBits  = 29
	MinPool6Bits = 64
	MaxPool6Bits = 126
)

// PoolSizeOK reports whether p is an IPv4 prefix of an allowed size.
func PoolSizeOK(p netip.Prefix) bool {
	return p.IsValid() && p.Addr().Is4() && p.Bits() >= MinPoolBits && p.Bits() <= MaxPoolBits
}

// Pool6SizeOK reports whether p is an IPv6 prefix of an allowed size.
func Pool6SizeOK(p netip.Prefix) bool {
	return p.IsValid() && p.Addr().Is6() && !p.Addr().Is4In6() && p.Bits() >= MinPool6Bits && p.Bits() <= MaxPool6Bits
}
