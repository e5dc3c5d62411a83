package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vipService is one service in a generated config: no pin.
func vipConfig(names ...string) string {
	var b strings.Builder
	b.WriteString(`
[gateway]
state_dir = "STATE_DIR"
[tun]
pool = "10.100.0.0/24"
pool6 = "fd00:7a74::/120"
[api]
listen = "127.0.0.1:7780"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
`)
	for _, n := range names {
		fmt.Fprintf(&b, `
[[service]]
name = %q
tenants = ["acme"]
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = 8080
  [service.health]
  type = "none"
`, n)
	}
	return b.String()
}

// serviceVIPs reads name → VIP (and VIP6) from the running gateway's API.
func (l *lanTopo) serviceVIPs(t *testing.T) map[string][2]string {
	t.Helper()
	out, err := l.curl(l.router, "http://127.0.0.1:7780/v1/services")
	if err != nil {
		t.Fatalf("GET /v1/services: %v", err)
	}
	var body struct {
		Services []struct {
			Name string `json:"name"`
			VIP  string `json:"vip"`
			VIP6 string `json:"vip6"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(out), &body); err != nil {
		t.Fatalf("decode services: %v\n%s", err, out)
	}
	m := make(map[string][2]string)
	for _, s := range body.Services {
		m[s.Name] = [2]string{s.VIP, s.VIP6}
	}
	return m
}

// TestVIPAllocation: services without pins get distinct VIPs inside the
// pool, the same VIPs after a restart, after reordering the services in the
// file and after adding one; a corrupt state file stops the gateway with
// an error naming the file.
func TestVIPAllocation(t *testing.T) {
	needTools(t, "curl", "dig")
	l := newLANTopo(t)
	l.startBackend("192.0.2.10")
	pool := netip.MustParsePrefix("10.100.0.0/24")
	pool6 := netip.MustParsePrefix("fd00:7a74::/120")

	gw := l.startGateway(vipConfig("alpha", "bravo", "charlie", "delta"))
	first := l.serviceVIPs(t)
	seen := map[string]bool{}
	for name, v := range first {
		a, err := netip.ParseAddr(v[0])
		if err != nil || !pool.Contains(a) || a == netip.MustParseAddr("10.100.0.1") || a == netip.MustParseAddr("10.100.0.0") || a == netip.MustParseAddr("10.100.0.255") {
			t.Fatalf("%s got VIP %q", name, v[0])
		}
		if a6, err := netip.ParseAddr(v[1]); err != nil || !pool6.Contains(a6) {
			t.Fatalf("%s got VIP6 %q", name, v[1])
		}
		if seen[v[0]] || seen[v[1]] {
			t.Fatalf("VIP handed out twice: %v", first)
		}
		seen[v[0]], seen[v[1]] = true, true
	}
	if len(first) != 4 {
		t.Fatalf("services: %v", first)
	}
	if got := strings.TrimSpace(l.dig(l.acme, "@10.100.0.1", "+short", "AAAA", "alpha.ztna.internal")); got != first["alpha"][1] {
		t.Fatalf("AAAA alpha = %q, want %q", got, first["alpha"][1])
	}
	if out, err := l.curl(l.acme, "http://"+first["bravo"][0]+"/x"); err != nil || !strings.Contains(out, "/x") {
		t.Fatalf("curl bravo by its VIP: %v %q", err, out)
	}

	restart := func(config string) map[string][2]string {
		t.Helper()
		if _, err := gw.stop(6 * time.Second); err != nil {
			t.Fatalf("stop: %v", err)
		}
		gw = l.startGateway(config)
		return l.serviceVIPs(t)
	}
	same := func(what string, got map[string][2]string) {
		t.Helper()
		for name, v := range first {
			if got[name] != v {
				t.Fatalf("%s: %s has %v, had %v", what, name, got[name], v)
			}
		}
	}
	same("after restart", restart(vipConfig("alpha", "bravo", "charlie", "delta")))
	same("after reordering", restart(vipConfig("delta", "bravo", "alpha", "charlie")))
	added := restart(vipConfig("delta", "bravo", "alpha", "charlie", "echo"))
	same("after adding one", added)
	if e := added["echo"][0]; e == "" || seen[e] {
		t.Fatalf("new service echo got %q", e)
	}

	t.Run("corrupt state file", func(t *testing.T) {
		if _, err := gw.stop(6 * time.Second); err != nil {
			t.Fatalf("stop: %v", err)
		}
		state := filepath.Join(l.dir, "state", "vip-state.json")
		if err := os.WriteFile(state, []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := l.try(l.router, 10*time.Second, l.ztgate, "gateway", "-config", filepath.Join(l.dir, "gateway.toml"))
		if err == nil {
			t.Fatal("gateway started on a corrupt state file")
		}
		if !strings.Contains(out, state) {
			t.Fatalf("error does not name %s:\n%s", state, out)
		}
	})
}
