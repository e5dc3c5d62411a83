package resolver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// clientUDPSize is the EDNS UDP size the Client advertises (DNS flag day 2020).
const clientUDPSize = 1232

// ErrNotFound is returned (wrapped) when a name does not exist or has no
// record of the asked type.
var ErrNotFound = errors.New("resolver: name not found")

// Client resolves backend host names for DNS-based discovery, returning the
// answer's TTL. Its zero value uses the system's nameservers.
type Client struct {
	Nameservers []netip.AddrPort // asked in order; empty: SystemNameservers()
	Timeout     time.Duration    // one attempt at one nameserver; default 2s
}

// SRV is one SRV record (RFC 2782).
type SRV struct {
	Target   string // fully qualified, lower case, with the trailing dot
	Port     uint16
	Priority uint16
	Weight   uint16
}

// LookupHost returns the IPv4 and IPv6 addresses of name (asked in parallel)
// and the smallest TTL of the answers. An IP literal is returned as is, with
// TTL 0. When there is no address, the error wraps ErrNotFound and the TTL
// is the negative-caching TTL of the zone (0 if unknown).
func (c *Client) LookupHost(ctx context.Context, name string) ([]netip.Addr, time.Duration, error) {
	if a, err := netip.ParseAddr(name); err == nil {
		return []netip.Addr{a.Unmap()}, 0, nil
	}
	var res [2]lookupResult
	var wg sync.WaitGroup
	for i, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		wg.Go(func() { res[i] = c.lookup(ctx, name, qtype) })
	}
	wg.Wait()
	var addrs []netip.Addr
	for _, r := range res {
		for _, rr := range r.rrs {
			switch rr := rr.(type) {
			case *dns.A:
				addrs = appendAddr(addrs, rr.A)
			case *dns.AAAA:
				addrs = appendAddr(addrs, rr.AAAA)
			}
		}
	}
	if len(addrs) > 0 {
		return addrs, minTTL(res[:]), nil
	}
	if err := cmp.Or(res[0].err, res[1].err); err != nil && !errors.Is(err, ErrNotFound) {
		return nil, 0, err
	}
	return nil, min(res[0].ttl, res[1].ttl), fmt.Errorf("resolver: lookup %s: %w", name, ErrNotFound)
}

// LookupSRV returns the SRV records of name, ordered by priority and then
// by descending weight, and the smallest TTL of the answer. When there are
// none, the error wraps ErrNotFound and the TTL is the negative-caching TTL.
func (c *Client) LookupSRV(ctx context.Context, name string) ([]SRV, time.Duration, error) {
	r := c.lookup(ctx, name, dns.TypeSRV)
	var out []SRV
	for _, rr := range r.rrs {
		if rr, ok := rr.(*dns.SRV); ok {
			out = append(out, SRV{Target: strings.ToLower(rr.Target), Port: rr.Port, Priority: rr.Priority, Weight: rr.Weight})
		}
	}
	if r.err != nil {
		return nil, r.ttl, r.err
	}
	if len(out) == 0 {
		return nil, r.ttl, fmt.Errorf("resolver: lookup %s: %w", name, ErrNotFound)
	}
	slices.SortStableFunc(out, func(a, b SRV) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(b.Weight, a.Weight))
	})
	return out, r.ttl, nil
}

// lookupResult is the answer to one question: the records of the asked type
// and their smallest TTL (or the negative TTL when there are none).
type lookupResult struct {
	rrs []dns.RR
	ttl time.Duration
	err error
}

// lookup asks the nameservers in order until one answers NOERROR or
// NXDOMAIN.
func (c *Client) lookup(ctx context.Context, name string, qtype uint16) lookupResult {
	query, err := clientQuery(name, qtype)
	if err != nil {
		return lookupResult{err: err}
	}
	servers := c.Nameservers
	if len(servers) == 0 {
		servers = SystemNameservers()
	}
	timeout := cmp.Or(c.Timeout, DefaultForwardTimeout)
	buf := make([]byte, maxMsgSize)
	errs := []error{fmt.Errorf("resolver: lookup %s: no nameserver answered", name)}
	for _, ns := range servers {
		reply, err := exchange(ctx, ns, query, buf, timeout, true)
		if err == nil {
			var r lookupResult
			if r, err = parseAnswer(reply, qtype); err == nil {
				return r
			}
		}
		errs = append(errs, err)
	}
	return lookupResult{err: errors.Join(errs...)}
}

// clientQuery packs a recursive query with EDNS for name.
func clientQuery(name string, qtype uint16) ([]byte, error) {
	fqdn := dns.Fqdn(name)
	if _, ok := dns.IsDomainName(fqdn); !ok {
		return nil, fmt.Errorf("resolver: lookup %q: not a domain name", name)
	}
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Id: randomID(), RecursionDesired: true}}
	m.Question = []dns.Question{{Name: fqdn, Qtype: qtype, Qclass: dns.ClassINET}}
	m.SetEdns0(clientUDPSize, false)
	b, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("resolver: lookup %q: %w", name, err)
	}
	return b, nil
}

// parseAnswer reads the records of qtype from a NOERROR reply, or the
// negative TTL of a NOERROR/NODATA or NXDOMAIN reply (NXDOMAIN as an error
// wrapping ErrNotFound). Other rcodes are errors: the next server is asked.
func parseAnswer(reply []byte, qtype uint16) (lookupResult, error) {
	var m dns.Msg
	if err := m.Unpack(reply); err != nil {
		return lookupResult{}, fmt.Errorf("resolver: malformed answer: %w", err)
	}
	r := lookupResult{ttl: negativeTTL(&m)}
	switch m.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		r.err = fmt.Errorf("resolver: NXDOMAIN: %w", ErrNotFound)
		return r, nil
	default:
		return r, fmt.Errorf("resolver: answer %s", dns.RcodeToString[m.Rcode])
	}
	ttl := uint32(0)
	for i, rr := range m.Answer { // the TTL of a CNAME on the way counts too
		h := rr.Header()
		if i == 0 || h.Ttl < ttl {
			ttl = h.Ttl
		}
		if h.Rrtype == qtype && h.Class == dns.ClassINET {
			r.rrs = append(r.rrs, rr)
		}
	}
	if len(r.rrs) > 0 {
		r.ttl = time.Duration(ttl) * time.Second
	}
	return r, nil
}

// negativeTTL is how long a negative answer may be cached (RFC 2308 §5).
func negativeTTL(m *dns.Msg) time.Duration {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return 0
}

// minTTL is the smallest TTL of the results that carry records.
func minTTL(res []lookupResult) time.Duration {
	ttl := time.Duration(-1)
	for _, r := range res {
		if len(r.rrs) > 0 && (ttl < 0 || r.ttl < ttl) {
			ttl = r.ttl
		}
	}
	return max(ttl, 0)
}

func appendAddr(addrs []netip.Addr, ip []byte) []netip.Addr {
	if a, ok := netip.AddrFromSlice(ip); ok {
		return append(addrs, a.Unmap())
	}
	return addrs
}
