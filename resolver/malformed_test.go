package resolver

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestHandleMalformed(t *testing.T) {
	s := newTestServer(t, testConfig(), testDirectory())
	good := mustPack(t, newQuery("web.ztna.internal.", dns.TypeA, 0))
	with := func(b []byte, edit func(b []byte) []byte) []byte {
		return edit(append([]byte(nil), b...))
	}
	setFlags := func(or uint16) func([]byte) []byte {
		return func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[2:], binary.BigEndian.Uint16(b[2:])|or)
			return b
		}
	}
	twoOPT := newQuery("web.ztna.internal.", dns.TypeA, 1232)
	twoOPT.Extra = append(twoOPT.Extra, twoOPT.Extra[0])
	twoQuestions := newQuery("web.ztna.internal.", dns.TypeA, 0)
	twoQuestions.Question = append(twoQuestions.Question, twoQuestions.Question[0])
	// web + a pointer to "ztna.internal" placed after the question.
	compressed := append([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'w', 'e', 'b', 0xC0, 22, 0, 1, 0, 1},
		append([]byte{4}, "ztna\x08internal\x00"...)...)
	tests := []struct {
		name       string
		raw        []byte
		reply      bool
		rcode      int
		headerOnly bool
		dropped    string // reason counted when there is no reply
		malformed  bool
	}{
		{name: "empty", raw: nil, dropped: dropMalformed.String(), malformed: true},
		{name: "shorter than a header", raw: good[:11], dropped: dropMalformed.String(), malformed: true},
		{name: "a response", raw: with(good, setFlags(flagQR)), dropped: dropResponse.String()},
		{name: "opcode NOTIFY", raw: with(good, setFlags(dns.OpcodeNotify<<11)), reply: true, rcode: dns.RcodeNotImplemented, headerOnly: true},
		{name: "opcode UPDATE", raw: with(good, setFlags(dns.OpcodeUpdate<<11)), reply: true, rcode: dns.RcodeNotImplemented, headerOnly: true},
		{name: "no question", raw: good[:headerLen], reply: true, rcode: dns.RcodeFormatError, headerOnly: true, malformed: true},
		{name: "qdcount 0 with a question", raw: with(good, func(b []byte) []byte { b[5] = 0; return b }),
			reply: true, rcode: dns.RcodeFormatError, headerOnly: true, malformed: true},
		{name: "two questions", raw: mustPack(t, twoQuestions), reply: true, rcode: dns.RcodeFormatError, headerOnly: true, malformed: true},
		{name: "header then garbage", raw: append(append([]byte(nil), good[:headerLen]...), 0xFF, 0xFE, 0x01),
			reply: true, rcode: dns.RcodeFormatError, headerOnly: true, malformed: true},
		{name: "question cut short", raw: good[:len(good)-2], reply: true, rcode: dns.RcodeFormatError, headerOnly: true, malformed: true},
		{name: "two OPT records", raw: mustPack(t, twoOPT), reply: true, rcode: dns.RcodeFormatError},
		{name: "compressed question name", raw: compressed, reply: true, rcode: dns.RcodeSuccess},
		{name: "trailing octets", raw: append(append([]byte(nil), good...), 1, 2, 3), reply: true, rcode: dns.RcodeSuccess},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dropped := counter(t, s, "ztgate_dns_dropped_total", "reason", tc.dropped)
			malformed := counter(t, s, "ztgate_dns_malformed_total")
			raw := ask(t, s, tc.raw, clientA, false)
			switch {
			case !tc.reply && raw != nil:
				t.Fatalf("reply %x, want none", raw)
			case tc.reply && raw == nil:
				t.Fatal("no reply")
			case raw != nil:
				r := mustUnpack(t, raw)
				if r.Id != binary.BigEndian.Uint16(tc.raw) || !r.Response || r.Rcode != tc.rcode {
					t.Errorf("id %d QR %v rcode %s, want %d true %s", r.Id, r.Response, dns.RcodeToString[r.Rcode],
						binary.BigEndian.Uint16(tc.raw), dns.RcodeToString[tc.rcode])
				}
				if tc.headerOnly && len(raw) != headerLen {
					t.Errorf("%d octets, want a header only", len(raw))
				}
				if !tc.headerOnly && len(r.Question) != 1 {
					t.Errorf("question %v, want the query's", r.Question)
				}
			}
			// ask handles the message three times.
			if got := counter(t, s, "ztgate_dns_dropped_total", "reason", tc.dropped) - dropped; tc.dropped != "" && got != 3 {
				t.Errorf("dropped{%s} moved by %v, want 3", tc.dropped, got)
			}
			if got, want := counter(t, s, "ztgate_dns_malformed_total")-malformed, map[bool]float64{true: 3}[tc.malformed]; got != want {
				t.Errorf("malformed moved by %v, want %v", got, want)
			}
		})
	}
}

