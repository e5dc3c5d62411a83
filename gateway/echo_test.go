package gateway

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// TestEchoLimitReason: a ping refused because every echo token is taken
// is counted as echo_limit, not as flow_limit ([limits] max_flows).
func TestEchoLimitReason(t *testing.T) {
	gw := startEchoGateway(t)
	gw.echoLimits.mu.Lock()
	gw.echoLimits.total = maxEchoes // every echo request slot in use
	gw.echoLimits.mu.Unlock()
	defer func() {
		gw.echoLimits.mu.Lock()
		gw.echoLimits.total = 0
		gw.echoLimits.mu.Unlock()
	}()
	pkt := netstacktest.EchoRequest(netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("10.100.0.10"), 1, 1, make([]byte, 56))
	gw.lan.Deliver(pkt)
	echoLimit := gw.m.flowsRefused.WithLabelValues("icmp", refuseEchoLimit)
	waitFor(t, 10*time.Second, "the ping to be refused as echo_limit", func() bool { return testutil.ToFloat64(echoLimit) == 1 })
	if n := testutil.ToFloat64(gw.m.flowsRefused.WithLabelValues("icmp", refuseLimit)); n != 0 {
		t.Errorf("flow_limit counted %v refused pings, want 0", n)
	}
}

// startEchoGateway starts a gateway on a device that reads nothing, with
// service web (acme only, echo on, backend 127.0.0.1) and a fake pinger.
func startEchoGateway(t *testing.T) *Gateway {
	t.Helper()
	cfg, err := conf.ParseGateway("test.toml", []byte(`
[gateway]
state_dir = "`+t.TempDir()+`"
[api]
listen = "off"
`+twoTenants+`[[service]]
name = "web"
tenants = ["acme"]
vip = "10.100.0.10"
backends = ["127.0.0.1"]
icmp = true
  [[service.port]]
  protocol = "tcp"
  port = 80
  [service.health]
  type = "none"
`))
	if err != nil {
		t.Fatal(err)
	}
	dev := &nullDevice{done: make(chan struct{})}
	gw, err := New(cfg, Options{Device: dev, Pinger: fakePinger{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	return gw
}

// holdPinger answers pings to up at once and holds every other one until
// release is closed: a backend that drops ICMP, which the gateway waits
// echoTimeout for, held for the whole test so that the test does not race
// that timeout. held counts the pings it holds.
type holdPinger struct {
	up      netip.Addr
	release chan struct{}
	held    *atomic.Int64
}

func (p holdPinger) Ping(_ context.Context, dst netip.Addr, _ []byte) error {
	if dst == p.up {
		return nil
	}
	p.held.Add(1)
	defer p.held.Add(-1)
	<-p.release
	return context.DeadlineExceeded
}
func (holdPinger) Close() error { return nil }

// echoSharesConfig publishes dark (backend 127.0.0.2, which drops pings)
// and lit (127.0.0.1, which answers) to both tenants, echo on.
const echoSharesConfig = quietGateway + twoTenants + `
[[service]]
name = "dark"
tenants = ["*"]
vip = "10.100.0.30"
backends = ["127.0.0.2"]
icmp = true
  [[service.port]]
  protocol = "tcp"
  port = 80
  [service.health]
  type = "none"
[[service]]
name = "lit"
tenants = ["*"]
vip = "10.100.0.31"
backends = ["127.0.0.1"]
icmp = true
  [[service.port]]
  protocol = "tcp"
  port = 80
  [service.health]
  type = "none"
`

// TestEchoShares: pings to a backend that drops ICMP (healthy for TCP)
// hold at most a source's share of the gateway's echo slots, and the
// sources of a tenant together at most the tenant's share, each refusal
// counted under its reason; another source of the tenant, and another
// tenant, are still answered. Before the shares, one LAN client at 128
// pings a second held every slot and no other tenant's ping was answered.
func TestEchoShares(t *testing.T) {
	var held atomic.Int64
	release := make(chan struct{})
	stop := sync.OnceFunc(func() { close(release) })
	h := newHarness(t, echoSharesConfig, func(o *Options) {
		o.Pinger = holdPinger{up: netip.MustParseAddr("127.0.0.1"), release: release, held: &held}
	})
	t.Cleanup(stop) // before the gateway closes: it waits for its pings
	dark, lit := netip.MustParseAddr("10.100.0.30"), netip.MustParseAddr("10.100.0.31")
	refused := func(reason string) int64 {
		return int64(max(0, metricValue(t, h.gw, "ztgate_flows_refused_total", "protocol", "icmp", "reason", reason)))
	}
	refusedAll := func() int64 {
		return refused(refuseEchoLimit) + refused(refuseTenantEchoLimit) + refused(refuseSourceEchoLimit)
	}
	// pingDark sends n pings from src to dark and waits until each is
	// held or refused.
	sent := int64(0)
	pingDark := func(src netip.Addr, n int) {
		t.Helper()
		for i := range n {
			h.gw.lan.Deliver(netstacktest.EchoRequest(src, dark, 1, uint16(sent)+uint16(i), nil))
		}
		sent += int64(n)
		waitFor(t, 10*time.Second, "the pings to dark to be held or refused", func() bool { return held.Load()+refusedAll() == sent })
	}

	// One LAN client of acme pings dark far beyond its share.
	pingDark(acmeClient, 2*maxSourceEchoes)
	if n := held.Load(); n != maxSourceEchoes {
		t.Errorf("one source holds %d pings to a silent backend, want its share %d", n, maxSourceEchoes)
	}
	if n := refused(refuseSourceEchoLimit); n != maxSourceEchoes {
		t.Errorf("%s counted %d, want %d", refuseSourceEchoLimit, n, maxSourceEchoes)
	}
	// Another source of acme is still answered.
	litOK := func() float64 {
		return metricValue(t, h.gw, "ztgate_echo_requests_total", "result", "ok", "service", "lit")
	}
	h.gw.lan.Deliver(netstacktest.EchoRequest(spoofedAcme(0).Addr(), lit, 2, 1, nil))
	waitFor(t, 10*time.Second, "another source of acme to be answered", func() bool { return litOK() == 1 })

	// Eight more sources of acme, each within its share, fill acme's.
	for i := range 8 {
		pingDark(spoofedAcme(1+i).Addr(), maxSourceEchoes)
	}
	if n := held.Load(); n != maxTenantEchoes {
		t.Errorf("acme holds %d pings to a silent backend, want its share %d", n, maxTenantEchoes)
	}
	if n := refused(refuseTenantEchoLimit); n != 8*maxSourceEchoes-(maxTenantEchoes-maxSourceEchoes) {
		t.Errorf("%s counted %d, want %d", refuseTenantEchoLimit, n, 8*maxSourceEchoes-(maxTenantEchoes-maxSourceEchoes))
	}

	// globex is answered, and its pings to dark are held too.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if p, err := h.client.Ping(ctx, h.gw.lan, globexClient, lit, 3, 1, []byte("abc")); err != nil || string(p) != "abc" {
		t.Fatalf("globex's ping while acme pings a silent backend: %q %v", p, err)
	}
	pingDark(globexClient, 1)
	if n := held.Load(); n != maxTenantEchoes+1 {
		t.Errorf("%d pings held once globex pinged dark, want %d", n, maxTenantEchoes+1)
	}
	if n := refused(refuseEchoLimit); n != 0 {
		t.Errorf("%s counted %d, want 0: no tenant may take every slot", refuseEchoLimit, n)
	}

	// Every slot is given back, and no entry stays.
	stop()
	waitFor(t, 10*time.Second, "the held pings to end and give back their slots", func() bool {
		e := h.gw.echoLimits
		e.mu.Lock()
		defer e.mu.Unlock()
		return held.Load() == 0 && e.total == 0 && len(e.tenants) == 0 && len(e.sources) == 0
	})
}
