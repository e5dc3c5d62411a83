package resolver

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzHandleQuery feeds arbitrary bytes to the server as a query: it must
// never panic, and either drop the message or answer with a well-formed
// response carrying the query's ID. A second pass through the same worker
// (the cache) must give the same bytes.
func FuzzHandleQuery(f *testing.F) {
	seeds := []*dns.Msg{
		newQuery("web.ztna.internal.", dns.TypeA, 0),
		newQuery("WEB.ztna.internal.", dns.TypeAAAA, 1232),
		newQuery("_http._tcp.web.ztna.internal.", dns.TypeSRV, 4096),
		newQuery("_svc._tcp.big.ztna.internal.", dns.TypeSRV, 0),
		newQuery("10.0.100.10.in-addr.arpa.", dns.TypePTR, 0),
		newQuery("a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa.", dns.TypePTR, 0),
		newQuery("ztna.internal.", dns.TypeANY, 0),
		newQuery("example.com.", dns.TypeA, 0),
	}
	for _, m := range seeds {
		f.Add(mustPack(f, m), false)
	}
	f.Add([]byte{0, 1, 0x28, 0, 0, 1, 0, 0, 0, 0, 0, 0}, true)
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), false)
	s := newTestServer(f, testConfig(), testDirectory())
	w := s.newWorker() // inputs run one at a time; its cache carries over
	f.Fuzz(func(t *testing.T, raw []byte, tcp bool) {
		out, fwd := s.handle(w, raw, clientA, tcp)
		if fwd {
			t.Fatal("forwarded without upstreams")
		}
		if out == nil {
			return
		}
		first := bytes.Clone(out)
		var m dns.Msg
		if err := m.Unpack(first); err != nil {
			t.Fatalf("reply %x does not parse: %v", first, err)
		}
		if !m.Response || m.Id != binary.BigEndian.Uint16(raw) {
			t.Fatalf("reply %v: not a response to ID %x", m.MsgHdr, raw[:2])
		}
		if !tcp && len(first) > int(s.cfg.MaxUDPSize) {
			t.Fatalf("%d octets over UDP", len(first))
		}
		if again, _ := s.handle(w, raw, clientA, tcp); !bytes.Equal(again, first) {
			t.Fatalf("second reply differs:\n%x\n%x", again, first)
		}
	})
}

// FuzzParseAnswer feeds arbitrary bytes to the Client's and the
// forwarder's reply checks: no panic, and a reply accepted by isReplyTo
// has the query's ID.
func FuzzParseAnswer(f *testing.F) {
	query, _ := clientQuery("web.ztna.internal", dns.TypeA)
	s := newTestServer(f, testConfig(), testDirectory())
	answer, _ := s.handle(s.newWorker(), query, clientA, false)
	f.Add(bytes.Clone(answer))
	f.Add([]byte{0, 0, 0x80, 0})
	f.Fuzz(func(t *testing.T, reply []byte) {
		if isReplyTo(query, reply) && !bytes.Equal(reply[:2], query[:2]) {
			t.Fatal("accepted a reply with another ID")
		}
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV} {
			r, err := parseAnswer(reply, qtype)
			if err == nil && r.ttl < 0 {
				t.Fatalf("negative TTL %v", r.ttl)
			}
		}
		if CheckProbeReply(reply, 0) == nil && (len(reply) < 2 || reply[0] != 0 || reply[1] != 0) {
			t.Fatal("probe reply with another ID accepted")
		}
	})
}

// FuzzParseResolvConf: no panic, and every result is a valid address on
// port 53.
func FuzzParseResolvConf(f *testing.F) {
	f.Add("nameserver 127.0.0.53\noptions edns0\n")
	f.Add("nameserver fe80::1%eth0 # x\n;c\n")
	f.Fuzz(func(t *testing.T, text string) {
		for _, ap := range parseResolvConf(strings.NewReader(text)) {
			if !ap.IsValid() || ap.Port() != 53 {
				t.Fatalf("nameserver %v", ap)
			}
		}
	})
}

