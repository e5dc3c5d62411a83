package resolver

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testlog"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

// foreignResolver stands for a resolver on the host that is not ztgate
// (systemd-resolved, dnsmasq, unbound) and that the operator pointed at
// this server: while loop is set it forwards every query to target with a
// new ID and without EDNS options, from a loopback address, as such
// resolvers do; else it answers NXDOMAIN itself.
type foreignResolver struct {
	addr   netip.AddrPort
	target string
	loop   atomic.Bool
	wg     sync.WaitGroup // queries being forwarded
	mu     sync.Mutex
	asked  map[string]int // queries by name
}

// startForeign serves a foreignResolver that forwards to target until the
// test ends.
func startForeign(t *testing.T, target netip.AddrPort) *foreignResolver {
	f := &foreignResolver{target: target.String(), asked: map[string]int{}}
	f.loop.Store(true)
	t.Cleanup(f.wg.Wait) // after its server's shutdown: no query comes in any more
	f.addr = serveUpstream(t, f)
	return f
}

func (f *foreignResolver) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	f.wg.Add(1)
	defer f.wg.Done()
	f.mu.Lock()
	f.asked[r.Question[0].Name]++
	f.mu.Unlock()
	m := new(dns.Msg).SetReply(r)
	m.Rcode = dns.RcodeNameError
	if f.loop.Load() {
		q := r.Copy()
		q.Id = dns.Id()
		if opt := q.IsEdns0(); opt != nil {
			opt.Option = nil
		}
		m.Rcode = dns.RcodeServerFailure
		if a, _, err := (&dns.Client{Timeout: time.Second}).Exchange(q, f.target); err == nil {
			a.Id = r.Id
			m = a
		}
	}
	_ = w.WriteMsg(m)
}

// count returns how many queries for name the resolver was asked.
func (f *foreignResolver) count(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked[name]
}

// lockedBuffer is a bytes.Buffer that a logger writes while a test reads.
type lockedBuffer = testlog.Buffer

