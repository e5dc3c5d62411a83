package resolver

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestForwardRingLoopBounded: a loop through three servers, or between
// servers on one host (where every query comes from a loopback address
// and names no upstream), gives inflight nothing to match: each server
// forwards the query with a fresh ID from an address it cannot tell from
// a client's. Before the chain, one client query went round the ring
// until every server's forward slots were full. Each server's entry in
// the chain finds it: the query is answered SERVFAIL at once, over UDP
// and TCP, and the server that first forwarded it counts a loop.
func TestForwardRingLoopBounded(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d servers", n), func(t *testing.T) {
			pcs, ls, addrs := make([]net.PacketConn, n), make([]net.Listener, n), make([]netip.AddrPort, n)
			for i := range n {
				pcs[i], ls[i] = listenBoth(t)
				addrs[i] = pcs[i].LocalAddr().(*net.UDPAddr).AddrPort()
			}
			servers := make([]*Server, n)
			for i := range n {
				servers[i] = serveForwarding(t, pcs[i], ls[i], addrs[(i+1)%n], netip.Addr{})
			}
			askLoop(t, "ring.example.", addrs[0], time.Second)
			for i, s := range servers {
				if b := counter(t, s, "ztgate_dns_dropped_total", "reason", dropBusy.String()); b > 0 {
					t.Errorf("server %d: one query took all its forward slots (%v queries dropped as busy)", i, b)
				}
			}
			if l := counter(t, servers[0], "ztgate_dns_forward_errors_total", "upstream", addrs[1].String(), "reason", fwdLoop); l != 2 {
				t.Errorf("the first server: %v forward errors counted as loops, want 2 (one per transport)", l)
			}
		})
	}
}

// recordingUpstream answers every query with one A record and hands the
// query it got, unless a loop probe, to seen.
func recordingUpstream(t *testing.T, seen chan<- *dns.Msg, withOPT bool) netip.AddrPort {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if !isLoopProbe(r) {
			seen <- r
		}
		m := new(dns.Msg).SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)}}
		if withOPT {
			if opt := r.IsEdns0(); opt != nil {
				m.SetEdns0(opt.UDPSize(), opt.Do())
				// An upstream that echoes every option, which RFC 6891
				// says it must not: the client must not see the chain.
				m.IsEdns0().Option = opt.Option
			}
		}
		_ = w.WriteMsg(m)
	})
	return serveUpstream(t, h)
}

// chainEntries returns the chain's entries of m's OPT record.
func chainEntries(m *dns.Msg) []byte {
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if l, ok := o.(*dns.EDNS0_LOCAL); ok && l.Code == chainOption {
				return l.Data
			}
		}
	}
	return nil
}

// TestForwardChainInvisible: the upstream sees the query with the
// server's entry added and the client's EDNS kept (UDP size, DO bit, its
// options); the client sees an answer without the chain, and without an
// OPT record when it sent none. A signed query goes on unchanged.
func TestForwardChainInvisible(t *testing.T) {
	for _, echo := range []bool{false, true} {
		seen := make(chan *dns.Msg, 4)
		cfg := testConfig()
		cfg.Upstreams = []netip.AddrPort{recordingUpstream(t, seen, echo)}
		srv := serve(t, newTestServer(t, cfg, loopbackDir()))
		c := &dns.Client{Timeout: 5 * time.Second}

		plain := newQuery("plain.example.", dns.TypeA, 0)
		r, _, err := c.Exchange(plain, srv.udp)
		if err != nil {
			t.Fatal(err)
		}
		up := <-seen
		if e := chainEntries(up); len(e) != chainEntryLen || !slices.Equal(e[:chainIDLen], srv.chainID[:]) || be16(e[chainIDLen:]) != up.Id {
			t.Errorf("echo %v: the upstream saw the chain % x, want this server's entry for ID %d", echo, e, up.Id)
		}
		if r.IsEdns0() != nil || len(r.Answer) != 1 || r.Id != plain.Id {
			t.Errorf("echo %v: a client without EDNS got OPT %v, %d answers, ID %d", echo, r.IsEdns0(), len(r.Answer), r.Id)
		}

		edns := newQuery("edns.example.", dns.TypeA, 1400)
		edns.IsEdns0().SetDo()
		cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}
		edns.IsEdns0().Option = []dns.EDNS0{cookie}
		r, _, err = c.Exchange(edns, srv.udp)
		if err != nil {
			t.Fatal(err)
		}
		up = <-seen
		opt := up.IsEdns0()
		if opt == nil || opt.UDPSize() != 1400 || !opt.Do() || len(opt.Option) != 2 || opt.Option[0].String() != cookie.String() || len(chainEntries(up)) != chainEntryLen {
			t.Errorf("echo %v: the upstream saw OPT %v, want the client's (1400, DO, its cookie) and the chain", echo, opt)
		}
		if len(r.Answer) != 1 || chainEntries(r) != nil {
			t.Errorf("echo %v: the client got %d answers, the chain % x", echo, len(r.Answer), chainEntries(r))
		}

		signed := newQuery("signed.example.", dns.TypeA, 0)
		signed.SetTsig("key.", dns.HmacSHA256, 300, time.Now().Unix())
		c.TsigSecret = map[string]string{"key.": "c2VjcmV0"}
		if _, _, err := c.Exchange(signed, srv.udp); err != nil {
			t.Logf("echo %v: signed query: %v (the upstream does not sign its answer)", echo, err)
		}
		c.TsigSecret = nil
		if up = <-seen; chainEntries(up) != nil || up.IsEdns0() != nil {
			t.Errorf("echo %v: a TSIG-signed query was changed on its way: OPT %v", echo, up.IsEdns0())
		}
	}
}

