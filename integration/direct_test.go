package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// directTopo adds to the relay topology a link of its own between the
// agent and the gateway, where the gateway's [tunnel] listen is reachable:
//
//	agent a1 .2 ─ .1 relay .13 ─ .14 gateway ─ 192.0.2.10 backend
//	   198.51.100.2 ──────────── 198.51.100.1 (direct path, UDP 4434)
//
// The gateway's other addresses (and the relay's view of it) are among its
// candidates too; the agent has no route to them.
func newDirectTopo(t *testing.T) *relayTopo {
	r := newRelayTopo(t, "a1")
	r.link(r.gw, "198.51.100.1/24", r.agents["a1"], "198.51.100.2/24")
	return r
}

// directFirewall drops, with nftables in the agent's namespace, its UDP
// to the gateway's listen port ("out": the agent's sends then fail at
// once), or the gateway's answers ("in": a silent loss, as on a broken
// path, that only the liveness check notices); "" removes the rule.
func (r *relayTopo) directFirewall(t *testing.T, drop string) {
	t.Helper()
	ns := r.agents["a1"]
	r.try(ns, 5*time.Second, "nft", "delete", "table", "inet", "ztdirect")
	if drop == "" {
		return
	}
	hook, match := "output", "dport"
	if drop == "in" {
		hook, match = "input", "sport"
	}
	r.exec(ns, "nft", "add", "table", "inet", "ztdirect")
	r.exec(ns, "nft", "add", "chain", "inet", "ztdirect", "c", "{ type filter hook "+hook+" priority 0 ; }")
	r.exec(ns, "nft", "add", "rule", "inet", "ztdirect", "c", "udp", match, "4434", "drop")
}

// relayData returns the data datagrams the relay forwarded both ways.
func (r *relayTopo) relayData(t *testing.T) (up, down float64) {
	t.Helper()
	return r.relayCounter(t, "ztgate_relay_datagrams_total", `direction="agent_to_gateway"`, `result="forwarded"`),
		r.relayCounter(t, "ztgate_relay_datagrams_total", `direction="gateway_to_agent"`, `result="forwarded"`)
}

// download fetches a blob from the agent and checks its digest.
func (r *relayTopo) download(t *testing.T, vip string, seed, n int) {
	t.Helper()
	q := fmt.Sprintf("?seed=%d&n=%d", seed, n)
	want, err := r.curl(r.agents["a1"], "http://"+vip+"/blob.sha256"+q)
	if err != nil {
		t.Fatalf("checksum: %v", err)
	}
	got, err := r.curl(r.agents["a1"], "http://"+vip+"/blob"+q)
	if err != nil || sha256Hex([]byte(got)) != strings.TrimSpace(want) {
		t.Fatalf("download of %d bytes: %v (digest %s, want %s)", n, err, sha256Hex([]byte(got)), strings.TrimSpace(want))
	}
}

// TestDirectPath: an agent whose UDP to the gateway is dropped works
// through the relay; once it is let through, the agent goes direct and a
// download passes without the relay carrying any of its packets; when the
// path silently loses everything, the agent is back on the relay within a
// second.
func TestDirectPath(t *testing.T) {
	needTools(t, "curl", "nft")
	r := newDirectTopo(t)
	r.startBackend("192.0.2.10")
	r.startRelay()
	r.startGatewayIn(r.gw, "gw1", r.multiGatewayConfig("gw1", "203.0.113.13", "192.0.2.10", "0.0.0.0:4434"))
	r.directFirewall(t, "out")
	agent := r.startAgent("a1", "acme")

	var vip string
	t.Run("blocked: the relay carries the agent's traffic", func(t *testing.T) {
		eventually(t, 15*time.Second, "web resolves", func() error {
			if vip = r.resolve("a1", "web.ztna.internal"); vip == "" {
				return fmt.Errorf("no answer")
			}
			return nil
		})
		eventually(t, 10*time.Second, "curl through the relay", func() error {
			out, err := r.curl(r.agents["a1"], "--max-time", "3", "http://"+vip+"/hello")
			if err != nil || !strings.Contains(out, "/hello") {
				return fmt.Errorf("%v %q", err, out)
			}
			return nil
		})
		agent.waitOutput(t, "direct path failed", 10*time.Second)
		up, down := r.relayData(t)
		r.download(t, vip, 1, 1<<20)
		if up2, down2 := r.relayData(t); up2 <= up || down2 <= down {
			t.Fatalf("the relay did not carry the download (%v/%v → %v/%v)", up, down, up2, down2)
		}
	})

	t.Run("open: direct, the relay carries none of its data", func(t *testing.T) {
		r.directFirewall(t, "")
		// The agent offers again after its backoff when it has new flows.
		deadline := time.Now().Add(40 * time.Second)
		for !strings.Contains(agent.out.String(), "direct path up") {
			if time.Now().After(deadline) {
				t.Fatalf("no direct path:\n%s", agent.out.String())
			}
			r.curl(r.agents["a1"], "--max-time", "2", "http://"+vip+"/poke")
			time.Sleep(200 * time.Millisecond)
		}
		if !strings.Contains(agent.out.String(), "198.51.100.1:4434") {
			t.Errorf("the direct path is not the gateway's address on the agent's link:\n%s", agent.out.String())
		}
		up, down := r.relayData(t)
		r.download(t, vip, 2, 4<<20)
		out, err := r.curl(r.agents["a1"], "http://"+vip+"/hello-direct")
		if err != nil || !strings.Contains(out, "/hello-direct") {
			t.Fatalf("curl: %v %q", err, out)
		}
		if up2, down2 := r.relayData(t); up2 != up || down2 != down {
			t.Fatalf("the relay carried data of the direct path: %v/%v → %v/%v datagrams", up, down, up2, down2)
		}
	})

	t.Run("the path goes silent: back on the relay within a second", func(t *testing.T) {
		r.directFirewall(t, "in")
		start := time.Now()
		// The agent notices by its pings (a dead path: no pong for 600 ms,
		// seen at a 200 ms tick), timed from its log, polled every 20 ms;
		// the bound leaves 500 ms for a loaded machine, far below what a
		// broken liveness check would take (the QUIC idle timeout, 30 s).
		agent.waitOutput(t, "no answer to pings", 5*time.Second)
		if noticed := time.Since(start); noticed > 1300*time.Millisecond {
			t.Errorf("the agent noticed the silent path after %v", noticed)
		}
		// Then new connections go through the relay. Short attempts: each
		// goes where the agent sends new flows at that moment.
		eventually(t, 10*time.Second, "curl through the relay", func() error {
			out, err := r.curl(r.agents["a1"], "--max-time", "1", "http://"+vip+"/again")
			if err != nil || !strings.Contains(out, "/again") {
				return fmt.Errorf("%v %q", err, out)
			}
			return nil
		})
		took := time.Since(start)
		t.Logf("working through the relay %v after the path went silent", took.Round(10*time.Millisecond))
		if took > 3*time.Second {
			t.Errorf("the agent took %v to fall back", took)
		}
		up, _ := r.relayData(t)
		r.download(t, vip, 3, 1<<20)
		if up2, _ := r.relayData(t); up2 <= up {
			t.Error("the relay did not carry the download")
		}
	})
}