// probingServer serves pc and l with a server forwarding to upstreams
// that probes them every interval, until the test ends; its log is
// returned.
func probingServer(t *testing.T, pc net.PacketConn, l net.Listener, upstreams []netip.AddrPort, interval, timeout time.Duration) (*Server, *lockedBuffer) {
	t.Helper()
	cfg := testConfig()
	cfg.Upstreams, cfg.ForwardTimeout, cfg.MaxForwards = upstreams, timeout, 64
	cfg.Registerer = prometheus.NewRegistry()
	logs := &lockedBuffer{}
	s, err := New(cfg, loopbackDir(), slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	s.probeEvery, s.probeQuiet = interval, interval
	serveConns(t, s, pc, l)
	return s, logs
}

// eventually reports whether cond held within d, polling.
func eventually(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// looping is ztgate_dns_upstream_looping of up.
func looping(t *testing.T, s *Server, up netip.AddrPort) float64 {
	return counter(t, s, "ztgate_dns_upstream_looping", "upstream", up.String())
}

const loopLog = `msg="dns upstream leads back to this server: names outside the zone are not forwarded to it" upstream=`

// TestLoopProbeFindsForeignLoop: dns.upstreams names the host's resolver,
// which is not ztgate and forwards to this server (it strips the chain's
// EDNS option and gives each query a new ID, from a loopback address).
// Nothing in a query that comes back tells it from a client's: before,
// each client query went round until the forward slots were full or
// dns.forward_timeout passed, slowly failing it and the other clients'
// forwarded names. The probe sent at start comes back: the upstream is
// found looping within a bounded time, logged and counted, and a name
// outside the zone is answered at once without it, over UDP and TCP:
// SERVFAIL when it is the only upstream, the next upstream's answer
// else.
func TestLoopProbeFindsForeignLoop(t *testing.T) {
	good := startUpstream(t, false)
	tests := []struct {
		name    string
		next    bool // good is the second upstream
		qname   string
		rcode   int
		answers int
	}{
		{name: "only upstream", qname: "outside.example.", rcode: dns.RcodeServerFailure},
		{name: "next upstream answers", next: true, qname: "example.com.", answers: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pc, l := listenBoth(t)
			self := pc.LocalAddr().(*net.UDPAddr).AddrPort()
			f := startForeign(t, self)
			upstreams := []netip.AddrPort{f.addr}
			if tc.next {
				upstreams = append(upstreams, good.addr)
			}
			// A long interval: the probe sent at start finds the loop.
			s, logs := probingServer(t, pc, l, upstreams, time.Minute, time.Second)
			if !eventually(2*time.Second, func() bool { return looping(t, s, f.addr) == 1 }) {
				t.Errorf("upstream %v not found looping within 2 s", f.addr)
			}
			for _, proto := range []string{"udp", "tcp"} {
				start := time.Now()
				r, _, err := (&dns.Client{Net: proto, Timeout: 5 * time.Second}).Exchange(newQuery(tc.qname, dns.TypeA, 0), self.String())
				switch took := time.Since(start); {
				case err != nil:
					t.Errorf("%s: %v", proto, err)
				case r.Rcode != tc.rcode || len(r.Answer) != tc.answers:
					t.Errorf("%s: rcode %s, %d answers; want %s, %d", proto, dns.RcodeToString[r.Rcode], len(r.Answer),
						dns.RcodeToString[tc.rcode], tc.answers)
				case took > 300*time.Millisecond:
					t.Errorf("%s: answered after %v: the query went round the loop", proto, took)
				}
			}
			if n := f.count(tc.qname); n > 0 {
				t.Errorf("the looping upstream was asked %s %d times", tc.qname, n)
			}
			for _, r := range []dropReason{dropBusy, dropClientBusy} {
				if n := counter(t, s, "ztgate_dns_dropped_total", "reason", r.String()); n > 0 {
					t.Errorf("%v queries dropped as %s", n, r)
				}
			}
			if n := counter(t, s, "ztgate_dns_forward_errors_total", "upstream", f.addr.String(), "reason", fwdLoop); n < 1 {
				t.Errorf("forward_errors{%v, loop} = %v, want the probe that came back", f.addr, n)
			}
			if want := loopLog + f.addr.String(); !strings.Contains(logs.String(), want) {
				t.Errorf("log lacks %s:\n%s", want, logs)
			}
		})
	}
}

// probeName is the shape of a probe's name: a random name under the root.
var probeName = regexp.MustCompile(`^[0-9a-f]{16}\.[0-9a-f]{16}\.$`)

// isLoopProbe reports whether r is shaped like a loop probe.
func isLoopProbe(r *dns.Msg) bool {
	q := r.Question[0]
	return q.Qtype == dns.TypeHINFO && q.Qclass == dns.ClassINET && r.RecursionDesired && probeName.MatchString(q.Name)
}

// probeCounter counts the loop probes it gets and hands every query to h;
// a nil h never answers.
type probeCounter struct {
	h dns.Handler
	n atomic.Int32
}

func (p *probeCounter) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if isLoopProbe(r) {
		p.n.Add(1)
	}
	if p.h != nil {
		p.h.ServeDNS(w, r)
	}
}

// TestLoopProbeNoLoop: upstreams that do not lead back here are probed
// (HINFO for a random name under the root, recursion desired), again and
// again, one probe in flight each, and never taken for a loop: one that
// answers, one that fails every query, one that never answers (a probe
// that fails or times out proves nothing). A probe is not a forward: its
// failures are not forward errors. A client asking a name shaped like a
// probe that is none in flight is forwarded as any other.
func TestLoopProbeNoLoop(t *testing.T) {
	const interval, timeout = 20 * time.Millisecond, 200 * time.Millisecond
	tests := []struct {
		name string
		h    dns.Handler
	}{
		{name: "answers", h: &upstream{}},
		{name: "fails", h: &upstream{servfails: true}},
		{name: "silent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &probeCounter{h: tc.h}
			up := serveUpstream(t, p)
			pc, l := listenBoth(t)
			start := time.Now()
			s, _ := probingServer(t, pc, l, []netip.AddrPort{up}, interval, timeout)
			if !eventually(3*time.Second, func() bool { return p.n.Load() >= 3 }) {
				t.Fatalf("the upstream got %d probes in 3 s, want 3 or more", p.n.Load())
			}
			// One probe in flight at a time: a silent upstream gets one a
			// timeout, not one an interval.
			if n, most := p.n.Load(), int32(time.Since(start)/timeout)+2; tc.h == nil && n > most {
				t.Errorf("a silent upstream got %d probes in %v, want at most %d", n, time.Since(start), most)
			}
			if v := looping(t, s, up); v != 0 {
				t.Errorf("upstream_looping = %v, want 0", v)
			}
			for _, r := range []string{fwdTimeout, fwdNetwork, fwdRcode, fwdBadReply, fwdLoop} {
				if n := counter(t, s, "ztgate_dns_forward_errors_total", "upstream", up.String(), "reason", r); n > 0 {
					t.Errorf("forward_errors{%s} = %v: probes counted as forwards", r, n)
				}
			}
			if tc.name != "answers" {
				return
			}
			lookalike := "0123456789abcdef.fedcba9876543210."
			r := exchangeOver(t, "udp", pc.LocalAddr().String(), newQuery(lookalike, dns.TypeHINFO, 0))
			if r.Rcode != dns.RcodeNameError {
				t.Errorf("a client's %s HINFO: rcode %s, want the upstream's NXDOMAIN", lookalike, dns.RcodeToString[r.Rcode])
			}
			if v := looping(t, s, up); v != 0 {
				t.Errorf("after a client's look-alike: upstream_looping = %v, want 0", v)
			}
		})
	}
}

