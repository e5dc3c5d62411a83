package resolver

import (
	"fmt"

	"github.com/miekg/dns"
)

// request is what a reply needs to know of its query.
type request struct {
	id      uint16
	flags   uint16 // the query's header flags
	name    string // the question name as the reply echoes it
	qtype   uint16
	qclass  uint16
	edns    bool
	do      bool
	udpSize uint16
	tcp     bool
}

func (r *request) limit(maxUDP uint16) int {
	return replyLimit(r.tcp, r.edns, r.udpSize, maxUDP)
}

// message builds the reply to r carrying a.
func (s *Server) message(r *request, a *answer) *dns.Msg {
	m := &dns.Msg{
		MsgHdr: dns.MsgHdr{
			Id:                 r.id,
			Response:           true,
			Authoritative:      a.aa,
			RecursionDesired:   r.flags&flagRD != 0,
			RecursionAvailable: s.ra != 0,
			CheckingDisabled:   r.flags&flagCD != 0,
			Rcode:              a.rcode,
		},
		Compress: true,
		Question: []dns.Question{{Name: r.name, Qtype: r.qtype, Qclass: r.qclass}},
		Answer:   a.ans,
		Ns:       a.ns,
		Extra:    a.extra,
	}
	if r.edns {
		opt := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		opt.SetUDPSize(s.cfg.MaxUDPSize)
		opt.SetDo(r.do) // RFC 3225 §3: the DO bit is copied into the response
		m.Extra = append(m.Extra[:len(m.Extra):len(m.Extra)], opt)
	}
	return m
}

// pack packs m into buf, truncated (whole records dropped from the end)
// when it is larger than limit. TC is set when the answer or authority
// section lost records; additional records are left out without it (RFC
// 2181 §9: a client that needs them asks).
func pack(m *dns.Msg, buf []byte, limit int) ([]byte, error) {
	out, err := m.PackBuffer(buf)
	if err == nil && len(out) > limit {
		answers, authority := len(m.Answer), len(m.Ns)
		m.Truncate(limit)
		m.Truncated = len(m.Answer) < answers || len(m.Ns) < authority
		out, err = m.PackBuffer(buf)
	}
	if err != nil {
		return nil, fmt.Errorf("resolver: pack reply: %w", err)
	}
	return out, nil
}
