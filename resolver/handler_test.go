package resolver

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// ask answers raw three ways and requires the same bytes from each: through
// the dns.Handler adapter with a fake ResponseWriter, then twice through
// handle with one worker (a cache miss, then a hit). It returns the reply,
// or nil when every way dropped the query.
func ask(t *testing.T, s *Server, raw []byte, client netip.Addr, tcp bool) []byte {
	t.Helper()
	w := newFakeWriter(client, tcp)
	s.serveRaw(w, raw)
	var got []byte
	switch r := w.replies(); len(r) {
	case 0:
	case 1:
		got = r[0]
	default:
		t.Fatalf("%d replies to one query", len(r))
	}
	wk := s.newWorker()
	for i := range 2 {
		out, fwd := s.handle(wk, raw, client, tcp)
		if fwd {
			t.Fatalf("round %d: forwarded, but the test server has no upstreams", i)
		}
		if !bytes.Equal(out, got) {
			t.Fatalf("round %d of handle differs from the handler:\n got %x\nwant %x", i, out, got)
		}
	}
	return got
}

func TestHandle(t *testing.T) {
	s := newTestServer(t, testConfig(), testDirectory())
	ptr6, _ := dns.ReverseAddr("fd00:ab::a")
	soa := soaString(s, "ztna.internal.")
	rev4 := soaString(s, "0.100.10.in-addr.arpa.")
	rev6 := soaString(s, "0.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa.")
	withOPT := func(size uint16, do bool) func(*dns.Msg) {
		return func(m *dns.Msg) { m.SetEdns0(size, do) }
	}
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		edit   func(*dns.Msg) // changes the query
		client netip.Addr     // default clientA
		tcp    bool
		rcode  int
		aa     bool
		answer []string
		ns     []string
		extra  []string
		check  func(t *testing.T, r *dns.Msg)
	}{
		{name: "A", qname: "web.ztna.internal.", qtype: dns.TypeA, aa: true,
			answer: []string{"web.ztna.internal. 30 IN A 10.100.0.10"}},
		{name: "AAAA with an IPv6 VIP", qname: "web.ztna.internal.", qtype: dns.TypeAAAA, aa: true,
			answer: []string{"web.ztna.internal. 30 IN AAAA fd00:ab::a"}},
		{name: "AAAA without an IPv6 VIP is NODATA", qname: "dns.ztna.internal.", qtype: dns.TypeAAAA, aa: true, ns: []string{soa}},
		{name: "TXT is NODATA", qname: "web.ztna.internal.", qtype: dns.TypeTXT, aa: true, ns: []string{soa}},
		{name: "MX is NODATA", qname: "web.ztna.internal.", qtype: dns.TypeMX, aa: true, ns: []string{soa}},
		{name: "SRV of a named port", qname: "_http._tcp.web.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			answer: []string{"_http._tcp.web.ztna.internal. 30 IN SRV 0 0 80 web.ztna.internal."},
			extra:  []string{"web.ztna.internal. 30 IN A 10.100.0.10", "web.ztna.internal. 30 IN AAAA fd00:ab::a"}},
		{name: "SRV of a numbered port", qname: "_443._tcp.web.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			answer: []string{"_443._tcp.web.ztna.internal. 30 IN SRV 0 0 443 web.ztna.internal."},
			extra:  []string{"web.ztna.internal. 30 IN A 10.100.0.10", "web.ztna.internal. 30 IN AAAA fd00:ab::a"}},
		{name: "SRV over UDP", qname: "_53._udp.dns.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			answer: []string{"_53._udp.dns.ztna.internal. 30 IN SRV 0 0 53 dns.ztna.internal."},
			extra:  []string{"dns.ztna.internal. 30 IN A 10.100.0.11"}},
		{name: "SRV of the wrong protocol", qname: "_http._udp.web.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "SRV of an unknown port", qname: "_ftp._tcp.web.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "A at an SRV name is NODATA", qname: "_http._tcp.web.ztna.internal.", qtype: dns.TypeA, aa: true, ns: []string{soa}},
		{name: "protocol label is an empty non-terminal", qname: "_tcp.web.ztna.internal.", qtype: dns.TypeTXT, aa: true, ns: []string{soa}},
		{name: "protocol label without ports", qname: "_udp.web.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "below an SRV name", qname: "x._http._tcp.web.ztna.internal.", qtype: dns.TypeA, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "SOA at the apex", qname: "ztna.internal.", qtype: dns.TypeSOA, aa: true, answer: []string{soa}},
		{name: "NS at the apex with glue", qname: "ztna.internal.", qtype: dns.TypeNS, aa: true,
			answer: []string{"ztna.internal. 30 IN NS ns.ztna.internal."},
			extra:  []string{"ns.ztna.internal. 30 IN A 10.100.0.1"}},
		{name: "A at the apex is NODATA", qname: "ztna.internal.", qtype: dns.TypeA, aa: true, ns: []string{soa}},
		{name: "the name server's A", qname: "ns.ztna.internal.", qtype: dns.TypeA, aa: true,
			answer: []string{"ns.ztna.internal. 30 IN A 10.100.0.1"}},
		{name: "the name server's AAAA is NODATA", qname: "ns.ztna.internal.", qtype: dns.TypeAAAA, aa: true, ns: []string{soa}},
		{name: "unknown name", qname: "nope.ztna.internal.", qtype: dns.TypeA, aa: true, rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "below the name server", qname: "x.ns.ztna.internal.", qtype: dns.TypeA, aa: true, rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "below a service", qname: "x.web.ztna.internal.", qtype: dns.TypeA, aa: true, rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "mixed case", qname: "WeB.ZTNA.Internal.", qtype: dns.TypeA, aa: true,
			answer: []string{"web.ztna.internal. 30 IN A 10.100.0.10"},
			check: func(t *testing.T, r *dns.Msg) {
				if r.Question[0].Name != "WeB.ZTNA.Internal." {
					t.Errorf("question %q, want the query's case", r.Question[0].Name)
				}
			}},
		{name: "ANY is minimal", qname: "web.ztna.internal.", qtype: dns.TypeANY, aa: true,
			answer: []string{`web.ztna.internal. 30 IN HINFO "RFC8482" ""`}},
		{name: "ANY of an unknown name", qname: "nope.ztna.internal.", qtype: dns.TypeANY, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "PTR of an IPv4 VIP", qname: "10.0.100.10.in-addr.arpa.", qtype: dns.TypePTR, aa: true,
			answer: []string{"10.0.100.10.in-addr.arpa. 30 IN PTR web.ztna.internal."}},
		{name: "PTR of an IPv6 VIP", qname: ptr6, qtype: dns.TypePTR, aa: true,
			answer: []string{ptr6 + " 30 IN PTR web.ztna.internal."}},
		{name: "A at a VIP's reverse name is NODATA", qname: "10.0.100.10.in-addr.arpa.", qtype: dns.TypeA, aa: true, ns: []string{rev4}},
		{name: "PTR of an unknown address", qname: "99.0.100.10.in-addr.arpa.", qtype: dns.TypePTR, aa: true,
			rcode: dns.RcodeNameError, ns: []string{rev4}},
		{name: "PTR of another tenant's VIP", qname: "13.0.100.10.in-addr.arpa.", qtype: dns.TypePTR, aa: true,
			rcode: dns.RcodeNameError, ns: []string{rev4}},
		{name: "SOA of the reverse zone", qname: "0.100.10.in-addr.arpa.", qtype: dns.TypeSOA, aa: true, answer: []string{rev4}},
		{name: "NS of the reverse zone", qname: "0.100.10.in-addr.arpa.", qtype: dns.TypeNS, aa: true,
			answer: []string{"0.100.10.in-addr.arpa. 30 IN NS ns.ztna.internal."},
			extra:  []string{"ns.ztna.internal. 30 IN A 10.100.0.1"}},
		{name: "reverse label not canonical", qname: "010.0.100.10.in-addr.arpa.", qtype: dns.TypePTR, aa: true,
			rcode: dns.RcodeNameError, ns: []string{rev4}},
		{name: "below a reverse address", qname: "1.10.0.100.10.in-addr.arpa.", qtype: dns.TypePTR, aa: true,
			rcode: dns.RcodeNameError, ns: []string{rev4}},
		{name: "IPv6 reverse empty non-terminal", qname: "0.0.0.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa.", qtype: dns.TypePTR,
			aa: true, ns: []string{rev6}},
		{name: "reverse name outside the pool", qname: "1.0.0.127.in-addr.arpa.", qtype: dns.TypePTR, rcode: dns.RcodeRefused},
		{name: "reverse name above the zone", qname: "100.10.in-addr.arpa.", qtype: dns.TypeSOA, rcode: dns.RcodeRefused},
		{name: "outside the zones without upstreams", qname: "example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "tenant B does not see web", qname: "web.ztna.internal.", qtype: dns.TypeA, client: clientB, aa: true,
			rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "tenant B sees db", qname: "db.ztna.internal.", qtype: dns.TypeA, client: clientB, aa: true,
			answer: []string{"db.ztna.internal. 30 IN A 10.100.0.13"}},
		{name: "tenant B sees the apex", qname: "ztna.internal.", qtype: dns.TypeSOA, client: clientB, aa: true, answer: []string{soa}},
		{name: "no view: the apex is refused", qname: "ztna.internal.", qtype: dns.TypeSOA, client: clientNone, rcode: dns.RcodeRefused},
		{name: "no view: a service is refused", qname: "web.ztna.internal.", qtype: dns.TypeA, client: clientNone, rcode: dns.RcodeRefused},
		{name: "class CH in the zone", qname: "web.ztna.internal.", qtype: dns.TypeA, rcode: dns.RcodeRefused,
			edit: func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }},
		{name: "class ANY in the zone", qname: "web.ztna.internal.", qtype: dns.TypeA, aa: true,
			answer: []string{"web.ztna.internal. 30 IN A 10.100.0.10"},
			edit:   func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY }},
		{name: "zone transfer", qname: "ztna.internal.", qtype: dns.TypeAXFR, tcp: true, rcode: dns.RcodeRefused},
		{name: "EDNS answer carries OPT", qname: "web.ztna.internal.", qtype: dns.TypeA, aa: true, edit: withOPT(1232, false),
			answer: []string{"web.ztna.internal. 30 IN A 10.100.0.10"},
			check: func(t *testing.T, r *dns.Msg) {
				opt := r.IsEdns0()
				if opt == nil || opt.UDPSize() != DefaultMaxUDPSize || opt.Do() {
					t.Errorf("OPT %v, want size %d without DO", opt, DefaultMaxUDPSize)
				}
			}},
		{name: "EDNS DO bit is copied", qname: "web.ztna.internal.", qtype: dns.TypeA, aa: true, edit: withOPT(1232, true),
			answer: []string{"web.ztna.internal. 30 IN A 10.100.0.10"},
			check: func(t *testing.T, r *dns.Msg) {
				if opt := r.IsEdns0(); opt == nil || !opt.Do() {
					t.Errorf("OPT %v, want DO", opt)
				}
			}},
		{name: "no OPT without EDNS", qname: "web.ztna.internal.", qtype: dns.TypeA, aa: true,
			answer: []string{"web.ztna.internal. 30 IN A 10.100.0.10"},
			check: func(t *testing.T, r *dns.Msg) {
				if r.IsEdns0() != nil || r.RecursionAvailable || !r.RecursionDesired {
					t.Errorf("OPT %v RA %v RD %v, want none, false, true", r.IsEdns0(), r.RecursionAvailable, r.RecursionDesired)
				}
			}},
		{name: "RD and CD are echoed", qname: "web.ztna.internal.", qtype: dns.TypeA, aa: true,
			answer: []string{"web.ztna.internal. 30 IN A 10.100.0.10"},
			edit:   func(m *dns.Msg) { m.RecursionDesired, m.CheckingDisabled = false, true },
			check: func(t *testing.T, r *dns.Msg) {
				if r.RecursionDesired || !r.CheckingDisabled {
					t.Errorf("RD %v CD %v, want false, true", r.RecursionDesired, r.CheckingDisabled)
				}
			}},
		{name: "large answer over UDP without EDNS is truncated", qname: "_svc._tcp.big.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			check: wantSRV(60, true, dns.MinMsgSize)},
		{name: "large answer with a small EDNS size is truncated", qname: "_svc._tcp.big.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			edit: withOPT(1232, false), check: wantSRV(60, true, 1232)},
		{name: "EDNS size below 512 counts as 512", qname: "_svc._tcp.big.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			edit: withOPT(100, false), check: wantSRV(60, true, dns.MinMsgSize)},
		{name: "large answer fits the client's EDNS size", qname: "_svc._tcp.big.ztna.internal.", qtype: dns.TypeSRV, aa: true,
			edit: withOPT(4096, false), check: wantSRV(60, false, 4096)},
		{name: "large answer over TCP", qname: "_svc._tcp.big.ztna.internal.", qtype: dns.TypeSRV, aa: true, tcp: true,
			check: wantSRV(60, false, dns.MaxMsgSize)},
		{name: "EDNS version 1 is BADVERS", qname: "web.ztna.internal.", qtype: dns.TypeA, rcode: dns.RcodeBadVers,
			edit: func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) },
			check: func(t *testing.T, r *dns.Msg) {
				if opt := r.IsEdns0(); opt == nil || opt.Version() != 0 {
					t.Errorf("OPT %v, want version 0", opt)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := newQuery(tc.qname, tc.qtype, 0)
			if tc.edit != nil {
				tc.edit(q)
			}
			client := tc.client
			if !client.IsValid() {
				client = clientA
			}
			raw := ask(t, s, mustPack(t, q), client, tc.tcp)
			if raw == nil {
				t.Fatal("no reply")
			}
			r := mustUnpack(t, raw)
			if r.Id != q.Id || !r.Response || r.Rcode != tc.rcode || r.Authoritative != tc.aa {
				t.Errorf("id %d response %v rcode %s aa %v, want %d true %s %v",
					r.Id, r.Response, dns.RcodeToString[r.Rcode], r.Authoritative, q.Id, dns.RcodeToString[tc.rcode], tc.aa)
			}
			if len(r.Question) != 1 || r.Question[0] != q.Question[0] {
				t.Errorf("question %v, want %v", r.Question, q.Question)
			}
			if tc.check == nil || tc.answer != nil {
				compareRRs(t, "answer", r.Answer, tc.answer)
			}
			if tc.check == nil || tc.ns != nil {
				compareRRs(t, "authority", r.Ns, tc.ns)
			}
			if tc.check == nil || tc.extra != nil {
				compareRRs(t, "additional", r.Extra, tc.extra)
			}
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}
}

// compareRRs compares records with want, ignoring the owner names' case.
func compareRRs(t *testing.T, section string, got []dns.RR, want []string) {
	t.Helper()
	g := rrStrings(got)
	for i := range g {
		owner, rest, _ := strings.Cut(g[i], " ")
		g[i] = strings.ToLower(owner) + " " + rest
	}
	if !slices.Equal(g, want) {
		t.Errorf("%s:\n got %q\nwant %q", section, g, want)
	}
}

// wantSRV checks an answer of up to n SRV records: truncated (TC, fewer
// records, cleanly packed) or whole, within limit octets.
func wantSRV(n int, truncated bool, limit int) func(t *testing.T, r *dns.Msg) {
	return func(t *testing.T, r *dns.Msg) {
		t.Helper()
		r.Compress = true // as the server packed it
		b, _ := r.Pack()
		if r.Truncated != truncated || len(b) > limit {
			t.Errorf("TC %v, %d octets; want TC %v within %d", r.Truncated, len(b), truncated, limit)
		}
		if got := len(r.Answer); truncated && got >= n || !truncated && got != n {
			t.Errorf("%d SRV records, truncated %v; want %d", got, truncated, n)
		}
		for _, rr := range r.Answer {
			if _, ok := rr.(*dns.SRV); !ok {
				t.Errorf("record %v, want SRV", rr)
			}
		}
	}
}
