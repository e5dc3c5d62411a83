package resolver

import (
	"net"
	"net/netip"
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
	cfg := testConfig()
	cfg.Upstreams, cfg.ForwardTimeout, cfg.MaxForwards = []netip.AddrPort{self}, 2*time.Second, 64
	s := newTestServer(t, cfg, loopbackDir())
	done := make(chan struct{}, 2)
	go func() { s.ServePacket(pc); done <- struct{}{} }()
	go func() { s.ServeStream(l); done <- struct{}{} }()
	t.Cleanup(func() { s.Shutdown(t.Context()); <-done; <-done })

	for _, proto := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: proto, Timeout: 5 * time.Second}
		start := time.Now()
		r, _, err := c.Exchange(newQuery("loop.example.", dns.TypeA, 0), self.String())
		switch {
		case err != nil:
			t.Errorf("%s: %v", proto, err)
		case r.Rcode != dns.RcodeServerFailure:
			t.Errorf("%s: rcode %s, want SERVFAIL", proto, dns.RcodeToString[r.Rcode])
		case time.Since(start) > cfg.ForwardTimeout:
			t.Errorf("%s: SERVFAIL after %v: the loop was not seen at once", proto, time.Since(start))
		}
	}
	if n := counter(t, s, "ztgate_dns_dropped_total", "reason", dropBusy.String()); n > 0 {
		t.Errorf("one query forwarded to ourselves took all %d forward slots (%v queries dropped as busy)", cfg.MaxForwards, n)
	}
	if n := counter(t, s, "ztgate_dns_forward_errors_total", "upstream", self.String(), "reason", fwdLoop); n != 2 {
		t.Errorf("%v forward errors counted as loops, want 2", n)
	}
}
