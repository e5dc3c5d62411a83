package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestAgentOverIPv6: an agent whose only way to the relay is IPv6 (a
// mobile or an IPv6-only network) gets the same service: the relay
// listens on [::], the agent dials its IPv6 address, and names, a large
// download and a large upload pass intact (no full-size packet lost to
// the IPv6 header's 20 bytes more); the relay sees the agent's IPv6
// address.
func TestAgentOverIPv6(t *testing.T) {
	needTools(t, "curl", "dig")
	r := newRelayTopo(t, "a1")
	ns := r.agents["a1"]
	// IPv6 only on the agent's link: its IPv4 address goes.
	relayDev, agentDev := devWithAddr(t, r, r.relay, "203.0.113.1/30"), devWithAddr(t, r, ns, "203.0.113.2/30")
	r.exec(r.relay, "ip", "addr", "add", "2001:db8:0:1::1/64", "dev", relayDev, "nodad")
	r.exec(ns, "ip", "addr", "add", "2001:db8:0:1::2/64", "dev", agentDev, "nodad")
	r.exec(ns, "ip", "addr", "del", "203.0.113.2/30", "dev", agentDev)
	r.agentServer["a1"] = "[2001:db8:0:1::1]:4433"
	r.relayListen = "[::]:4433"
	r.startBackend("192.0.2.10")
	r.startRelay()
	r.startGateway() // over IPv4: [::] takes both
	r.startAgent("a1", "acme")

	vip := r.waitResolve(t, "a1", "web.ztna.internal")
	url := fmt.Sprintf("http://%s/blob?seed=6&n=%d", vip, 8<<20)
	want, err := r.curl(ns, strings.Replace(url, "/blob?", "/blob.sha256?", 1))
	if err != nil {
		t.Fatalf("checksum: %v", err)
	}
	got, err := r.curlWithin(ns, 60*time.Second, "-o", "/dev/stdout", url)
	if err != nil {
		t.Fatalf("8 MiB download: %v", err)
	}
	if sum := sha256Hex([]byte(got)); sum != strings.TrimSpace(want) {
		t.Errorf("8 MiB download: digest %s, want %s (%d bytes)", sum, strings.TrimSpace(want), len(got))
	}
	r.upload(t, ns, "http://"+vip, 8<<20, 60*time.Second)

	out := r.exec(r.relay, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:7781/v1/sessions")
	if !strings.Contains(out, `[2001:db8:0:1::2]:`) {
		t.Errorf("the relay's sessions do not show the agent's IPv6 address:\n%s", out)
	}
}

// devWithAddr returns the device in ns that has addr (CIDR).
func devWithAddr(t *testing.T, r *relayTopo, ns, addr string) string {
	t.Helper()
	for _, line := range strings.Split(r.exec(ns, "ip", "-o", "addr", "show"), "\n") {
		if f := strings.Fields(line); len(f) > 3 && f[3] == addr {
			return f[1]
		}
	}
	t.Fatalf("no device with %s in %s", addr, ns)
	return ""
}
