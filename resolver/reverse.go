package resolver

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// reverseZone is the reverse-mapping zone (in-addr.arpa or ip6.arpa) of a
// VIP pool. Its apex is the first label boundary at or below the pool's
// prefix length, so a pool that is not octet (nibble) aligned has several
// apexes: a /22 has four /24 zones, a /26 has one zone per address.
type reverseZone struct {
	pool   netip.Prefix
	suffix []string // "in-addr", "arpa" or "ip6", "arpa"
	step   int      // address bits per label: 8 or 4
	apex   int      // labels of an apex below the suffix
	full   int      // labels of a whole address below the suffix: 4 or 32
}

func newReverseZone(p netip.Prefix) reverseZone {
	r := reverseZone{pool: p.Masked(), suffix: []string{"in-addr", "arpa"}, step: 8, full: 4}
	if p.Addr().Is6() {
		r.suffix, r.step, r.full = []string{"ip6", "arpa"}, 4, 32
	}
	r.apex = (p.Bits() + r.step - 1) / r.step
	return r
}

// resolve answers q when its name (labels) is in the zone, and reports
// whether it is. Names between an apex and a whole address are empty
// non-terminals (NODATA): a View cannot enumerate what lies below them.
func (r *reverseZone) resolve(z *zone, view View, q *question, labels []string) (answer, bool) {
	rel, ok := hasSuffix(labels, r.suffix)
	n := len(rel)
	var addr [16]byte
	if !ok || n < r.apex || !r.fill(&addr, rel[n-r.apex:], 0) || !r.pool.Contains(r.addr(&addr)) {
		return answer{}, false
	}
	apexName := strings.Join(rel[n-r.apex:], ".") + "." + strings.Join(r.suffix, ".") + "."
	soa := z.soaRR(apexName)
	return z.gate(q, func() answer {
		if n > r.full || !r.fill(&addr, rel[:n-r.apex], r.apex) {
			return z.negative(dns.RcodeNameError, soa)
		}
		var ptr []dns.RR
		if n == r.full {
			e, found := view.Reverse(r.addr(&addr))
			if !found && n != r.apex {
				return z.negative(dns.RcodeNameError, soa)
			}
			if found && q.qtype == dns.TypePTR {
				ptr = []dns.RR{&dns.PTR{Hdr: z.hdr(q.owner, dns.TypePTR), Ptr: e.Name + "." + z.origin}}
			}
		}
		if n == r.apex {
			return z.apex(q, soa, ptr)
		}
		return z.positive(q, soa, ptr, nil)
	}), true
}

// fill sets the address bits named by labels (most specific first), whose
// least specific label is at position start counted from the top.
func (r *reverseZone) fill(addr *[16]byte, labels []string, start int) bool {
	for i, l := range labels {
		pos := start + len(labels) - 1 - i
		v, ok := r.parseLabel(l)
		if !ok {
			return false
		}
		if r.step == 8 {
			addr[pos] = v
		} else {
			addr[pos/2] |= v << (4 * (1 - pos%2))
		}
	}
	return true
}

// parseLabel parses an octet in canonical decimal (in-addr.arpa) or a
// lower-case hex nibble (ip6.arpa).
func (r *reverseZone) parseLabel(l string) (byte, bool) {
	if r.step == 4 {
		if len(l) != 1 {
			return 0, false
		}
		i := strings.IndexByte("0123456789abcdef", l[0])
		return byte(i), i >= 0
	}
	if len(l) == 0 || len(l) > 3 || len(l) > 1 && l[0] == '0' {
		return 0, false
	}
	v := 0
	for _, c := range []byte(l) {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return byte(v), v <= 255
}

func (r *reverseZone) addr(b *[16]byte) netip.Addr {
	if r.step == 8 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(*b)
}

// ReverseZones returns the names of the reverse zones (apexes, without the
// final dot) in which a server for pool answers PTR: one for a pool aligned
// on a label boundary ("0.100.10.in-addr.arpa" for 10.100.0.0/24), several
// otherwise (four for a /22). It returns nil when there would be more than
// limit, and for an invalid pool.
func ReverseZones(pool netip.Prefix, limit int) []string {
	if !pool.IsValid() {
		return nil
	}
	r := newReverseZone(pool)
	if r.apex == 0 { // a /0: the whole tree
		return []string{strings.Join(r.suffix, ".")}
	}
	spare := r.apex*r.step - pool.Bits() // bits of the apex the pool leaves free
	if spare >= 31 || 1<<spare > limit {
		return nil
	}
	a := pool.Masked().Addr().AsSlice()
	names := make([]string, 0, 1<<spare)
	for range 1 << spare {
		labels := make([]string, 0, r.apex+2)
		for i := r.apex - 1; i >= 0; i-- {
			if r.step == 8 {
				labels = append(labels, strconv.Itoa(int(a[i])))
			} else {
				labels = append(labels, strconv.FormatUint(uint64(a[i/2]>>(4*(1-i%2))&0xf), 16))
			}
		}
		names = append(names, strings.Join(append(labels, r.suffix...), "."))
		// The next apex: add one at the apex's last bit, carrying.
		last := r.apex*r.step - 1
		inc := byte(1) << (7 - last%8)
		for i := last / 8; i >= 0; i, inc = i-1, 1 {
			old := a[i]
			if a[i] += inc; a[i] > old {
				break
			}
		}
	}
	return names
}
