package resolver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is an in-process DNS server on loopback (UDP and TCP, one port).
type upstream struct {
	addr      netip.AddrPort
	udp, tcp  atomic.Int32 // queries seen per transport
	servfails bool         // answer SERVFAIL to everything
}

// startUpstream serves: example.com. A 192.0.2.1; alias.example. CNAME
// example.com. (TTL 10); big.example. 100 A records
// (truncated over UDP); fail.example. SERVFAIL; anything else NXDOMAIN.
func startUpstream(t *testing.T, servfails bool) *upstream {
	t.Helper()
	u := &upstream{servfails: servfails}
	u.addr = serveUpstream(t, u)
	return u
}

func (u *upstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	if tcp {
		u.tcp.Add(1)
	} else {
		u.udp.Add(1)
	}
	m := new(dns.Msg).SetReply(r)
	switch q := r.Question[0]; {
	case u.servfails || q.Name == "fail.example.":
		m.Rcode = dns.RcodeServerFailure
	case q.Name == "example.com.":
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
	case q.Name == "alias.example.": // a CNAME whose TTL is smaller than its target's
		m.Answer = []dns.RR{
			&dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 10}, Target: "example.com."},
			&dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)},
		}
	case q.Name == "big.example.":
		for i := range 100 {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.IPv4(192, 0, 2, byte(i))})
		}
	default:
		m.Rcode = dns.RcodeNameError
	}
	if !tcp {
		m.Truncate(dns.MinMsgSize)
	}
	_ = w.WriteMsg(m)
}

