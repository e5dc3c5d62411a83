package gateway

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/conf"
)

// Deterministic tests of what TestReloadRandom found: a gateway reloaded
// to a configuration must show what one started with it shows.

// TestReloadRandomChecksOffForgetError: a reload that turns a service's
// checks off forgets what they said of its backends, their last error
// with their state: GET /v1/services showed the backend "unknown" with
// the error of a check that no longer runs ("connection refused" of a
// port nothing probes any more), where a gateway started with the same
// file shows none, and nothing would ever clear it.
func TestReloadRandomChecksOffForgetError(t *testing.T) {
	port := startLineEcho(t, "web")
	dead := closedPort(t)
	config := func(health string) string {
		return fmt.Sprintf(quietGateway+acmeTenant+`
[[service]]
name = "web"
tenants = ["acme"]
vip = "10.100.0.8"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "tcp"
  port = 7
  target = %d
  [service.health]
%s
`, port, health)
	}
	h := newFileHarness(t, config(fmt.Sprintf(`  type = "tcp"
  port = %d
  interval = "20ms"
  timeout = "20ms"
  fall = 1`, dead.Port())))
	waitFor(t, 5*time.Second, "the backend down", func() bool { return backendStates(t, h.gw, "web") == "down" })

	h.write(t, config(`  type = "none"`))
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	svcs := listServices(t, h.gw)
	if len(svcs) != 1 || len(svcs[0].Backends) != 1 {
		t.Fatalf("services %+v", svcs)
	}
	if b := svcs[0].Backends[0]; b.State != "unknown" || !b.Healthy || b.LastError != "" {
		t.Errorf("backend with checks off: state %q healthy %v last_error %q; want unknown, healthy, no error (as at a start)",
			b.State, b.Healthy, b.LastError)
	}
}

// listServices returns GET /v1/services.
func listServices(t *testing.T, g *Gateway) []apiService {
	t.Helper()
	var list struct {
		Services []apiService `json:"services"`
	}
	call(t, g.apiHandler(""), "GET", "/v1/services", "", &list)
	return list.Services
}

// TestReloadRandomHandshakeBoundNotLive: limits.max_inflight_handshakes
// takes effect at the next start. A reload that changed it alone said
// limits_changed (and `ztgate reload` "limits changed") next to its
// restart_required, and so did the reload that put it back, which changed
// nothing: the table kept the file's [limits] whole, the bound the
// netstack was not started with included.
func TestReloadRandomHandshakeBoundNotLive(t *testing.T) {
	port := startLineEcho(t, "echo")
	config := func(limits string) string {
		return quietGateway + limits + acmeTenant + tcpService("echo", `"acme"`, "10.100.0.7", "127.0.0.1", port)
	}
	h := newFileHarness(t, config(""))
	for _, tc := range []struct {
		name, limits string
		restart      []string
	}{
		{"changed", "[limits]\nmax_inflight_handshakes = 512\n", []string{"limits.max_inflight_handshakes"}},
		{"put back", "", []string{}},
	} {
		h.write(t, config(tc.limits))
		d, err := h.gw.Reload()
		if err != nil {
			t.Fatal(err)
		}
		if d.LimitsChanged || !d.Empty() || !slices.Equal(d.RestartRequired, tc.restart) {
			t.Errorf("%s: diff %+v, want nothing applied and restart_required %v", tc.name, d, tc.restart)
		}
	}
}

// TestReloadRandomRemovedSourceEndsFlows: a reload that leaves a LAN
// client's source in no tenant's prefixes makes its packets dropped
// (deny by default, live on reload), those of its open flows too. Such a
// flow could carry nothing any more, yet it stayed open until its idle
// timeout (an hour for TCP by default): the client hung, the backend's
// connection and a flow slot were held, and a gateway started with the
// new file has no such flow. The reload ends them; the flows of sources
// still admitted go on.
func TestReloadRandomRemovedSourceEndsFlows(t *testing.T) {
	port := startLineEcho(t, "echo")
	udpPort := startUDPEcho(t)
	svc := tcpService("echo", `"*"`, "10.100.0.7", "127.0.0.1", port) + fmt.Sprintf(`  [[service.port]]
  protocol = "udp"
  port = 7
  target = %d
`, udpPort)
	h := newFileHarness(t, quietGateway+twoTenants+svc)
	acme := h.dialLines(t, acmeClient, "10.100.0.7:7")
	globex := h.dialLines(t, globexClient, "10.100.0.7:7")
	acmeUDP, err := h.client.DialUDP(acmeClient, netip.MustParseAddrPort("10.100.0.7:7"))
	if err != nil {
		t.Fatal(err)
	}
	defer acmeUDP.Close()
	acmeUDP.Write([]byte("hi"))
	acmeUDP.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := acmeUDP.Read(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*lineConn{acme, globex} {
		if got := c.roundTrip(t, "before"); got != "echo: before" {
			t.Fatalf("before the reload: %q", got)
		}
	}

	// acme's tenant goes, its prefix with it.
	h.write(t, quietGateway+`
[[tenant]]
name = "globex"
sources = ["203.0.113.0/24"]
`+svc)
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "acme's flows to end", func() bool {
		return len(h.gw.flows.list(func(f *flow) bool { return f.peer.tenant == "acme" })) == 0
	})
	acme.waitClosed(t, 3*time.Second, "acme's TCP flow closed")
	if got := globex.roundTrip(t, "after"); got != "echo: after" {
		t.Fatalf("globex's flow after the reload: %q", got)
	}
}

