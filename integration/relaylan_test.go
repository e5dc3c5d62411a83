package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestRelayGatewayLANClients: a gateway attached to a relay and with a
// [tun] of its own serves its LAN clients at the VIPs the relay assigns,
// from the relay's pool (10.101.0.0/24 here), not the gateway's tun.pool
// (10.100.0.0/24, where its DNS address is). The gateway routes the
// relay's pool into its TUN once the relay assigns it; before, the TUN
// kept the routes of tun.pool alone, and the LAN clients' packets to the
// relay's VIPs went nowhere.
//
//	lan 198.51.100.10 ── gw (ztgate gateway, TUN) ── relay 203.0.113.13
//	                      └── backend 192.0.2.10
func TestRelayGatewayLANClients(t *testing.T) {
	needTools(t, "curl", "dig")
	r := newRelayTopo(t)
	lan := r.ns("lan")
	r.link(r.gw, "198.51.100.1/24", lan, "198.51.100.10/24")
	r.exec(r.gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for _, p := range []string{"10.100.0.0/24", "10.101.0.0/24"} {
		r.exec(lan, "ip", "route", "add", p, "via", "198.51.100.1")
	}
	r.relayExtra = `pool = "10.101.0.0/24"`
	r.gwConf = r.writeFile("gateway.toml", r.gatewayConfig()+`
[tun]
name = "ztgate0"
pool = "10.100.0.0/24"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
`)
	r.startBackend("192.0.2.10")
	r.startRelay()
	r.startGateway()

	var vip string
	eventually(t, 15*time.Second, "web.ztna.internal resolves on the LAN", func() error {
		out, _ := r.try(lan, 10*time.Second, "dig", "+short", "+time=2", "+tries=1", "@10.100.0.1", "web.ztna.internal")
		a, err := netip.ParseAddr(strings.TrimSpace(out))
		if err != nil || !netip.MustParsePrefix("10.101.0.0/24").Contains(a) {
			return fmt.Errorf("answer %q, want an address of the relay's pool", out)
		}
		vip = a.String()
		return nil
	})
	eventually(t, 10*time.Second, "curl from the LAN to the relay's VIP", func() error {
		out, err := r.curl(lan, "--max-time", "3", "http://"+vip+"/hello")
		if err != nil || !strings.Contains(out, "/hello") {
			return fmt.Errorf("%v %q", err, out)
		}
		return nil
	})
	if out := r.exec(r.gw, "ip", "route", "show", "10.101.0.0/24"); !strings.Contains(out, "ztgate0") {
		t.Errorf("the relay's pool is not routed into the TUN: %q", out)
	}
}
