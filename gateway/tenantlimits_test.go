package gateway

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

var dbVIP = netip.MustParseAddrPort("10.100.0.11:80")

// twoServicesConfig is limitsConfig with a second service, db, published
// to both tenants on the same backend and without limits of its own.
func twoServicesConfig(port int, lim, acme, svc string) string {
	return limitsConfig(port, lim, acme, svc) + strings.ReplaceAll(`
[[service]]
name = "db"
tenants = ["*"]
vip = "10.100.0.11"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = PORT
  [service.health]
  type = "none"
`, "PORT", strconv.Itoa(port))
}

// dial opens a connection from src to dst within d, closed when the test
// ends.
func (h *harness) dial(t *testing.T, src netip.Addr, dst netip.AddrPort, d time.Duration) error {
	t.Helper()
	_, err := h.dialConn(t, src, dst, d)
	return err
}

// dialConn is dial that returns the connection too.
func (h *harness) dialConn(t *testing.T, src netip.Addr, dst netip.AddrPort, d time.Duration) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := h.client.DialTCP(ctx, src, dst)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// dialAll opens n connections from src to dst, each within 5 s, and fails
// the test at the first that does not connect; what names them.
func (h *harness) dialAll(t *testing.T, n int, src netip.Addr, dst netip.AddrPort, what string) {
	t.Helper()
	for i := range n {
		if err := h.dial(t, src, dst, 5*time.Second); err != nil {
			t.Fatalf("%s, flow %d: %v", what, i, err)
		}
	}
}

// wantDropped fails unless a connection from src to dst gets no answer
// within a second and a half: its SYNs are dropped, not reset.
func (h *harness) wantDropped(t *testing.T, src netip.Addr, dst netip.AddrPort) {
	t.Helper()
	err := h.dial(t, src, dst, 1500*time.Millisecond)
	if err == nil || strings.Contains(err.Error(), "refused") {
		t.Fatalf("%v → %v: %v, want a timeout (SYN dropped)", src, dst, err)
	}
}

// refused is the count of TCP refusals for reason.
func (h *harness) refused(t *testing.T, reason string) float64 {
	t.Helper()
	return max(0, metricValue(t, h.gw, "ztgate_flows_refused_total", "protocol", "tcp", "reason", reason))
}

// TestTenantServiceLimits checks the in-flight handshake bound of a service
// and the rates of new flows per source of a tenant and of a service: the
// one over it has its SYNs dropped and counted under its reason, while
// another tenant or service is not affected. The rates run on a stopped
// clock, so only the burst is ever available.
func TestTenantServiceLimits(t *testing.T) {
	port := startHold(t)
	cases := []struct {
		name, lim, acme, svc string
		run                  func(t *testing.T, h *harness)
	}{
		{"service handshakes", "", "", "max_inflight_handshakes = 4", func(t *testing.T, h *harness) {
			// Spoofed sources of acme send SYNs to web and never complete
			// the handshake: each holds one until the handshake timeout.
			const syns = 10
			for i := range syns {
				h.gw.lan.Deliver(netstacktest.TCPSegment(spoofedAcme(i), webVIP, netstacktest.FlagSYN, rand.Uint32(), nil))
			}
			web := h.gw.tbl.Load().lookupVIP(webVIP.Addr())
			waitFor(t, 10*time.Second, "web to hold its 4 handshakes and shed the other SYNs", func() bool {
				return web.st.handshakes.Load() == 4 && h.refused(t, refuseServiceHandshakes) == syns-4
			})
			if n := h.gw.limits.held("acme", tenantHandshakes); n != 4 {
				t.Errorf("acme holds %d handshakes, want the 4 web took", n)
			}
			// The bound is web's, whatever the tenant: globex is shed too…
			h.wantDropped(t, globexClient, webVIP)
			// …while db, and acme's share of the handshakes, are free.
			if err := h.dial(t, acmeClient, dbVIP, 5*time.Second); err != nil {
				t.Fatalf("acme to db during web's handshake bound: %v", err)
			}
			if err := h.dial(t, globexClient, dbVIP, 5*time.Second); err != nil {
				t.Fatalf("globex to db during web's handshake bound: %v", err)
			}
			if n := h.refused(t, refuseTenantHandshakes); n != 0 {
				t.Errorf("%v refusals counted as the tenant's handshakes", n)
			}
			waitFor(t, 30*time.Second, "the spoofed handshakes to time out", func() bool { return web.st.handshakes.Load() == 0 })
			if err := h.dial(t, globexClient, webVIP, 5*time.Second); err != nil {
				t.Fatalf("globex to web once its handshakes timed out: %v", err)
			}
		}},
		{"tenant rate", "", "new_flows_per_second = 2\nnew_flows_burst = 2", "", func(t *testing.T, h *harness) {
			h.dialAll(t, 2, acmeClient, webVIP, "acme flows of its burst")
			h.wantDropped(t, acmeClient, dbVIP)
			if n := h.refused(t, refuseTenantRate); n < 1 {
				t.Fatalf("acme's SYNs over its rate counted as %s: %v", refuseTenantRate, n)
			}
			// globex has the gateway's rate (1000, burst 2000).
			h.dialAll(t, 5, globexClient, webVIP, "globex flows while acme is over its rate")
			if n := h.refused(t, refuseRate); n != 0 {
				t.Errorf("%v refusals counted as the gateway's rate", n)
			}
		}},
		{"service rate", "", "", "new_flows_per_second = 1\nnew_flows_burst = 2", func(t *testing.T, h *harness) {
			h.dialAll(t, 2, acmeClient, webVIP, "acme flows of web's burst")
			h.wantDropped(t, acmeClient, webVIP)
			if n := h.refused(t, refuseServiceRate); n < 1 {
				t.Fatalf("acme's SYNs over web's rate counted as %s: %v", refuseServiceRate, n)
			}
			// The rate is per source: acme still reaches db, globex web.
			h.dialAll(t, 3, acmeClient, dbVIP, "acme flows to db")
			h.dialAll(t, 2, globexClient, webVIP, "globex flows to web")
			if n := h.refused(t, refuseRate) + h.refused(t, refuseTenantRate); n != 0 {
				t.Errorf("%v refusals counted as a source's own rate", n)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, twoServicesConfig(port, tc.lim, tc.acme, tc.svc), withClock(newFakeNow()),
				func(o *Options) { o.HandshakeTimeout = 10 * time.Second })
			tc.run(t, h)
		})
	}
}

