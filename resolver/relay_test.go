package resolver

import (
	"cmp"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// TestForwardKeepsQuestionCase: a forwarded answer carries the question as
// the client asked it, in its letter case, whatever case the upstream
// echoed (some lower-case it): a client that checks the case of its
// question (DNS 0x20) takes the answer. Before, the upstream's case was
// relayed (found by TestDNSRandom).
func TestForwardKeepsQuestionCase(t *testing.T) {
	for _, tc := range []struct {
		name    string
		echo    func(string) string
		network string
	}{
		{name: "lower case over UDP", echo: strings.ToLower, network: "udp"},
		{name: "lower case over TCP", echo: strings.ToLower, network: "tcp"},
		{name: "upper case over UDP", echo: strings.ToUpper, network: "udp"},
		{name: "as asked over UDP", echo: func(s string) string { return s }, network: "udp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := serveUpstream(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
				m := new(dns.Msg).SetReply(r)
				m.Question[0].Name = tc.echo(m.Question[0].Name)
				m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: m.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A: net.IPv4(192, 0, 2, 1)}}
				_ = w.WriteMsg(m)
			}))
			cfg := testConfig()
			cfg.Upstreams = []netip.AddrPort{up}
			srv := serve(t, newTestServer(t, cfg, loopbackDir()))
			q := newQuery("ExAmple.COM.", dns.TypeA, 0)
			r := exchangeOver(t, tc.network, map[string]string{"udp": srv.udp, "tcp": srv.tcp}[tc.network], q)
			if len(r.Question) != 1 || r.Question[0] != q.Question[0] {
				t.Errorf("question %v, want %v", r.Question, q.Question)
			}
			if len(r.Answer) != 1 {
				t.Errorf("answer %v, want one A", r.Answer)
			}
		})
	}
}

// TestForwardFitKeepsOPT: an upstream's answer larger than the client
// accepts over UDP is cut to its header and question with TC set, and
// keeps its OPT record when the client sent one (RFC 6891 §6.1.1: an EDNS
// query gets an EDNS reply; one without OPT tells the client that the
// server does not do EDNS). Before, the OPT went with the records (found
// by TestDNSRandom).
func TestForwardFitKeepsOPT(t *testing.T) {
	up := serveUpstream(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		for i := range 100 { // 1,600 bytes and more, whatever the client's size
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.IPv4(192, 0, 2, byte(i))})
		}
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(4096, opt.Do())
			if r.Question[0].Name == "padded.example." { // options that do not fit in 512 bytes
				m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{Padding: make([]byte, 600)}}
			}
		}
		_ = w.WriteMsg(m)
	}))
	cfg := testConfig()
	cfg.Upstreams, cfg.MaxUDPSize = []netip.AddrPort{up}, 1232
	srv := serve(t, newTestServer(t, cfg, loopbackDir()))
	for _, tc := range []struct {
		name    string
		qname   string // default big.example.
		network string
		size    uint16 // 0: no EDNS
		do      bool
		limit   int
		whole   bool
	}{
		{name: "EDNS size above the server's", network: "udp", size: 4096, do: true, limit: 1232},
		{name: "EDNS size of the server", network: "udp", size: 1232, limit: 1232},
		{name: "EDNS size below 512", network: "udp", size: 100, limit: 512},
		{name: "no EDNS", network: "udp", limit: 512},
		{name: "OPT options too large: left out", qname: "padded.example.", network: "udp", size: 512, do: true, limit: 512},
		{name: "TCP", network: "tcp", size: 1232, do: true, limit: maxMsgSize, whole: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newQuery(cmp.Or(tc.qname, "big.example."), dns.TypeA, 0)
			if tc.size > 0 {
				q.SetEdns0(tc.size, tc.do)
			}
			r := exchangeOver(t, tc.network, map[string]string{"udp": srv.udp, "tcp": srv.tcp}[tc.network], q)
			if n := r.Len(); n > tc.limit {
				t.Errorf("reply of %d bytes, the client accepts %d", n, tc.limit)
			}
			if r.Truncated == tc.whole || tc.whole != (len(r.Answer) == 100) {
				t.Errorf("TC %v with %d answers, want the whole answer: %v", r.Truncated, len(r.Answer), tc.whole)
			}
			if len(r.Question) != 1 || r.Question[0] != q.Question[0] {
				t.Errorf("question %v, want %v", r.Question, q.Question)
			}
			opt := r.IsEdns0()
			switch {
			case (opt != nil) != (tc.size > 0):
				t.Errorf("OPT %v; the query had one: %v", opt, tc.size > 0)
			case opt != nil && opt.Do() != tc.do:
				t.Errorf("DO %v, want %v", opt.Do(), tc.do)
			}
		})
	}
}
