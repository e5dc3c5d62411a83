package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ztgate/ztgate/resolver"
	"github.com/ztgate/ztgate/resolver/resolvertest"
)

// startLineEchoOn is startLineEcho on a chosen loopback address.
func discoveryConfig(ns netip.AddrPort, backends, srv string, port int) string {
	return fmt.Sprintf(`
[gateway]
state_dir = "STATE"
drain_timeout = "1s"
[api]
listen = "off"
[discovery]
nameservers = ["%s"]
min_ttl = "100ms"
max_ttl = "1s"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
[[service]]
name = "app"
tenants = ["acme"]
vip = "10.100.0.9"
%s
%s
  [[service.port]]
  protocol = "tcp"
  port = 7
  target = %d
  [service.health]
  type = "tcp"
  interval = "100ms"
  timeout = "100ms"
  rise = 1
  fall = 1
`, ns, backends, srv, port)
}

func backendAddrs(h *harness, name string) []string {
	var out []string
	for _, b := range h.gw.tbl.Load().byName[name].st.backends.Load().list {
		out = append(out, fmt.Sprintf("%s:%d", b.addr, b.port))
	}
	slices.Sort(out)
	return out
}

// TestDiscoveryHostName: a backend given by name is re-resolved by its
// TTL; a new address takes flows once its health check passes, a vanished
// one leaves.
func TestDiscoveryHostName(t *testing.T) {
	dnsSrv, err := resolvertest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer dnsSrv.Close()
	port := startLineEchoAt(t, "127.0.0.1", "one")
	startLineEchoAtPort(t, "127.0.0.2", port, "two")
	dnsSrv.SetHost("app.corp.example", 1, netip.MustParseAddr("127.0.0.1"))

	h := newFileHarness(t, discoveryConfig(dnsSrv.Addr(), `backends = ["app.corp.example"]`, "", port))
	if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != "[127.0.0.1:0]" {
		t.Fatalf("first resolution: %s", got)
	}
	if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, "x"); got != "one: x" {
		t.Fatalf("got %q", got)
	}

	dnsSrv.SetHost("app.corp.example", 1, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"))
	waitFor(t, 3*time.Second, "the new address to come up", func() bool {
		for _, b := range h.gw.tbl.Load().byName["app"].st.backends.Load().list {
			if b.addr == netip.MustParseAddr("127.0.0.2") && b.usable() {
				return true
			}
		}
		return false
	})
	seen := map[string]bool{}
	for i := range 8 {
		got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, fmt.Sprint(i))
		seen[got[:3]] = true
	}
	if !seen["one"] || !seen["two"] {
		t.Fatalf("flows did not spread over both addresses: %v", seen)
	}

	dnsSrv.SetHost("app.corp.example", 1, netip.MustParseAddr("127.0.0.2"))
	waitFor(t, 3*time.Second, "the vanished address to leave", func() bool {
		return fmt.Sprint(backendAddrs(h.harness, "app")) == "[127.0.0.2:0]"
	})
	if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, "y"); got != "two: y" {
		t.Fatalf("after the change: %q", got)
	}
}

// TestDiscoverySRV: backends_srv takes targets, ports, priorities (failover
// tiers) and weights from SRV records.
func TestDiscoverySRV(t *testing.T) {
	dnsSrv, err := resolvertest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer dnsSrv.Close()
	p1 := startLineEchoAt(t, "127.0.0.1", "primary")
	p2 := startLineEchoAt(t, "127.0.0.2", "backup")
	dnsSrv.SetHost("a.corp.example", 60, netip.MustParseAddr("127.0.0.1"))
	dnsSrv.SetHost("b.corp.example", 60, netip.MustParseAddr("127.0.0.2"))
	dnsSrv.SetSRV("_echo._tcp.app.corp.example", 1,
		resolver.SRV{Target: "a.corp.example", Port: uint16(p1), Priority: 10, Weight: 5},
		resolver.SRV{Target: "b.corp.example", Port: uint16(p2), Priority: 20, Weight: 5})

	h := newFileHarness(t, discoveryConfig(dnsSrv.Addr(), "", `backends_srv = "_echo._tcp.app.corp.example"`, 9))
	want := fmt.Sprint([]string{fmt.Sprintf("127.0.0.1:%d", p1), fmt.Sprintf("127.0.0.2:%d", p2)})
	if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != want {
		t.Fatalf("SRV backends %s, want %s", got, want)
	}
	for i := range 4 {
		if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, fmt.Sprint(i)); got[:7] != "primary" {
			t.Fatalf("the lower priority must take every flow while it is up: %q", got)
		}
	}
	// The primary tier leaves: the next tier takes over.
	dnsSrv.SetSRV("_echo._tcp.app.corp.example", 1,
		resolver.SRV{Target: "b.corp.example", Port: uint16(p2), Priority: 20, Weight: 5})
	waitFor(t, 3*time.Second, "failover to the backup tier", func() bool {
		return len(backendAddrs(h.harness, "app")) == 1
	})
	if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, "z"); got != "backup: z" {
		t.Fatalf("after the primary left: %q", got)
	}
}
