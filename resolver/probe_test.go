package resolver

import (
	"errors"
	"testing"

	"github.com/miekg/dns"
)

func TestProbeQuery(t *testing.T) {
	tests := []struct {
		name, zone, want string
	}{
		{name: "zone without a dot", zone: "ztna.internal", want: "ztna.internal."},
		{name: "fully qualified", zone: "corp.example.", want: "corp.example."},
		{name: "root", zone: ".", want: "."},
		{name: "invalid name becomes the root", zone: "a..b", want: "."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := mustUnpack(t, ProbeQuery(tc.zone, 77))
			if m.Id != 77 || m.Response || !m.RecursionDesired || len(m.Question) != 1 {
				t.Fatalf("header %+v, questions %v", m.MsgHdr, m.Question)
			}
			if q := m.Question[0]; q.Name != tc.want || q.Qtype != dns.TypeSOA || q.Qclass != dns.ClassINET {
				t.Errorf("question %v, want %s SOA IN", q, tc.want)
			}
		})
	}
}

func TestCheckProbeReply(t *testing.T) {
	s := newTestServer(t, testConfig(), testDirectory())
	reply := func(edit func(m *dns.Msg)) []byte {
		q := new(dns.Msg)
		if err := q.Unpack(ProbeQuery("ztna.internal", 9)); err != nil {
			t.Fatal(err)
		}
		m := new(dns.Msg).SetReply(q)
		if edit != nil {
			edit(m)
		}
		return mustPack(t, m)
	}
	rcode := func(rc int) func(*dns.Msg) { return func(m *dns.Msg) { m.Rcode = rc } }
	tests := []struct {
		name  string
		reply []byte
		id    uint16
		ok    bool
	}{
		{name: "answer of this server", reply: ask(t, s, ProbeQuery("ztna.internal", 9), clientA, false), id: 9, ok: true},
		{name: "NOERROR", reply: reply(nil), id: 9, ok: true},
		{name: "NXDOMAIN is sane", reply: reply(rcode(dns.RcodeNameError)), id: 9, ok: true},
		{name: "REFUSED is sane", reply: reply(rcode(dns.RcodeRefused)), id: 9, ok: true},
		{name: "SERVFAIL", reply: reply(rcode(dns.RcodeServerFailure)), id: 9},
		{name: "other id", reply: reply(nil), id: 10},
		{name: "not a response", reply: reply(func(m *dns.Msg) { m.Response = false }), id: 9},
		{name: "other opcode", reply: reply(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), id: 9},
		{name: "garbage", reply: []byte{0, 9, 0x80}, id: 9},
		{name: "empty", reply: nil, id: 9},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckProbeReply(tc.reply, tc.id)
			if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrProbeFailed) {
				t.Errorf("CheckProbeReply: %v, want ok %v", err, tc.ok)
			}
		})
	}
}