// TestLoopProbeTakesBack: an upstream found looping is probed again, and
// taken back once a probe is answered without coming back (the host's
// resolver pointed elsewhere): names outside the zone go to it again.
func TestLoopProbeTakesBack(t *testing.T) {
	pc, l := listenBoth(t)
	self := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	f := startForeign(t, self)
	s, logs := probingServer(t, pc, l, []netip.AddrPort{f.addr}, 50*time.Millisecond, time.Second)
	if !eventually(2*time.Second, func() bool { return looping(t, s, f.addr) == 1 }) {
		t.Fatalf("upstream %v not found looping within 2 s", f.addr)
	}
	f.loop.Store(false)
	if !eventually(2*time.Second, func() bool { return looping(t, s, f.addr) == 0 }) {
		t.Fatalf("upstream %v still looping 2 s after it stopped", f.addr)
	}
	r := exchangeOver(t, "udp", self.String(), newQuery("outside.example.", dns.TypeA, 0))
	if r.Rcode != dns.RcodeNameError || f.count("outside.example.") != 1 {
		t.Errorf("rcode %s, the upstream asked %d times: want its NXDOMAIN", dns.RcodeToString[r.Rcode], f.count("outside.example."))
	}
	const back = `msg="dns upstream answers without leading back to this server: names outside the zone are forwarded to it again" upstream=`
	if !strings.Contains(logs.String(), back+f.addr.String()) {
		t.Errorf("log lacks %s%v:\n%s", back, f.addr, logs)
	}
}

// probers counts the goroutines that probe for loops.
func probers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "resolver.(*Server).probeLoop(")
}

// TestLoopProbeLifetime: no probing without upstreams; one prober,
// however many conns the server serves; Shutdown stops it, a probe in
// flight too, and leaves no goroutine behind.
func TestLoopProbeLifetime(t *testing.T) {
	t.Run("no upstreams", func(t *testing.T) {
		srv := serve(t, newTestServer(t, testConfig(), loopbackDir()))
		exchangeOver(t, "udp", srv.udp, newQuery("web.ztna.internal.", dns.TypeA, 0)) // serving
		if n := probers(); n != 0 {
			t.Errorf("%d probers without upstreams", n)
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		before := goleak.IgnoreCurrent()
		silent, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		probed := make(chan struct{})
		read := make(chan struct{})
		go func() {
			defer close(read)
			buf := make([]byte, 512)
			if _, _, err := silent.ReadFrom(buf); err == nil {
				close(probed)
			}
		}()
		cfg := testConfig()
		cfg.Upstreams, cfg.ForwardTimeout = []netip.AddrPort{silent.LocalAddr().(*net.UDPAddr).AddrPort()}, time.Minute
		s := newTestServer(t, cfg, loopbackDir())
		pc, l := listenBoth(t)
		pc2, l2 := listenBoth(t)
		done := make(chan struct{}, 4)
		for _, serve := range []func() error{
			func() error { return s.ServePacket(pc) }, func() error { return s.ServeStream(l) },
			func() error { return s.ServePacket(pc2) }, func() error { return s.ServeStream(l2) },
		} {
			go func() { _ = serve(); done <- struct{}{} }()
		}
		select {
		case <-probed:
		case <-time.After(2 * time.Second):
			t.Error("no probe within 2 s")
		}
		if n := probers(); n != 1 {
			t.Errorf("%d probers for two conns and two listeners, want 1", n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Shutdown took %v: the probe in flight was not aborted", d)
		}
		for range 4 {
			<-done
		}
		silent.Close()
		<-read
		goleak.VerifyNone(t, before)
	})
}