// TestForwardChainTooLong: a query that has come through maxChain
// forwarding servers already is answered SERVFAIL and not forwarded:
// servers that lost track of a loop (a query whose entries were cut)
// still end it.
func TestForwardChainTooLong(t *testing.T) {
	seen := make(chan *dns.Msg, 1)
	cfg := testConfig()
	cfg.Upstreams = []netip.AddrPort{recordingUpstream(t, seen, false)}
	srv := serve(t, newTestServer(t, cfg, loopbackDir()))
	for _, n := range []int{maxChain - 1, maxChain} {
		q := newQuery("long.example.", dns.TypeA, 1232)
		q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_LOCAL{Code: chainOption, Data: make([]byte, n*chainEntryLen)}}
		r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(q, srv.udp)
		if err != nil {
			t.Fatal(err)
		}
		forwarded := len(seen) == 1
		if forwarded {
			<-seen
		}
		if want := n < maxChain; forwarded != want || (r.Rcode == dns.RcodeSuccess) != want {
			t.Errorf("a chain of %d entries: forwarded %v, rcode %s", n, forwarded, dns.RcodeToString[r.Rcode])
		}
	}
}

// TestForwardChainUpstreamWithoutEDNS: an upstream that answers FORMERR
// to any query with an OPT record (it predates EDNS, or a box on the way
// refuses unknown options) is asked again with the query as the client
// sent it, and the client gets its answer.
func TestForwardChainUpstreamWithoutEDNS(t *testing.T) {
	var plain atomic.Int32
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		if r.IsEdns0() != nil {
			m.Rcode = dns.RcodeFormatError
		} else if !isLoopProbe(r) {
			plain.Add(1)
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 8)}}
		}
		_ = w.WriteMsg(m)
	})
	cfg := testConfig()
	cfg.Upstreams = []netip.AddrPort{serveUpstream(t, h)}
	srv := serve(t, newTestServer(t, cfg, loopbackDir()))
	for _, proto := range []string{"udp", "tcp"} {
		addr := srv.udp
		if proto == "tcp" {
			addr = srv.tcp
		}
		r, _, err := (&dns.Client{Net: proto, Timeout: 5 * time.Second}).Exchange(newQuery("old.example.", dns.TypeA, 0), addr)
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.IsEdns0() != nil {
			t.Errorf("%s: rcode %s, %d answers, OPT %v: want the upstream's answer to the query as sent", proto, dns.RcodeToString[r.Rcode], len(r.Answer), r.IsEdns0())
		}
	}
	if n := plain.Load(); n != 2 {
		t.Errorf("the upstream was asked %d queries without EDNS, want 2", n)
	}
}

// TestChainKeepsTCPLength: a query over TCP may take up to 65,535 bytes,
// and the chain adds its entry (and an OPT record to a query without
// one): a query near the limit must go on as it came rather than grow
// past what a TCP frame's two-byte length can tell, which wrapped the
// length and sent the upstream the client's bytes as further queries.
func TestChainKeepsTCPLength(t *testing.T) {
	s := newTestServer(t, testConfig(), testDirectory())
	for _, edns := range []bool{false, true} {
		q := newQuery("big.example.", dns.TypeA, 0)
		if edns {
			q.SetEdns0(4096, false)
		}
		base := len(mustPack(t, q))
		if edns {
			q.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{Padding: make([]byte, maxMsgSize-base-4)}}
		} else {
			// fill the additional section with one TXT record of the rest
			txt := &dns.TXT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeTXT, Class: dns.ClassINET}}
			for left := maxMsgSize - base - 11; left > 0; left -= 256 {
				txt.Txt = append(txt.Txt, string(make([]byte, min(left, 256)-1)))
			}
			q.Extra = append(q.Extra, txt)
		}
		raw := mustPack(t, q)
		if len(raw) > maxMsgSize || len(raw) < maxMsgSize-16 {
			t.Fatalf("edns %v: a query of %d bytes, want near %d", edns, len(raw), maxMsgSize)
		}
		if c, ok := s.chain(raw, 0x1234); ok && len(c.query) > maxMsgSize {
			t.Errorf("edns %v: a query of %d bytes became %d, more than a DNS message holds", edns, len(raw), len(c.query))
		}
	}
}