// TestReloadRandomRacedFlowOneTenantTable: a reload moves a LAN source
// from acme to globex and the service from acme to globex while a new
// flow from that source is being classified against the table before.
// Both configurations let the flow through (before: acme to a service of
// acme; after: globex to a service of globex). A flow that met the new
// backends is decided by the new generation of its service
// (TestFlowDecidedByOneGeneration), and was so with the tenant the old
// table gave its source: acme, checked against the new service's tenants,
// and refused as tenant_denied, which neither configuration says.
func TestReloadRandomRacedFlowOneTenantTable(t *testing.T) {
	port := startLineEcho(t, "web")
	config := func(tenant string) string {
		return quietGateway + fmt.Sprintf(`
[[tenant]]
name = %q
sources = ["198.51.100.0/24"]
`, tenant) + tcpService("web", fmt.Sprintf("%q", tenant), "10.100.0.50", "127.0.0.1", port)
	}
	var (
		h         *fileHarness
		reloadErr atomic.Pointer[error]
	)
	clock := &reloadingClock{fire: func() { // once the flow loaded the table and identified its source
		err := os.WriteFile(h.path, []byte(strings.ReplaceAll(config("globex"), "STATE", filepath.Join(h.dir, "state"))), 0o644)
		if err == nil {
			_, err = h.gw.Reload()
		}
		reloadErr.Store(&err)
	}}
	h = newFileHarness(t, config("acme"), func(o *Options) { o.Now = clock.now })
	clock.armed.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.client.DialTCP(ctx, acmeClient, netip.MustParseAddrPort("10.100.0.50:7"))
	if p := reloadErr.Load(); p == nil || *p != nil {
		t.Fatalf("the reload during the classification: %v", p)
	}
	if err != nil {
		t.Fatalf("a new flow that both configurations let through, classified as the reload swapped the table: %v (tenant_denied: %v)",
			err, metricValue(t, h.gw, "ztgate_flows_refused_total", "protocol", "tcp", "reason", refuseTenant))
	}
	defer c.Close()
	l := &lineConn{c: c, r: bufio.NewReader(c)}
	if got := l.roundTrip(t, "x"); got != "web: x" {
		t.Fatalf("answer %q", got)
	}
	if fs := h.gw.flows.list(nil); len(fs) != 1 || fs[0].peer.tenant != "globex" {
		t.Fatalf("flows %v, want one of globex: the generation that decided it names the source's tenant", fs)
	}
}

// TestReloadRandomLateFlowDrainsByNewTimeout: a reload takes a service's
// backend away and sets drain_timeout from 0s to 30s, while a new flow to
// that backend, classified before, is being set up. The reload gives the
// service's state its new backends as it builds its table, before it puts
// the table in; a flow that enters the flow table in between finds its
// backend gone and is drained for the drain_timeout of the change that
// took it away: the new file's 30s, as the flows open at the swap are.
// It was drained by the running table's 0s, at once.
func TestReloadRandomLateFlowDrainsByNewTimeout(t *testing.T) {
	port := startLineEchoPair(t, "127.0.0.1", "a", "127.0.0.2", "b")
	config := func(drain, backend string) string {
		return fmt.Sprintf(`
[gateway]
state_dir = "STATE"
drain_timeout = %q
[api]
listen = "off"
`, drain) + acmeTenant + tcpService("web", `"acme"`, "10.100.0.8", backend, port)
	}
	hold, dialing := make(chan struct{}), make(chan struct{}, 1)
	h := newHarnessWith(t, config("0s", "127.0.0.1"), func(g *Gateway) {
		g.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialing <- struct{}{}
			<-hold
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	})
	res := h.dialLater(acmeClient, "10.100.0.8:7")
	<-dialing

	// The reload, up to the swap: its table is built, with the service's
	// new backends.
	next, err := conf.ParseGateway("gw.toml", []byte(strings.ReplaceAll(config("30s", "127.0.0.2"), "STATE", t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	h.gw.reloadMu.Lock()
	defer h.gw.reloadMu.Unlock()
	old := h.gw.tbl.Load()
	tbl, err := h.gw.buildTable(next.Services, next.Tenants, next.Limits, next.DrainTimeout)
	if err != nil {
		t.Fatal(err)
	}
	close(hold) // the flow enters the flow table now
	r := <-res
	if r.err != nil {
		t.Fatalf("dial: %v", r.err)
	}
	defer r.c.Close()
	waitFor(t, 3*time.Second, "the flow in the flow table", func() bool {
		return metricValue(t, h.gw, "ztgate_flows_total", "protocol", "tcp", "service", "web", "tenant", "acme") == 1
	})
	h.gw.swapTable(old, tbl)

	time.Sleep(200 * time.Millisecond) // a drain at once would have closed it
	live := &lineConn{c: r.c, r: bufio.NewReader(r.c)}
	live.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(live.c, "x"); err != nil {
		t.Fatalf("the flow of the backend the reload took away, with drain_timeout 30s: %v", err)
	}
	if got, err := live.r.ReadString('\n'); err != nil || got != "a: x\n" {
		t.Fatalf("the flow of the backend the reload took away, with drain_timeout 30s: %q %v", got, err)
	}
}
