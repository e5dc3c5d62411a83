package resolvertest

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// Ask sends one query over c, a datagram connection to a DNS server, for
// name (a domain name, or an address whose reverse name is asked) and type
// (such as "A", "PTR"), and returns the reply's rcode ("NOERROR",
// "REFUSED", …) and the data of its answers in presentation form (an A's
// address, a PTR's target). It lets packages that may not import the DNS
// library (only resolver may) test a DNS server.
func Ask(c net.Conn, name, qtype string) (rcode string, answers []string, err error) {
	t, ok := dns.StringToType[qtype]
	if !ok {
		return "", nil, fmt.Errorf("resolvertest: unknown type %q", qtype)
	}
	if a, err := netip.ParseAddr(name); err == nil {
		if name, err = dns.ReverseAddr(a.String()); err != nil {
			return "", nil, err
		}
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), t)
	r, _, err := new(dns.Client).ExchangeWithConn(q, &dns.Conn{Conn: c})
	if err != nil {
		return "", nil, err
	}
	for _, rr := range r.Answer {
		h := rr.Header().String()
		answers = append(answers, strings.TrimSpace(strings.TrimPrefix(rr.String(), h)))
	}
	return dns.RcodeToString[r.Rcode], answers, nil
}

// Reply is an answer as Exchange reads it: the rcode and the records of
// the answer and authority sections, each whole in presentation form
// (owner, TTL, class, type, data).
type Reply struct {
	Rcode     string
	Answer    []string
	Authority []string
}

// Exchange is Ask that returns whole records, TTLs included, of the answer
// and the authority section (where a negative answer's SOA is).
func Exchange(c net.Conn, name, qtype string) (Reply, error) {
	t, ok := dns.StringToType[qtype]
	if !ok {
		return Reply{}, fmt.Errorf("resolvertest: unknown type %q", qtype)
	}
	if a, err := netip.ParseAddr(name); err == nil {
		if name, err = dns.ReverseAddr(a.String()); err != nil {
			return Reply{}, err
		}
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), t)
	r, _, err := new(dns.Client).ExchangeWithConn(q, &dns.Conn{Conn: c})
	if err != nil {
		return Reply{}, err
	}
	out := Reply{Rcode: dns.RcodeToString[r.Rcode]}
	for _, rr := range r.Answer {
		out.Answer = append(out.Answer, rr.String())
	}
	for _, rr := range r.Ns {
		out.Authority = append(out.Authority, rr.String())
	}
	return out, nil
}
