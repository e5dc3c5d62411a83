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