// serveUpstream serves h over UDP and TCP on one new loopback port until
// the test ends, and returns its address.
func serveUpstream(t *testing.T, h dns.Handler) netip.AddrPort {
	t.Helper()
	pc, l := listenBoth(t)
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown(); <-done })
	}
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// deadUpstream is a UDP socket that never answers.
func deadUpstream(t *testing.T) netip.AddrPort {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// closedUpstream is a UDP port nobody listens on (ICMP port unreachable).
func closedUpstream(t *testing.T) netip.AddrPort {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestForward(t *testing.T) {
	good := startUpstream(t, false)
	failing := startUpstream(t, true)
	dead, closed := deadUpstream(t), closedUpstream(t)
	tests := []struct {
		name      string
		upstreams []netip.AddrPort
		network   string
		qname     string
		qtype     uint16
		rcode     int
		answers   int
		tc        bool
		failed    netip.AddrPort // an upstream that must have counted an error
		reason    string
	}{
		{name: "answer relayed", upstreams: []netip.AddrPort{good.addr}, network: "udp", qname: "example.com.", answers: 1},
		{name: "answer relayed over TCP", upstreams: []netip.AddrPort{good.addr}, network: "tcp", qname: "example.com.", answers: 1},
		{name: "upstream NXDOMAIN relayed", upstreams: []netip.AddrPort{good.addr}, network: "udp", qname: "nope.example.", rcode: dns.RcodeNameError},
		{name: "reverse name outside the pool", upstreams: []netip.AddrPort{good.addr}, network: "udp", qname: "1.0.0.127.in-addr.arpa.",
			qtype: dns.TypePTR, rcode: dns.RcodeNameError},
		{name: "fall over after a timeout", upstreams: []netip.AddrPort{dead, good.addr}, network: "udp", qname: "example.com.", answers: 1,
			failed: dead, reason: fwdTimeout},
		{name: "fall over after port unreachable", upstreams: []netip.AddrPort{closed, good.addr}, network: "udp", qname: "example.com.", answers: 1,
			failed: closed, reason: fwdNetwork},
		{name: "fall over after SERVFAIL", upstreams: []netip.AddrPort{failing.addr, good.addr}, network: "udp", qname: "example.com.", answers: 1,
			failed: failing.addr, reason: fwdRcode},
		{name: "every upstream fails", upstreams: []netip.AddrPort{dead, failing.addr}, network: "udp", qname: "example.com.",
			rcode: dns.RcodeServerFailure, failed: failing.addr, reason: fwdRcode},
		{name: "truncated answer to a UDP client", upstreams: []netip.AddrPort{good.addr}, network: "udp", qname: "big.example.", tc: true},
		{name: "truncated answer retried over TCP", upstreams: []netip.AddrPort{good.addr}, network: "tcp", qname: "big.example.", answers: 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Upstreams, cfg.ForwardTimeout = tc.upstreams, 500*time.Millisecond
			srv := serve(t, newTestServer(t, cfg, loopbackDir()))
			qtype := tc.qtype
			if qtype == 0 {
				qtype = dns.TypeA
			}
			q := newQuery(tc.qname, qtype, 0)
			tcpBefore := good.tcp.Load()
			r := exchangeOver(t, tc.network, map[string]string{"udp": srv.udp, "tcp": srv.tcp}[tc.network], q)
			if r.Id != q.Id || r.Rcode != tc.rcode || r.Truncated != tc.tc || len(r.Answer) != tc.answers && !tc.tc {
				t.Errorf("id %d rcode %s TC %v %d answers, want %d %s %v %d", r.Id, dns.RcodeToString[r.Rcode], r.Truncated,
					len(r.Answer), q.Id, dns.RcodeToString[tc.rcode], tc.tc, tc.answers)
			}
			if !r.RecursionAvailable && tc.rcode != dns.RcodeServerFailure {
				t.Error("RA not set in a forwarded answer")
			}
			if tc.failed.IsValid() {
				if n := counter(t, srv.Server, "ztgate_dns_forward_errors_total", "upstream", tc.failed.String(), "reason", tc.reason); n != 1 {
					t.Errorf("forward_errors{%v, %s} = %v, want 1", tc.failed, tc.reason, n)
				}
			}
			if tc.qname == "big.example." && tc.network == "tcp" && good.tcp.Load() == tcpBefore {
				t.Error("the truncated answer was not asked again over TCP")
			}
		})
	}
}

func TestForwardBusyAndShutdown(t *testing.T) {
	cfg := testConfig()
	cfg.Upstreams, cfg.ForwardTimeout, cfg.MaxForwards = []netip.AddrPort{deadUpstream(t)}, time.Minute, 1
	s := newTestServer(t, cfg, loopbackDir())
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServePacket(pc) }()
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, name := range []string{"one.example.", "two.example."} {
		if _, err := c.Write(mustPack(t, newQuery(name, dns.TypeA, 0))); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for counter(t, s, "ztgate_dns_dropped_total", "reason", dropBusy.String()) != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // the reader is on another goroutine
	}
	if n := counter(t, s, "ztgate_dns_dropped_total", "reason", dropBusy.String()); n != 1 {
		t.Fatalf("dropped{busy} = %v, want 1 (one forward slot, the first query holds it)", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a forward in flight: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v: the forward was not aborted", d)
	}
	if err := <-done; err != nil {
		t.Errorf("ServePacket: %v", err)
	}
}

// TestForwardPerClientLimit has one client ask many names whose upstream
// never answers: it holds at most MaxForwardsPerClient forward slots, the
// rest of its queries dropped and counted, and another client's query is
// still forwarded. Before, one client asking MaxForwards such names every
// ForwardTimeout (512 a second by default) left no slot to any other
// client of any tenant.
func TestForwardPerClientLimit(t *testing.T) {
	up := startUpstream(t, false)
	dead := deadUpstream(t)
	cfg := testConfig()
	// The dead upstream first: every query waits there for the timeout,
	// then the live one answers.
	cfg.Upstreams, cfg.ForwardTimeout, cfg.MaxForwards = []netip.AddrPort{dead, up.addr}, 3*time.Second, 64
	dir := loopbackDir()
	dir.views[netip.MustParseAddr("127.0.0.2")] = dir.views[clientA]
	s := newTestServer(t, cfg, dir)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServePacket(pc) }()
	t.Cleanup(func() { s.Shutdown(context.Background()); <-done })
	greedy, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer greedy.Close()
	for i := range cfg.MaxForwards {
		q := newQuery(fmt.Sprintf("n%d.example.", i), dns.TypeA, 0)
		if _, err := greedy.Write(mustPack(t, q)); err != nil {
			t.Fatal(err)
		}
	}
	perClient := cfg.MaxForwards / 8
	want := float64(cfg.MaxForwards - perClient)
	deadline := time.Now().Add(2 * time.Second)
	for counter(t, s, "ztgate_dns_dropped_total", "reason", dropClientBusy.String()) < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // the reader is on another goroutine
	}
	other := &dns.Client{Net: "udp", Timeout: 10 * time.Second,
		Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}}}
	r, _, err := other.Exchange(newQuery("example.com.", dns.TypeA, 0), pc.LocalAddr().String())
	if err != nil {
		t.Fatalf("another client's query while one holds the forward slots: %v", err)
	}
	if len(r.Answer) != 1 {
		t.Fatalf("another client's query answered %s with %v", dns.RcodeToString[r.Rcode], r.Answer)
	}
	if n := counter(t, s, "ztgate_dns_dropped_total", "reason", dropClientBusy.String()); n != want {
		t.Errorf("dropped{client_busy} = %v, want %v (%d of %d queries in flight)", n, want, perClient, cfg.MaxForwards)
	}
	if n := counter(t, s, "ztgate_dns_dropped_total", "reason", dropBusy.String()); n != 0 {
		t.Errorf("dropped{busy} = %v, want 0", n)
	}
}
