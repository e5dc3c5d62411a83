package resolver

import (
	"errors"
	"fmt"

	"github.com/miekg/dns"
)

// ProbeQuery returns a query for the SOA record of zone with the given ID,
// recursion desired (so that a recursive backend answers too), for the UDP
// health check of a DNS backend. A zone that is not a valid name is
// replaced by the root.
func ProbeQuery(zone string, id uint16) []byte {
	if _, ok := dns.IsDomainName(zone); !ok {
		zone = "."
	}
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Id: id, RecursionDesired: true}}
	m.Question = []dns.Question{{Name: dns.Fqdn(zone), Qtype: dns.TypeSOA, Qclass: dns.ClassINET}}
	b, err := m.Pack()
	if err != nil { // IsDomainName accepted it; the root always packs
		m.Question[0].Name = "."
		b, _ = m.Pack()
	}
	return b
}

// ErrProbeFailed is returned by CheckProbeReply for a reply that shows the
// server is not answering sanely.
var ErrProbeFailed = errors.New("resolver: dns probe failed")

// CheckProbeReply checks the reply to ProbeQuery(zone, id). The backend is
// healthy when it answered sanely: a well-formed response (QR set, opcode
// QUERY) with that ID, whose rcode is anything but SERVFAIL. NXDOMAIN and
// REFUSED count as healthy, since they are answers from the server's data or
// policy; SERVFAIL is the server saying it cannot work.
func CheckProbeReply(reply []byte, id uint16) error {
	var m dns.Msg
	if err := m.Unpack(reply); err != nil {
		return fmt.Errorf("%w: malformed reply: %w", ErrProbeFailed, err)
	}
	switch {
	case !m.Response:
		return fmt.Errorf("%w: not a response", ErrProbeFailed)
	case m.Id != id:
		return fmt.Errorf("%w: id %d, want %d", ErrProbeFailed, m.Id, id)
	case m.Opcode != dns.OpcodeQuery:
		return fmt.Errorf("%w: opcode %d", ErrProbeFailed, m.Opcode)
	case m.Rcode == dns.RcodeServerFailure:
		return fmt.Errorf("%w: rcode SERVFAIL", ErrProbeFailed)
	}
	return nil
}
