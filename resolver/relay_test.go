package resolver

import (
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
