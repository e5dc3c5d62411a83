package resolver

import (
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestForwardLoopBounded: an upstream that is this server itself (dns.listen
// and dns.upstreams naming one address, or the host's resolver that is
// this server) must not turn one client query into a forwarding chain
// that takes every forward slot: the query the server forwarded comes
// back to it byte for byte, and is answered SERVFAIL at once, over UDP and
// over TCP, each counted as a loop of that upstream.
func TestForwardLoopBounded(t *testing.T) {
	pc, l := listenBoth(t)
	self := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	s := serveForwarding(t, pc, l, self, netip.Addr{})
	askLoop(t, "loop.example.", self, s.cfg.ForwardTimeout)
	if n := counter(t, s, "ztgate_dns_dropped_total", "reason", dropBusy.String()); n > 0 {
		t.Errorf("one query forwarded to ourselves took all %d forward slots (%v queries dropped as busy)", s.cfg.MaxForwards, n)
	}
	if n := counter(t, s, "ztgate_dns_forward_errors_total", "upstream", self.String(), "reason", fwdLoop); n != 2 {
		t.Errorf("%v forward errors counted as loops, want 2", n)
	}
}

// serveForwarding serves pc and l with a server whose one upstream is up,
// stopped when the test ends. When upFrom is valid, the server takes
// queries from upFrom for the upstream's, as it would on another host
// than the upstream's. It sends no loop probes: the loops these tests
// make are to be found by what the forwarded query carries alone, as
// they are between two rounds of probes.
func serveForwarding(t *testing.T, pc net.PacketConn, l net.Listener, up netip.AddrPort, upFrom netip.Addr) *Server {
	cfg := testConfig()
	cfg.Upstreams, cfg.ForwardTimeout, cfg.MaxForwards = []netip.AddrPort{up}, 2*time.Second, 64
	s := newTestServer(t, cfg, loopbackDir())
	s.probeEvery = 0
	if upFrom.IsValid() {
		s.upstreamAddrs = []netip.Addr{upFrom}
	}
	done := make(chan struct{}, 2)
	go func() { s.ServePacket(pc); done <- struct{}{} }()
	go func() { s.ServeStream(l); done <- struct{}{} }()
	t.Cleanup(func() { s.Shutdown(t.Context()); <-done; <-done })
	return s
}

// askLoop asks server for name over UDP and TCP, whose forwarding loops:
// each must be answered SERVFAIL within bound.
func askLoop(t *testing.T, name string, server netip.AddrPort, bound time.Duration) {
	t.Helper()
	for _, proto := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: proto, Timeout: 5 * time.Second}
		start := time.Now()
		r, _, err := c.Exchange(newQuery(name, dns.TypeA, 0), server.String())
		switch {
		case err != nil:
			t.Errorf("%s: %v", proto, err)
		case r.Rcode != dns.RcodeServerFailure:
			t.Errorf("%s: rcode %s, want SERVFAIL", proto, dns.RcodeToString[r.Rcode])
		case time.Since(start) > bound:
			t.Errorf("%s: SERVFAIL after %v: the loop was not seen at once", proto, time.Since(start))
		}
	}
}

// TestForwardMutualLoopBounded: two servers that are each other's upstream
// (two gateways, each told to forward to the other) each give a forwarded
// query a fresh ID, so the query never comes back byte for byte; before,
// one client query went back and forth until every forward slot of both
// was taken. The query that comes back from an upstream, the same but for
// its ID, is the loop: answered SERVFAIL at once, over UDP and TCP, and
// counted as a loop by the server that forwarded it.
func TestForwardMutualLoopBounded(t *testing.T) {
	pcA, lA := listenBoth(t)
	pcB, lB := listenBoth(t)
	addrA := pcA.LocalAddr().(*net.UDPAddr).AddrPort()
	addrB := pcB.LocalAddr().(*net.UDPAddr).AddrPort()
	// Each as if on a host of its own: the other's queries come from the
	// address it is configured as. On loopback, which every local process
	// shares, a server does not take its upstream's address for the
	// upstream (TestForwardSameQueryTwiceNoLoop).
	a := serveForwarding(t, pcA, lA, addrB, addrB.Addr())
	b := serveForwarding(t, pcB, lB, addrA, addrA.Addr())
	askLoop(t, "mutual.example.", addrA, time.Second)
	for name, s := range map[string]*Server{"A": a, "B": b} {
		if n := counter(t, s, "ztgate_dns_dropped_total", "reason", dropBusy.String()); n > 0 {
			t.Errorf("server %s: one query took all its forward slots (%v queries dropped as busy)", name, n)
		}
	}
	if n := counter(t, a, "ztgate_dns_forward_errors_total", "upstream", addrB.String(), "reason", fwdLoop); n != 2 {
		t.Errorf("server A: %v forward errors counted as loops, want 2 (one per transport)", n)
	}
}