// FuzzChain: whatever query a client sends, the chain's entry is added
// without a panic, the query that goes upstream parses, keeps its
// question and carries exactly one entry more than it came with, and an
// answer of any bytes loses what the chain added without a panic.
func FuzzChain(f *testing.F) {
	withChain := newQuery("chained.example.", dns.TypeA, 1232)
	withChain.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_LOCAL{Code: chainOption, Data: make([]byte, 3*chainEntryLen+3)}}
	for _, m := range []*dns.Msg{newQuery("example.com.", dns.TypeA, 0), newQuery("example.com.", dns.TypeAAAA, 4096), withChain} {
		f.Add(mustPack(f, m))
	}
	s := newTestServer(f, testConfig(), testDirectory())
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, ok := s.chain(raw, 0x1234)
		for _, added := range []bool{false, true} {
			reply := bytes.Clone(raw)
			out := unchain(reply, added)
			if len(out) > len(raw) {
				t.Fatalf("unchain made a reply of %d bytes longer (%d)", len(raw), len(out))
			}
			if new(dns.Msg).Unpack(raw) == nil {
				if err := new(dns.Msg).Unpack(out); err != nil {
					t.Fatalf("unchain(%v) broke a reply that parsed: %v", added, err)
				}
			}
		}
		if !ok || c.long || c.back {
			return
		}
		in := new(dns.Msg)
		if in.Unpack(raw) != nil {
			return
		}
		out := mustUnpack(t, c.query)
		if out.Id != 0x1234 || !slices.Equal(in.Question, out.Question) {
			t.Fatalf("the query upstream has ID %d, question %v; want 0x1234, %v", out.Id, out.Question, in.Question)
		}
		before := len(chainEntries(in)) / chainEntryLen
		if after := len(chainEntries(out)); after != (before+1)*chainEntryLen {
			t.Fatalf("a chain of %d entries became %d bytes", before, after)
		}
	})
}

// FuzzFit feeds arbitrary bytes to the forwarder as an upstream's answer to
// a UDP client that accepts 512 bytes: one that isReplyTo takes is fitted
// without a panic, within 512 bytes; one cut to fit has TC set, and parses
// with its question and OPT record when the whole did (and had no bytes
// after its last record).
func FuzzFit(f *testing.F) {
	query := mustPack(f, newQuery("big.example.", dns.TypeA, 512))
	for _, seed := range fitSeeds(f, query) {
		f.Add(seed)
	}
	s := newTestServer(f, testConfig(), testDirectory())
	f.Fuzz(func(t *testing.T, whole []byte) {
		if !isReplyTo(query, whole) {
			return
		}
		out := s.fit(bytes.Clone(whole), query, false) // it cuts in place
		switch {
		case len(out) > dns.MinMsgSize:
			t.Fatalf("%d bytes for a client of 512", len(out))
		case len(whole) <= dns.MinMsgSize:
			if !bytes.Equal(out, whole) {
				t.Fatalf("an answer that fits was changed:\n%x\n%x", whole, out)
			}
			return
		case be16(out[2:])&flagTC == 0:
			t.Fatal("cut without TC")
		}
		if new(dns.Msg).Unpack(whole) != nil {
			return
		}
		m := mustUnpack(t, out)
		opt, _ := findOPT(whole) // found also when bytes follow the last record
		if len(m.Question) != 1 || len(m.Answer)+len(m.Ns) != 0 || (m.IsEdns0() != nil) != opt.found {
			t.Fatalf("cut to %v; the whole had an OPT record: %v", m, opt.found)
		}
	})
}

// TestFitKeepsOPTBeforeTrailingBytes: an upstream answer cut to a UDP
// client's size keeps its OPT record also when bytes follow its last
// record (miekg/dns and most resolvers read such an answer); without it
// the client would take this server for one that does not do EDNS.
func TestFitKeepsOPTBeforeTrailingBytes(t *testing.T) {
	query := mustPack(t, newQuery("big.example.", dns.TypeA, 512))
	s := newTestServer(t, testConfig(), testDirectory())
	for i, whole := range fitSeeds(t, query) {
		out := s.fit(bytes.Clone(whole), query, false)
		m := mustUnpack(t, out)
		opt, _ := findOPT(whole)
		if got := m.IsEdns0() != nil; got != opt.found {
			t.Errorf("seed %d (%d bytes): OPT in the cut answer %v, in the whole %v", i, len(whole), got, opt.found)
		}
	}
}

// fitSeeds are answers to query: larger than 512 bytes with an OPT record,
// with one whose options alone are larger, without one, with bytes after
// the OPT record, and one that fits.
func fitSeeds(t testing.TB, query []byte) [][]byte {
	q := mustUnpack(t, query)
	var seeds [][]byte
	for _, tc := range []struct {
		records  int
		opt      bool
		padding  int
		trailing int
	}{{40, true, 0, 0}, {40, true, 600, 0}, {40, false, 0, 0}, {40, true, 0, 3}, {3, true, 0, 0}} {
		m := new(dns.Msg).SetReply(q)
		for i := range tc.records {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: []byte{192, 0, 2, byte(i)}})
		}
		if tc.opt {
			m.SetEdns0(4096, true)
			if tc.padding > 0 {
				m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{Padding: make([]byte, tc.padding)}}
			}
		}
		seeds = append(seeds, append(mustPack(t, m), make([]byte, tc.trailing)...))
	}
	return seeds
}
