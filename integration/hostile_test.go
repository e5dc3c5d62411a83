package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/gopool"
)

// floodConfig publishes web to both tenants, so that a flood from acme
// and a client of globex meet at the same service.
var floodConfig = strings.Replace(lanConfig, `name = "web"
tenants = ["acme"]`, `name = "web"
tenants = ["*"]`, 1)

// TestSYNFloodThroughTUN floods the gateway with 20,000 SYNs from spoofed
// sources of acme's prefix, sent with a raw socket from acme's namespace
// through the router into the TUN device. Meanwhile globex connects within
// 2 s each time; afterwards the flood is counted, acme's own client is
// served and the gateway's goroutines are back near their baseline.
func TestSYNFloodThroughTUN(t *testing.T) {
	needTools(t, "curl")
	l := newLANTopo(t)
	flooder := stressClient(t)
	l.startBackend("192.0.2.10")
	l.startGateway(floodConfig)
	metrics := "http://127.0.0.1:7780/metrics"
	if _, err := l.curl(l.acme, "--max-time", "3", "http://10.100.0.10/warm"); err != nil {
		t.Fatal(err)
	}
	base, err := l.scrape(l.router, metrics)
	if err != nil {
		t.Fatal(err)
	}

	flood := l.start(l.acme, "synflood", flooder, "synflood", "-to", "10.100.0.10:80",
		"-src", "198.51.100.0/24", "-n", "20000", "-pace", "5ms")
	time.Sleep(500 * time.Millisecond)
	for i := range 3 {
		start := time.Now()
		out, err := l.curl(l.globex, "--max-time", "5", "http://10.100.0.10/globex")
		if err != nil || !strings.Contains(out, "/globex") {
			t.Fatalf("globex request %d during the flood: %v %q", i, err, out)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("globex request %d took %v during the flood", i, d)
		}
		t.Logf("globex request %d during the flood: %v", i, time.Since(start).Round(time.Millisecond))
	}
	during, err := l.scrape(l.router, metrics)
	if err != nil {
		t.Fatal(err)
	}
	// The flood holds at most acme's share of max_inflight_handshakes
	// (1024/2), a goroutine each, until the handshake timeout; each of the
	// gateway's two goroutine pools (the SYNs' handlers, the splices'
	// workers) keeps up to gopool.DefaultMaxIdle more waiting for a task.
	// CI once counted 645 against a bound without the pools (26+512+100).
	if g := during["go_goroutines"]; g > base["go_goroutines"]+512+2*gopool.DefaultMaxIdle+100 {
		t.Errorf("%v goroutines during the flood, baseline %v", g, base["go_goroutines"])
	}
	t.Logf("goroutines during the flood: %v (baseline %v)", during["go_goroutines"], base["go_goroutines"])
	if err := flood.wait(60 * time.Second); err != nil {
		t.Fatalf("flood: %v\n%s", err, flood.out.String())
	}
	t.Log(strings.TrimSpace(flood.out.String()))

	after, err := l.scrape(l.router, metrics)
	if err != nil {
		t.Fatal(err)
	}
	shed := sumMetric(after, "ztgate_flows_refused_total", `reason="handshake_limit"`)
	t.Logf("SYNs shed by acme's share of handshakes: %v", shed)
	if shed == 0 {
		t.Error("the flood was not counted")
	}
	if out, err := l.curl(l.acme, "--max-time", "5", "http://10.100.0.10/after"); err != nil || !strings.Contains(out, "/after") {
		t.Fatalf("acme after the flood: %v %q", err, out)
	}
	baseG := base["go_goroutines"]
	eventually(t, 30*time.Second, "goroutines back to baseline", func() error {
		m, err := l.scrape(l.router, metrics)
		if err != nil {
			return err
		}
		if g := m["go_goroutines"]; g > baseG+20 {
			return fmt.Errorf("%v goroutines, baseline %v", g, baseG)
		}
		// The handshakes the spoofed sources never completed were given
		// up after the handshake timeout, and counted.
		if n := sumMetric(m, "ztgate_stack_packets_dropped_total", `reason="tcp_handshake_failed"`); n == 0 {
			return fmt.Errorf("no failed handshake counted")
		}
		t.Logf("goroutines %v (baseline %v), RSS %.1f MiB (baseline %.1f MiB)", m["go_goroutines"], baseG,
			m["process_resident_memory_bytes"]/(1<<20), base["process_resident_memory_bytes"]/(1<<20))
		return nil
	})
}

// TestGarbageOnQUICPorts sends random datagrams to the relay's port from
// an agent's namespace and to the gateway's direct listener from the
// relay's: neither process breaks, both count what they dropped, and the
// agents still reach the service.
func TestGarbageOnQUICPorts(t *testing.T) {
	needTools(t, "curl", "dig")
	r := newRelayTopo(t, "a1")
	sender := stressClient(t)
	r.startBackend("192.0.2.10")
	r.startRelay()
	r.gwConf = r.writeFile("gateway.toml", strings.Replace(r.gatewayConfig(), "[tunnel]\n", "[tunnel]\nlisten = \"0.0.0.0:4434\"\n", 1))
	r.startGateway()
	r.startAgent("a1", "acme")
	vip := r.waitVIP(t, "a1")

	const n = 5000
	for _, target := range []struct{ ns, addr, api string }{
		{r.agents["a1"], "203.0.113.1:4433", "http://127.0.0.1:7781/metrics"},
		{r.relay, "203.0.113.14:4434", "http://127.0.0.1:7780/metrics"},
	} {
		out := r.exec(target.ns, sender, "garbage", "-to", target.addr, "-n", fmt.Sprint(n))
		t.Log(strings.TrimSpace(out))
		apiNS := r.relay
		if strings.Contains(target.api, "7780") {
			apiNS = r.gw
		}
		eventually(t, 10*time.Second, "garbage to "+target.addr+" counted", func() error {
			m, err := r.scrape(apiNS, target.api)
			if err != nil {
				return err
			}
			// A quarter of the datagrams are short-header packets of
			// an unknown connection: those get a stateless reset
			// (RFC 9000 10.3) rather than a silent drop, unless the
			// reset queue is full. Every other one must be counted.
			if got := sumMetric(m, "ztgate_tunnel_udp_dropped_total"); got < 0.9*(n-n/4) || got > n {
				return fmt.Errorf("%v of %d counted, want at least %v", got, n, 0.9*(n-n/4))
			}
			return nil
		})
	}
	for _, p := range []*proc{r.relayProc, r.gwProc} {
		select {
		case <-p.done:
			t.Fatalf("%s exited: %v", p.name, p.err)
		default:
		}
	}
	if out, err := r.curl(r.agents["a1"], "--max-time", "5", "http://"+vip+"/after-garbage"); err != nil || !strings.Contains(out, "/after-garbage") {
		t.Fatalf("agent after the garbage: %v %q", err, out)
	}
}

// waitVIP waits until agent resolves web and can fetch from it, and
// returns its VIP.
func (r *relayTopo) waitVIP(t *testing.T, agent string) string {
	t.Helper()
	var vip string
	eventually(t, 20*time.Second, "web resolves at "+agent, func() error {
		if vip = r.resolve(agent, "web.ztna.internal"); vip == "" {
			return fmt.Errorf("no answer")
		}
		return nil
	})
	eventually(t, 15*time.Second, "curl through relay and gateway", func() error {
		out, err := r.curl(r.agents[agent], "--max-time", "3", "http://"+vip+"/ready")
		if err != nil || !strings.Contains(out, "/ready") {
			return fmt.Errorf("%v %q", err, out)
		}
		return nil
	})
	return vip
}