// TestForwardSameQueryTwiceNoLoop: two clients that send the same query
// (but for its ID) at the same time are not a loop, whether the upstream
// is on another address or on the clients' own: local clients and an
// upstream on the same host (a caching resolver on 127.0.0.1:5353) share
// 127.0.0.1, and a loopback address names no one process. Both are
// answered.
func TestForwardSameQueryTwiceNoLoop(t *testing.T) {
	for _, upAddr := range []string{"127.0.0.2", "127.0.0.1"} {
		t.Run("upstream "+upAddr, func(t *testing.T) { sameQueryTwice(t, upAddr) })
	}
}

func sameQueryTwice(t *testing.T, upAddr string) {
	release := make(chan struct{})
	var asked atomic.Int32
	pc, err := net.ListenPacket("udp", upAddr+":0")
	if err != nil {
		t.Skipf("no %s on this host: %v", upAddr, err)
	}
	up := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if isLoopProbe(r) {
			_ = w.WriteMsg(new(dns.Msg).SetReply(r))
			return
		}
		if asked.Add(1) == 2 {
			close(release)
		}
		select { // both queries in flight at once (or the test fails below, without hanging here)
		case <-release:
		case <-time.After(2 * time.Second): // only one came: the other was refused
		}
		m := new(dns.Msg).SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 9)}}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	up.NotifyStartedFunc = func() { close(started) }
	go func() { _ = up.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = up.Shutdown() })

	cfg := testConfig()
	cfg.Upstreams, cfg.ForwardTimeout = []netip.AddrPort{pc.LocalAddr().(*net.UDPAddr).AddrPort()}, 3*time.Second
	srv := serve(t, newTestServer(t, cfg, loopbackDir()))
	results := make(chan *dns.Msg, 2)
	for i := range 2 {
		go func() {
			q := newQuery("same.example.", dns.TypeA, 0)
			q.Id = uint16(1000 + i)
			r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(q, srv.udp)
			if err != nil {
				t.Error(err)
			}
			results <- r
		}()
	}
	for range 2 {
		if r := <-results; r != nil && (r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1) {
			t.Errorf("rcode %s, %d answers: want the upstream's answer", dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	}
	if n := counter(t, srv.Server, "ztgate_dns_forward_errors_total", "reason", fwdLoop); n != 0 {
		t.Errorf("%v forwards counted as loops", n)
	}
}

// TestUpstreamAddrsNameOthers: only an upstream's address that no local
// process shares tells a loop from a client: not a loopback address, nor
// one of this host's (a resolver on the router's own LAN address, where
// the router's local clients send from too).
func TestUpstreamAddrsNameOthers(t *testing.T) {
	local := netip.MustParseAddr("192.0.2.1")
	defer func(f func() []netip.Addr) { hostAddrs = f }(hostAddrs)
	hostAddrs = func() []netip.Addr { return []netip.Addr{local} }
	cfg := testConfig()
	cfg.Upstreams = []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:5353"),
		netip.AddrPortFrom(local, 53),
		netip.MustParseAddrPort("[::ffff:198.51.100.53]:53"),
		netip.MustParseAddrPort("203.0.113.53:53"),
	}
	s := newTestServer(t, cfg, loopbackDir())
	want := []netip.Addr{netip.MustParseAddr("198.51.100.53"), netip.MustParseAddr("203.0.113.53")}
	if !slices.Equal(s.upstreamAddrs, want) {
		t.Errorf("upstream addresses that name an upstream: %v, want %v", s.upstreamAddrs, want)
	}
}
