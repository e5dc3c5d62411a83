package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// limitsConfig publishes web (tcp 80) to both tenants with the given
// extra keys: lim goes into [limits], acme and svc into the acme tenant
// and the service.
func limitsConfig(httpPort int, lim, acme, svc string) string {
	return fmt.Sprintf(`
[gateway]
state_dir = "STATE"
[api]
listen = "off"
[limits]
%s
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
%s
[[tenant]]
name = "globex"
sources = ["203.0.113.0/24"]
[[service]]
name = "web"
tenants = ["*"]
vip = "10.100.0.10"
backends = ["127.0.0.1"]
%s
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = %d
  [service.health]
  type = "none"
`, lim, acme, svc, httpPort)
}

// startHold runs a TCP backend that accepts and holds connections open
// until the client closes them.
func startHold(t testing.TB) int {
	return serveTCP(t, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// serveTCP runs a TCP server on loopback that hands every connection to
// handle (and closes it afterwards) until the test ends; it returns the
// port.
func serveTCP(t testing.TB, handle func(net.Conn)) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, l, handle)
	return l.Addr().(*net.TCPAddr).Port
}

// serveOn hands every connection l accepts to handle (and closes it
// afterwards) until the test ends.
func serveOn(t testing.TB, l net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

var webVIP = netip.MustParseAddrPort("10.100.0.10:80")

// dialWeb opens a connection from src to web within d.
func (h *harness) dialWeb(t *testing.T, src netip.Addr, d time.Duration) (net.Conn, error) {
	t.Helper()
	return h.dialConn(t, src, webVIP, d)
}

// TestFlowLimits fills a tenant's or a service's max_flows: the next flow
// is refused at once with a RST and counted by reason, flows of the
// others still open, and a closed flow frees its slot.
func TestFlowLimits(t *testing.T) {
	port := startHold(t)
	cases := []struct {
		name, acme, svc, lim string
		reason               string
		otherTenantFree      bool
	}{
		{"tenant", "max_flows = 2", "", "", refuseTenantLimit, true},
		{"service", "", "max_flows = 2", "", refuseServiceLimit, false},
		{"gateway", "", "", "max_flows = 2", refuseLimit, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, limitsConfig(port, tc.lim, tc.acme, tc.svc))
			first, err := h.dialWeb(t, acmeClient, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.dialWeb(t, acmeClient, 2*time.Second); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 2*time.Second, "two flows", func() bool { return h.gw.flowCount.Load() == 2 })
			start := time.Now()
			if _, err := h.dialWeb(t, acmeClient, 2*time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
				t.Fatalf("third flow: %v, want connection refused", err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Fatalf("refusal took %v", d)
			}
			if n := metricValue(t, h.gw, "ztgate_flows_refused_total", "protocol", "tcp", "reason", tc.reason); n != 1 {
				t.Fatalf("refusals counted as %s: %v, want 1", tc.reason, n)
			}
			_, err = h.dialWeb(t, globexClient, 2*time.Second)
			if tc.otherTenantFree && err != nil {
				t.Fatalf("other tenant refused: %v", err)
			}
			if !tc.otherTenantFree && err == nil {
				t.Fatal("other tenant got a flow over a shared limit")
			}
			first.Close()
			waitFor(t, 3*time.Second, "a slot freed by a closed flow", func() bool {
				c, err := h.dialWeb(t, acmeClient, time.Second)
				if err == nil {
					c.Close()
				}
				return err == nil
			})
		})
	}
}

// fakeNow is a settable clock. It starts at the real time: the splice
// turns the clock's times into socket deadlines.
type fakeNow struct{ ns atomic.Int64 }

func newFakeNow() *fakeNow {
	f := &fakeNow{}
	f.ns.Store(time.Now().UnixNano())
	return f
}
func (f *fakeNow) now() time.Time          { return time.Unix(0, f.ns.Load()) }
func (f *fakeNow) advance(d time.Duration) { f.ns.Add(int64(d)) }
func withClock(f *fakeNow) func(*Options)  { return func(o *Options) { o.Now = f.now } }

// TestNewFlowsRate checks new_flows_per_second per source on a stopped
// clock: a source gets its burst, then its SYNs are dropped (the client
// retries) and counted; another source is not affected; time refills.
func TestNewFlowsRate(t *testing.T) {
	port := startHold(t)
	clk := newFakeNow()
	h := newHarness(t, limitsConfig(port, "new_flows_per_second = 3\nnew_flows_burst = 3", "", ""), withClock(clk))
	for i := range 3 {
		if _, err := h.dialWeb(t, acmeClient, 2*time.Second); err != nil {
			t.Fatalf("flow %d of the burst: %v", i, err)
		}
	}
	_, err := h.dialWeb(t, acmeClient, 1500*time.Millisecond)
	if err == nil || strings.Contains(err.Error(), "refused") {
		t.Fatalf("flow over the rate: %v, want a timeout (SYN dropped)", err)
	}
	if n := metricValue(t, h.gw, "ztgate_flows_refused_total", "protocol", "tcp", "reason", refuseRate); n < 1 {
		t.Fatalf("rate refusals counted: %v", n)
	}
	if _, err := h.dialWeb(t, globexClient, 2*time.Second); err != nil {
		t.Fatalf("another source: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := h.client.Ping(ctx, h.gw.lan, acmeClient, webVIP.Addr(), 9, 1, nil); err == nil {
		t.Fatal("an echo request over the rate got a reply")
	}
	if n := metricValue(t, h.gw, "ztgate_flows_refused_total", "protocol", "icmp", "reason", refuseRate); n != 1 {
		t.Fatalf("echo requests over the rate counted: %v, want 1", n)
	}
	clk.advance(time.Second)
	if _, err := h.dialWeb(t, acmeClient, 2*time.Second); err != nil {
		t.Fatalf("after a second: %v", err)
	}
}

// TestMaxFlowsOverFileLimitWarned: [limits] max_flows over what the open
// file limit allows is logged at start and again by a reload that sets it
// so, not by one that leaves it under.
func TestMaxFlowsOverFileLimitWarned(t *testing.T) {
	const warning = "the open file limit allows fewer flows than [limits] max_flows"
	config := func(maxFlows int) string {
		return reloadConfig(9, `"*"`, fmt.Sprintf("[limits]\nmax_flows = %d\n", maxFlows))
	}
	logs := &syncLog{}
	h := newFileHarnessWith(t, config(50), slog.New(slog.NewTextHandler(logs, nil)), []netip.Addr{acmeClient},
		func(g *Gateway) { g.limits.fdCap = 100 })
	if strings.Contains(logs.String(), warning) {
		t.Fatalf("warned at start with max_flows 50 under 100:\n%s", logs)
	}
	for _, tt := range []struct {
		maxFlows int
		warns    int
	}{{60, 0}, {500, 1}, {80, 1}, {101, 2}} {
		h.write(t, config(tt.maxFlows))
		if _, err := h.gw.Reload(); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(logs.String(), warning); n != tt.warns {
			t.Fatalf("after max_flows %d: %d warnings, want %d:\n%s", tt.maxFlows, n, tt.warns, logs)
		}
	}
	// What to do, for a gateway run from a shell too (it named only
	// systemd's LimitNOFILE=).
	if !strings.Contains(logs.String(), "ulimit -n in a shell") {
		t.Errorf("the warning does not say how to raise the limit in a shell:\n%s", logs)
	}
}