// TestLimitsReload lowers a service's handshake bound on reload below what
// it holds: its new SYNs are shed at once and counted, another service is
// not affected.
func TestLimitsReload(t *testing.T) {
	port := startHold(t)
	h := newFileHarness(t, twoServicesConfig(port, "", "", ""))
	for i := range 3 {
		h.gw.lan.Deliver(netstacktest.TCPSegment(spoofedAcme(i), webVIP, netstacktest.FlagSYN, rand.Uint32(), nil))
	}
	web := h.gw.tbl.Load().lookupVIP(webVIP.Addr())
	waitFor(t, 5*time.Second, "web to hold 3 handshakes", func() bool { return web.st.handshakes.Load() == 3 })

	h.write(t, twoServicesConfig(port, "", "max_inflight_handshakes = 10", "max_inflight_handshakes = 3"))
	// The file watcher may apply the change first; either way it is live
	// once Reload returns.
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	h.wantDropped(t, globexClient, webVIP)
	if n := h.refused(t, refuseServiceHandshakes); n < 1 {
		t.Fatalf("SYNs over the reloaded bound counted as %s: %v", refuseServiceHandshakes, n)
	}
	if err := h.dial(t, globexClient, dbVIP, 5*time.Second); err != nil {
		t.Fatalf("globex to db: %v", err)
	}

	h.write(t, twoServicesConfig(port, "", "", ""))
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := h.dial(t, globexClient, webVIP, 5*time.Second); err != nil {
		t.Fatalf("globex to web without the bound: %v", err)
	}
}

// TestDiffTablesLimits checks that a reload reports the limit keys of a
// service and a change of a tenant's limits.
func TestDiffTablesLimits(t *testing.T) {
	mk := func(svc catalog.FlowLimits, tenant catalog.FlowLimits) *table {
		spec := specFor("web", "192.0.2.10")
		spec.FlowLimits = svc
		return &table{
			byName:  map[string]*service{"web": {spec: spec}},
			tenants: newTenantTable([]catalog.Tenant{{Name: "acme", FlowLimits: tenant}}),
		}
	}
	none := catalog.FlowLimits{}
	cases := []struct {
		name           string
		old, new       *table
		changed        string
		tenantsChanged bool
	}{
		{"nothing", mk(none, none), mk(none, none), "[]", false},
		{"service handshakes and rate", mk(none, none),
			mk(catalog.FlowLimits{MaxInflightHandshakes: 3, NewFlowsPerSecond: 5, NewFlowsBurst: 6}, none),
			"[{web [max_inflight_handshakes new_flows_per_second new_flows_burst]}]", false},
		{"service max_flows", mk(none, none), mk(catalog.FlowLimits{MaxFlows: 1}, none), "[{web [max_flows]}]", false},
		{"tenant rate", mk(none, none), mk(none, catalog.FlowLimits{NewFlowsPerSecond: 5}), "[]", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := diffTables(tc.old, tc.new)
			if got := fmt.Sprint(d.Changed); got != tc.changed || d.TenantsChanged != tc.tenantsChanged {
				t.Errorf("changed %s, tenants changed %v; want %s, %v", got, d.TenantsChanged, tc.changed, tc.tenantsChanged)
			}
		})
	}
}
