package resolver

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/ztgate/ztgate/catalog"
)

// nsLabel names the server itself below the zone (ns.<zone>); a service
// cannot take this name.
const nsLabel = "ns"

// SOA timers; only the minimum (the negative-caching TTL) matters to clients,
// as the zone is never transferred.
const (
	soaRefresh = 3600
	soaRetry   = 600
	soaExpire  = 86400
)

// zone answers questions about the service zone and the reverse zones from
// a View. It holds no mutable state.
type zone struct {
	origin  string   // "ztna.internal."
	labels  []string // origin's labels
	ttl     uint32
	serial  uint32
	nsHost  string // "ns.<origin>"
	nsAddr  netip.Addr
	soa     dns.RR // at origin, for negative answers
	reverse []reverseZone
	forward bool // upstreams are configured
}

func newZone(cfg *Config, serial uint32) *zone {
	z := &zone{
		origin:  cfg.Zone,
		labels:  dns.SplitDomainName(cfg.Zone),
		ttl:     uint32(cfg.TTL / time.Second),
		serial:  serial,
		nsHost:  nsLabel + "." + cfg.Zone,
		nsAddr:  cfg.NSAddr,
		forward: len(cfg.Upstreams) > 0,
	}
	z.soa = z.soaRR(z.origin)
	for _, p := range []netip.Prefix{cfg.Pool, cfg.Pool6} {
		if p.IsValid() {
			z.reverse = append(z.reverse, newReverseZone(p))
		}
	}
	return z
}

// resolve answers q from view: from the zones when the name is in one of
// them, else by forwarding (or REFUSED without upstreams).
func (z *zone) resolve(view View, q *question) answer {
	if view == nil {
		return answer{rcode: dns.RcodeRefused}
	}
	labels := wireLabels(q.wire)
	if rel, ok := hasSuffix(labels, z.labels); ok {
		return z.gate(q, func() answer { return z.resolveService(view, q, rel) })
	}
	for i := range z.reverse {
		if a, ok := z.reverse[i].resolve(z, view, q, labels); ok {
			return a
		}
	}
	if z.forward {
		return answer{forward: true}
	}
	return answer{rcode: dns.RcodeRefused}
}

// gate refuses, for a name in the zones, what the zones do not serve: other
// classes than IN and zone transfers.
func (z *zone) gate(q *question, resolve func() answer) answer {
	if q.qclass != dns.ClassINET && q.qclass != dns.ClassANY ||
		q.qtype == dns.TypeAXFR || q.qtype == dns.TypeIXFR {
		return answer{rcode: dns.RcodeRefused}
	}
	return resolve()
}

// resolveService answers for a name below the service zone; rel are its
// labels before the zone's.
func (z *zone) resolveService(view View, q *question, rel []string) answer {
	switch len(rel) {
	case 0:
		return z.apex(q, z.soa, nil)
	case 1:
		if rel[0] == nsLabel {
			return z.positive(q, z.soa, z.addrs(q.owner, q.qtype, z.nsAddr, z.nsAddr), nil)
		}
		if e, ok := lookup(view, rel[0]); ok {
			return z.positive(q, z.soa, z.addrs(q.owner, q.qtype, e.VIP, e.VIP6), nil)
		}
	case 2: // _<proto>.<service>: an empty non-terminal above its SRV names
		if e, ok := lookup(view, rel[1]); ok && len(srvPorts(e, "", rel[0])) > 0 {
			return z.positive(q, z.soa, nil, nil)
		}
	case 3: // _<port>._<proto>.<service>
		if e, ok := lookup(view, rel[2]); ok {
			if ports := srvPorts(e, rel[0], rel[1]); len(ports) > 0 {
				return z.srv(q, e, ports)
			}
		}
	}
	return z.negative(dns.RcodeNameError, z.soa)
}

// lookup finds a service; the label of the server itself is never one.
func lookup(view View, label string) (Entry, bool) {
	if label == nsLabel {
		return Entry{}, false
	}
	return view.Lookup(label)
}

