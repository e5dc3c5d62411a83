package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
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
