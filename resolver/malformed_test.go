package resolver

import (
	"encoding/binary"
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
