package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTUNRouteNotTakenOver: a host that routes tun.pool elsewhere already
// (via a neighbour, or a blackhole, with the metric ztgate's route would
// have or another) keeps that route, and the gateway refuses to start,
// naming it. Before, the gateway replaced it: whatever the host reached
// through it was cut, and when the gateway stopped it took its own route
// away, leaving none. A route at a higher metric was kept, but ztgate's,
// added beside it at metric 0, took its traffic while it ran.
func TestTUNRouteNotTakenOver(t *testing.T) {
	for _, tc := range []struct {
		name  string
		route []string // the host's route, after "ip route add"
		shown string   // in "ip route show" of it
		err   string   // in the gateway's error
	}{
		{"via a neighbour", []string{"10.100.0.0/24", "via", "192.0.2.2"}, "via 192.0.2.2", "the host routes it via"},
		{"blackhole", []string{"blackhole", "10.100.0.0/24"}, "blackhole", "the host has a blackhole route for it"},
		{"at another metric", []string{"10.100.0.0/24", "via", "192.0.2.2", "metric", "100"}, "metric 100", "the host routes it via"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tp := newTopo(t)
			ztgate, _ := binaries(t)
			rt, other := tp.ns("rt"), tp.ns("oth")
			tp.link(rt, "192.0.2.1/24", other, "192.0.2.2/24")
			tp.exec(rt, append([]string{"ip", "route", "add"}, tc.route...)...)
			path := filepath.Join(dir, "gateway.toml")
			config := strings.ReplaceAll(lanConfig, "STATE_DIR", filepath.Join(dir, "state"))
			if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
				t.Fatal(err)
			}
			stdout, stderr, err := tp.tryOut(rt, 30*time.Second, append(gatewayEnv(), ztgate, "gateway", "-config", path, "-log-format", "text")...)
			out := stdout + stderr
			if err == nil || !strings.Contains(out, "route 10.100.0.0/24 via ztgate0") || !strings.Contains(out, tc.err) {
				t.Errorf("the gateway with tun.pool routed elsewhere: %v, want an error saying %q\n%s", err, tc.err, out)
			}
			if got := tp.exec(rt, "ip", "route", "show", "10.100.0.0/24"); !strings.Contains(got, tc.shown) {
				t.Errorf("the host's route of 10.100.0.0/24 is now %q, want it kept (%s)", got, tc.shown)
			}
		})
	}
}

// TestGatewayRoutingWarnings: a gateway on a host that would not bring its
// LAN clients' packets to the VIPs into its TUN says so at start, naming
// why: ip rules that send the pool to another table first (as Tailscale's
// table 52 does for a subnet route, or wg-quick's for a peer's
// 10.0.0.0/8), or forwarding off (a first start on a machine that was
// never a router), or an address of the pool on the host itself. The
// gateway starts all the same: its own host reaches the VIPs.
func TestGatewayRoutingWarnings(t *testing.T) {
	dir := t.TempDir()
	tp := newTopo(t)
	ztgate, _ := binaries(t)
	rt, other := tp.ns("rt"), tp.ns("oth")
	tp.link(rt, "192.0.2.1/24", other, "192.0.2.2/24")
	tp.exec(rt, "ip", "route", "add", "10.100.0.0/24", "via", "192.0.2.2", "table", "100")
	tp.exec(rt, "ip", "rule", "add", "to", "10.100.0.0/24", "lookup", "100", "pref", "100")
	tp.exec(rt, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	path := filepath.Join(dir, "gateway.toml")
	config := strings.ReplaceAll(lanConfig, "STATE_DIR", filepath.Join(dir, "state"))
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	const (
		shadowed  = "packets to the VIP pool do not reach the TUN device: 10.100.0.0/24 (10.100.0.1) goes via"
		notRouter = "the host does not forward packets (net.ipv4.ip_forward is 0)"
	)
	gw := tp.start(rt, "gateway", append(gatewayEnv(), ztgate, "gateway", "-config", path, "-log-format", "text")...)
	gw.waitOutput(t, "gateway started", 30*time.Second)
	for _, want := range []string{shadowed, "(table 100)", notRouter} {
		if out := gw.out.String(); !strings.Contains(out, want) {
			t.Errorf("no %q at start:\n%s", want, out)
		}
	}
	if _, err := gw.stop(10 * time.Second); err != nil {
		t.Errorf("gateway: %v\n%s", err, gw.out.String())
	}

	// A router without the rule: no warning.
	tp.exec(rt, "ip", "rule", "del", "pref", "100")
	tp.exec(rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	gw = tp.start(rt, "gateway", append(gatewayEnv(), ztgate, "gateway", "-config", path, "-log-format", "text")...)
	gw.waitOutput(t, "gateway started", 30*time.Second)
	if out := gw.out.String(); strings.Contains(out, "do not reach the TUN device") || strings.Contains(out, "does not forward") {
		t.Errorf("a warning on a router without the rule:\n%s", out)
	}
	if _, err := gw.stop(10 * time.Second); err != nil {
		t.Errorf("gateway: %v\n%s", err, gw.out.String())
	}

	// An address of the pool on the host: the local table answers for it
	// before any other.
	tp.exec(rt, "ip", "addr", "add", "10.100.0.1/32", "dev", "lo")
	gw = tp.start(rt, "gateway", append(gatewayEnv(), ztgate, "gateway", "-config", path, "-log-format", "text")...)
	gw.waitOutput(t, "gateway started", 30*time.Second)
	if out := gw.out.String(); !strings.Contains(out, "packets to the VIP pool do not reach the TUN device: 10.100.0.0/24 (10.100.0.1) is an address of this host") {
		t.Errorf("no warning of the pool's address on the host:\n%s", out)
	}
	if strings.Contains(gw.out.String(), "overlaps the VIP pool") {
		t.Errorf("a single address reported as an overlapping network:\n%s", gw.out.String())
	}
	if _, err := gw.stop(10 * time.Second); err != nil {
		t.Errorf("gateway: %v\n%s", err, gw.out.String())
	}
	tp.exec(rt, "ip", "addr", "del", "10.100.0.1/32", "dev", "lo")

	// A network of the host numbered inside the pool (its LAN's prefix
	// chosen over it).
	tp.exec(rt, "ip", "addr", "add", "10.100.0.200/25", "dev", "lo")
	gw = tp.start(rt, "gateway", append(gatewayEnv(), ztgate, "gateway", "-config", path, "-log-format", "text")...)
	gw.waitOutput(t, "gateway started", 30*time.Second)
	if out := gw.out.String(); !strings.Contains(out, "the host's network 10.100.0.128/25 on lo (its address 10.100.0.200) overlaps the VIP pool 10.100.0.0/24") {
		t.Errorf("no warning of the network inside the pool:\n%s", out)
	}
	if _, err := gw.stop(10 * time.Second); err != nil {
		t.Errorf("gateway: %v\n%s", err, gw.out.String())
	}
}