// srvPorts returns the ports of e whose SRV name is <port>.<proto>; an empty
// port matches every port of the protocol.
func srvPorts(e Entry, port, proto string) []catalog.Port {
	var out []catalog.Port
	for _, p := range e.Ports {
		name, ok := strings.CutPrefix(port, "_")
		if proto == "_"+p.Protocol.String() && (port == "" || ok && name == portLabel(p)) {
			out = append(out, p)
		}
	}
	return out
}

// portLabel is the first label of a port's SRV name, without its underscore.
func portLabel(p catalog.Port) string {
	if p.Name != "" {
		return strings.ToLower(p.Name)
	}
	return strconv.Itoa(int(p.Port))
}

// srv answers at the SRV name of ports, with the service's addresses as
// additional records.
func (z *zone) srv(q *question, e Entry, ports []catalog.Port) answer {
	if q.qtype != dns.TypeSRV {
		return z.positive(q, z.soa, nil, nil)
	}
	target := e.Name + "." + z.origin
	rrs := make([]dns.RR, 0, len(ports))
	for _, p := range ports {
		rrs = append(rrs, &dns.SRV{Hdr: z.hdr(q.owner, dns.TypeSRV), Port: p.Port, Target: target})
	}
	return z.positive(q, z.soa, rrs, z.glue(target, e.VIP, e.VIP6))
}

// apex answers at a zone's apex: its SOA and NS, and the PTR a reverse zone
// apex may carry when it is one address.
func (z *zone) apex(q *question, soa dns.RR, more []dns.RR) answer {
	var rrs, extra []dns.RR
	switch q.qtype {
	case dns.TypeSOA:
		rrs = []dns.RR{z.soaRR(q.owner)}
	case dns.TypeNS:
		rrs = []dns.RR{&dns.NS{Hdr: z.hdr(q.owner, dns.TypeNS), Ns: z.nsHost}}
		extra = z.glue(z.nsHost, z.nsAddr, z.nsAddr)
	default:
		rrs = more
	}
	return z.positive(q, soa, rrs, extra)
}

// positive answers at a name that exists: rrs when there are any, a minimal
// answer to ANY (RFC 8482), else NODATA.
func (z *zone) positive(q *question, soa dns.RR, rrs, extra []dns.RR) answer {
	switch {
	case q.qtype == dns.TypeANY:
		return answer{aa: true, ans: []dns.RR{&dns.HINFO{Hdr: z.hdr(q.owner, dns.TypeHINFO), Cpu: "RFC8482"}}}
	case len(rrs) == 0:
		return z.negative(dns.RcodeSuccess, soa)
	}
	return answer{aa: true, ans: rrs, extra: extra}
}

// negative is NXDOMAIN or NODATA with the zone's SOA for negative caching
// (RFC 2308: its TTL is already min(TTL, minimum)).
func (z *zone) negative(rcode int, soa dns.RR) answer {
	return answer{rcode: rcode, aa: true, ns: []dns.RR{soa}}
}

// addrs returns the A (for qtype A) or AAAA (for AAAA) record of owner.
func (z *zone) addrs(owner string, qtype uint16, v4, v6 netip.Addr) []dns.RR {
	switch {
	case qtype == dns.TypeA && v4.Is4():
		return []dns.RR{&dns.A{Hdr: z.hdr(owner, dns.TypeA), A: v4.AsSlice()}}
	case qtype == dns.TypeAAAA && v6.IsValid() && !v6.Is4():
		return []dns.RR{&dns.AAAA{Hdr: z.hdr(owner, dns.TypeAAAA), AAAA: v6.AsSlice()}}
	}
	return nil
}

// glue returns every address record of name.
func (z *zone) glue(name string, v4, v6 netip.Addr) []dns.RR {
	return append(z.addrs(name, dns.TypeA, v4, v6), z.addrs(name, dns.TypeAAAA, v4, v6)...)
}

func (z *zone) soaRR(owner string) dns.RR {
	return &dns.SOA{
		Hdr: z.hdr(owner, dns.TypeSOA), Ns: z.nsHost, Mbox: "hostmaster." + z.origin,
		Serial: z.serial, Refresh: soaRefresh, Retry: soaRetry, Expire: soaExpire, Minttl: z.ttl,
	}
}

func (z *zone) hdr(owner string, rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: owner, Rrtype: rrtype, Class: dns.ClassINET, Ttl: z.ttl}
}
