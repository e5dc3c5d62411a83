package catalog

import (
	"encoding/binary"
	"math"
	"net/netip"
)

// Address families of a pool, used as indexes into per-family arrays.
const (
	fam4     = 0
	fam6     = 1
	families = 2
)

// familyName returns "IPv4" or "IPv6".
func familyName(f int) string {
	if f == fam6 {
		return "IPv6"
	}
	return "IPv4"
}

// firstUsable is the offset of the first address handed out: offset 0 is
// the network (IPv6: subnet-router anycast) address, offset 1 the gateway.
const firstUsable = 2

// addrSpace is the set of addresses one family of the pool hands out: the
// prefix minus its reserved addresses, numbered by slot (0 = the first
// usable address) so that a service name maps to a deterministic slot.
// The zero value is a family without a pool.
type addrSpace struct {
	prefix netip.Prefix // masked
	fam    int
	slots  uint64 // usable addresses
}

// newAddrSpace validates p as the pool of family fam. An IPv6 prefix
// shorter than /64 is allowed, but only its first /64 is handed out
// automatically (pins may use all of it).
func newAddrSpace(p netip.Prefix, fam int) (addrSpace, error) {
	a := p.Addr()
	if !p.IsValid() {
		return addrSpace{}, problem(ErrInvalidPool, "no %s pool prefix is given", familyName(fam))
	}
	if (fam == fam4 && !a.Is4()) || (fam == fam6 && (!a.Is6() || a.Is4In6())) {
		return addrSpace{}, problem(ErrInvalidPool, "%s pool %q is not an %s prefix", familyName(fam), p, familyName(fam))
	}
	p = p.Masked()
	reserved := uint64(firstUsable) // network/anycast and gateway
	if fam == fam4 {
		reserved++ // broadcast
	}
	s := addrSpace{prefix: p, fam: fam}
	host := a.BitLen() - p.Bits()
	if host >= 64 {
		s.slots = math.MaxUint64 - reserved + 1 // the first /64: 2^64 - reserved
	} else if total := uint64(1) << host; total >= reserved+2 {
		s.slots = total - reserved
	}
	if s.slots < 2 {
		return addrSpace{}, problem(ErrInvalidPool, "%s pool %s is too small: it needs room for at least 2 VIPs besides its reserved addresses (IPv4: /29 or shorter, IPv6: /126 or shorter)", familyName(fam), p)
	}
	return s, nil
}

// ok reports whether the family has a pool.
func (s addrSpace) ok() bool { return s.slots > 0 }

// addr returns the address of a slot (slot < s.slots).
func (s addrSpace) addr(slot uint64) netip.Addr {
	off := slot + firstUsable
	if s.fam == fam4 {
		b := s.prefix.Addr().As4()
		binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+uint32(off))
		return netip.AddrFrom4(b)
	}
	b := s.prefix.Addr().As16()
	binary.BigEndian.PutUint64(b[8:], binary.BigEndian.Uint64(b[8:])+off)
	return netip.AddrFrom16(b)
}

// contains reports whether a is inside the prefix (reserved or not).
func (s addrSpace) contains(a netip.Addr) bool { return s.ok() && s.prefix.Contains(a) }

// reservedName names a if it is a reserved address of the pool, else "".
func (s addrSpace) reservedName(a netip.Addr) string {
	base := s.prefix.Addr()
	switch {
	case a == base && s.fam == fam6:
		return "the subnet-router anycast address"
	case a == base:
		return "the network address"
	case a == base.Next():
		return "the gateway address"
	case s.fam == fam4 && a == s.addr(s.slots):
		return "the broadcast address"
	}
	return ""
}

// usable reports whether a may be handed out: inside the pool, not reserved.
func (s addrSpace) usable(a netip.Addr) bool {
	return s.contains(a) && s.reservedName(a) == ""
}

// home returns the slot a service name hashes to (FNV-1a, 64 bits).
func (s addrSpace) home(name string) uint64 {
	const offset64, prime64 = 14695981039346656037, 1099511628211
	h := uint64(offset64)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= prime64
	}
	return h % s.slots
}

// probe returns the first address from the name's home slot on (linear
// probing, wrapping around) for which taken is false, trying at most limit
// slots.
func (s addrSpace) probe(name string, limit uint64, taken func(netip.Addr) bool) (netip.Addr, bool) {
	slot := s.home(name)
	for i := uint64(0); i < limit && i < s.slots; i++ {
		if a := s.addr(slot); !taken(a) {
			return a, true
		}
		if slot++; slot == s.slots {
			slot = 0
		}
	}
	return netip.Addr{}, false
}
