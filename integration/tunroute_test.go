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