// TestBareReplyKeepsOPT: the header-only answers to queries the server
// does not take (NOTIMP for other opcodes, FORMERR for question counts
// other than one and names longer than 255 octets) carry an OPT record
// when the query had one (RFC 6891 §6.1.1), with the DO bit copied; a
// FORMERR without OPT tells the client that the server does not do EDNS.
// A message that cannot be read to its end gets the bare header. Before,
// every such answer was a bare header (found by TestDNSRandom).
func TestBareReplyKeepsOPT(t *testing.T) {
	s := newTestServer(t, testConfig(), testDirectory())
	query := func(name string, edns, do bool, edit func(*dns.Msg)) []byte {
		m := newQuery(name, dns.TypeA, 0)
		if edns {
			m.SetEdns0(1232, do)
		}
		if edit != nil {
			edit(m)
		}
		return mustPack(t, m)
	}
	notify := func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }
	notifyV1 := func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify; m.IsEdns0().SetVersion(1) }
	noQuestion := func(m *dns.Msg) { m.Question = nil }
	twoQuestions := func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }
	long := strings.Repeat("a.", 130) // 261 octets
	tests := []struct {
		name  string
		raw   []byte
		rcode int
		opt   bool
		do    bool
	}{
		{name: "NOTIFY with EDNS", raw: query("web.ztna.internal.", true, true, notify), rcode: dns.RcodeNotImplemented, opt: true, do: true},
		{name: "NOTIFY", raw: query("web.ztna.internal.", false, false, notify), rcode: dns.RcodeNotImplemented},
		// The EDNS version before the opcode, as BIND reads them.
		{name: "NOTIFY with EDNS version 1", raw: query("web.ztna.internal.", true, true, notifyV1), rcode: dns.RcodeBadVers, opt: true, do: true},
		{name: "no question, EDNS (a cookie query)", raw: query("web.ztna.internal.", true, false, noQuestion), rcode: dns.RcodeFormatError, opt: true},
		{name: "no question", raw: query("web.ztna.internal.", false, false, noQuestion), rcode: dns.RcodeFormatError},
		{name: "two questions with EDNS", raw: query("web.ztna.internal.", true, true, twoQuestions), rcode: dns.RcodeFormatError, opt: true, do: true},
		{name: "a name of 261 octets with EDNS", raw: query(long, true, false, nil), rcode: dns.RcodeFormatError, opt: true},
		{name: "a name of 261 octets", raw: query(long, false, false, nil), rcode: dns.RcodeFormatError},
		{name: "question cut short", raw: query("web.ztna.internal.", true, false, nil)[:20], rcode: dns.RcodeFormatError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw := ask(t, s, tc.raw, clientA, false)
			if raw == nil {
				t.Fatal("no reply")
			}
			r := mustUnpack(t, raw)
			if r.Rcode != tc.rcode || len(r.Question)+len(r.Answer)+len(r.Ns) != 0 || len(r.Extra) != map[bool]int{true: 1}[tc.opt] {
				t.Errorf("rcode %s, %d questions, %d/%d/%d records; want %s and a header only, with an OPT record: %v",
					dns.RcodeToString[r.Rcode], len(r.Question), len(r.Answer), len(r.Ns), len(r.Extra), dns.RcodeToString[tc.rcode], tc.opt)
			}
			if opt := r.IsEdns0(); opt != nil && (opt.Do() != tc.do || opt.UDPSize() != DefaultMaxUDPSize || opt.Version() != 0) {
				t.Errorf("OPT %v, want version 0, size %d, DO %v", opt, DefaultMaxUDPSize, tc.do)
			}
		})
	}
}
