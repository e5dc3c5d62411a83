package integration

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// This file and direct_test.go try issue 8 as a user would: several
// gateways for a service behind a relay, health-driven refusals at the
// agent, and the direct path. They reuse relayTopo (relay_test.go) and add
// gateways and links of their own.

// multiGatewayConfig is a gateway attached to the relay at 203.0.113.13
// (gw1) or .17 (gw2) serving "web" from one backend: HTTP on 80, a TCP and
// a UDP echo on 7. listen, when set, is its [tunnel] listen.
func (r *relayTopo) multiGatewayConfig(name, relayIP, backend, listen string) string {
	listenLine := ""
	if listen != "" {
		listenLine = fmt.Sprintf("listen = %q\n", listen)
	}
	return fmt.Sprintf(`
[gateway]
name = %q
state_dir = "%s/%s-state"
[tunnel]
relay = "%s:4433"
server_name = "relay.test"
%scert = "%s/%s.crt"
key = "%s/%s.key"
ca = "%s/ca.crt"
[api]
listen = "127.0.0.1:7780"
[[service]]
name = "web"
tenants = ["acme"]
backends = [%q]
icmp = true
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = 8080
  [[service.port]]
  protocol = "tcp"
  port = 7
  [[service.port]]
  protocol = "udp"
  port = 7
  [service.health]
  type = "http"
  port = 8080
  path = "/healthz"
  interval = "500ms"
`, name, r.dir, name, relayIP, listenLine, r.pki, name, r.pki, name, r.pki, backend)
}

// startGatewayIn writes a gateway's config and runs it in ns.
func (r *relayTopo) startGatewayIn(ns, name, config string) *proc {
	r.t.Helper()
	path := r.writeFile(name+".toml", config)
	p := r.start(ns, "ztgate gateway "+name, r.ztgate, "gateway", "-config", path, "-log-format", "text")
	p.waitOutput(r.t, "gateway started", 15*time.Second)
	return p
}

// startBackendIn runs the test backend on addr in ns (HTTP on 8080, TCP
// and UDP echo on 7), named by its address.
func (r *relayTopo) startBackendIn(ns, addr string) *proc {
	p := r.start(ns, "backend "+addr, r.backendBin, "-name", addr, "-http", addr+":8080", "-udp", addr+":7", "-tcp", addr+":7")
	p.waitOutput(r.t, "ready", 10*time.Second)
	return p
}

// relayAPI calls the relay's API from inside its namespace.
func (r *relayTopo) relayAPI(method, path string) (string, error) {
	out, _, err := r.tryOut(r.relay, 10*time.Second, "curl", "-sS", "--max-time", "5", "-X", method, "http://127.0.0.1:7781"+path)
	return out, err
}

// relayCounter sums the samples of a metric of the relay whose labels
// contain every one of labels (e.g. `direction="agent_to_gateway"`).
func (r *relayTopo) relayCounter(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	out, err := r.relayAPI("GET", "/metrics")
	if err != nil {
		t.Fatalf("relay metrics: %v", err)
	}
	sum := 0.0
	for line := range strings.SplitSeq(out, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		matches := true
		for _, l := range labels {
			matches = matches && strings.Contains(line, l)
		}
		if f := strings.Fields(line); matches && len(f) == 2 {
			v, _ := strconv.ParseFloat(f[1], 64)
			sum += v
		}
	}
	return sum
}

// servedBy asks the web VIP from an agent which backend answers; "" when
// the request failed.
func (r *relayTopo) servedBy(agent, vip string, timeout time.Duration) string {
	out, _, err := r.tryOut(r.agents[agent], timeout+time.Second, "curl", "-sS", "--max-time",
		strconv.FormatFloat(timeout.Seconds(), 'f', 1, 64), "http://"+vip+"/who")
	if err != nil {
		return ""
	}
	return strings.Fields(out + " ")[0]
}

// gatewayHolds reports whether the gateway in ns has a TCP flow to the
// echo port 7 of a backend (the long-lived flow of the tests).
func (r *relayTopo) gatewayHolds(ns string) bool {
	out, _, err := r.tryOut(ns, 10*time.Second, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:7780/v1/flows?service=web")
	if err != nil {
		return false
	}
	var v struct {
		Flows []struct {
			Protocol string `json:"protocol"`
			Backend  string `json:"backend"`
		} `json:"flows"`
	}
	if json.Unmarshal([]byte(out), &v) != nil {
		return false
	}
	for _, f := range v.Flows {
		if f.Protocol == "tcp" && strings.HasSuffix(f.Backend, ":7") {
			return true
		}
	}
	return false
}

// fewerFlows names the gateway with fewer flows in the relay's tables
// (where new flows go) and the other one.
func (r *relayTopo) fewerFlows(t *testing.T) (fewer, more string) {
	t.Helper()
	out, err := r.relayAPI("GET", "/v1/gateways")
	var v struct {
		Gateways []struct {
			Name  string `json:"name"`
			Flows int64  `json:"flows"`
		} `json:"gateways"`
	}
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || len(v.Gateways) != 2 {
		t.Fatalf("GET /v1/gateways: %v\n%s", err, out)
	}
	a, b := v.Gateways[0], v.Gateways[1]
	if b.Flows < a.Flows {
		a, b = b, a
	}
	return a.Name, b.Name
}

// TestGatewayFailover: two gateways serve one service through the relay.
// New connections spread over both; a drained gateway takes no new ones
// while a long-lived flow on it goes on; a killed gateway (SIGKILL: no
// goodbye) loses its new connections to the other within 3 s while the
// agent keeps running; with every backend dead the agent refuses at once
// and DNS still resolves the name.
func TestGatewayFailover(t *testing.T) {
	needTools(t, "curl", "dig", "ping")
	r := newRelayTopo(t, "a1")
	gw2 := r.ns("gw2")
	be2 := r.ns("be2")
	r.link(r.relay, "203.0.113.17/30", gw2, "203.0.113.18/30")
	r.link(gw2, "198.51.100.1/24", be2, "198.51.100.10/24")
	r.ztg("pki", "issue", "-dir", r.pki, "-role", "gateway", "-tenant", "infra", "-name", "gw2")
	backend1 := r.startBackendIn(r.backends, "192.0.2.10")
	backend2 := r.startBackendIn(be2, "198.51.100.10")
	r.startRelay()
	gws := map[string]*proc{
		"gw1": r.startGatewayIn(r.gw, "gw1", r.multiGatewayConfig("gw1", "203.0.113.13", "192.0.2.10", "")),
		"gw2": r.startGatewayIn(gw2, "gw2", r.multiGatewayConfig("gw2", "203.0.113.17", "198.51.100.10", "")),
	}
	gwNS := map[string]string{"gw1": r.gw, "gw2": gw2}
	backendOf := map[string]string{"gw1": "192.0.2.10", "gw2": "198.51.100.10"}
	agent := r.startAgent("a1", "acme")

	var vip string
	eventually(t, 20*time.Second, "web resolves and both gateways report it healthy", func() error {
		if vip = r.resolve("a1", "web.ztna.internal"); vip == "" {
			return fmt.Errorf("no answer")
		}
		out, err := r.relayAPI("GET", "/v1/services")
		if err != nil || strings.Count(out, `"state": "healthy"`) != 2 {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})

	t.Run("new connections spread over both gateways", func(t *testing.T) {
		seen := map[string]int{}
		for range 10 {
			seen[r.servedBy("a1", vip, 3*time.Second)]++
		}
		if seen["192.0.2.10"] == 0 || seen["198.51.100.10"] == 0 || seen[""] != 0 {
			t.Fatalf("answers by backend: %v", seen)
		}
		t.Logf("answers by backend: %v", seen)
	})

	// A long-lived TCP flow, then which gateway carries it.
	hold := r.start(r.agents["a1"], "hold", r.backendBin, "-hold", vip+":7")
	hold.waitOutput(t, "ok 10", 10*time.Second)
	holder, other := "gw1", "gw2"
	if r.gatewayHolds(gw2) {
		holder, other = "gw2", "gw1"
	} else if !r.gatewayHolds(r.gw) {
		t.Fatal("no gateway carries the long-lived flow")
	}
	t.Logf("the long-lived flow is on %s", holder)

	t.Run("a drained gateway takes no new connections; its flow goes on", func(t *testing.T) {
		if out, err := r.relayAPI("POST", "/v1/gateways/"+holder+"/drain"); err != nil || !strings.Contains(out, `"drained": true`) {
			t.Fatalf("drain: %v %s", err, out)
		}
		for i := range 8 {
			if got := r.servedBy("a1", vip, 3*time.Second); got != backendOf[other] {
				t.Fatalf("request %d served by %q while %s is drained", i, got, holder)
			}
		}
		out, _ := r.relayAPI("GET", "/v1/gateways")
		if !strings.Contains(out, `"state": "draining"`) {
			t.Errorf("GET /v1/gateways does not show the drain:\n%s", out)
		}
		if strings.Contains(hold.out.String(), "FAIL") || !r.gatewayHolds(gwNS[holder]) {
			t.Fatalf("the long-lived flow broke:\n%s", hold.out.String())
		}
		if out, err := r.relayAPI("POST", "/v1/gateways/"+holder+"/undrain"); err != nil || !strings.Contains(out, `"drained": false`) {
			t.Fatalf("undrain: %v %s", err, out)
		}
	})

	t.Run("a killed gateway: new connections move within 3 s", func(t *testing.T) {
		// Kill the gateway that new connections would go to (the one with
		// fewer flows): they must move to the other.
		victim, survivor := r.fewerFlows(t)
		t.Logf("killing %s, which new connections go to", victim)
		pid := agent.cmd.Process.Pid
		gws[victim].cmd.Process.Signal(syscall.SIGKILL)
		<-gws[victim].done
		killed := time.Now()
		var moved time.Time
		streak := 0
		for streak < 5 {
			start := time.Now()
			if start.Sub(killed) > 15*time.Second {
				t.Fatal("new connections did not move to the surviving gateway")
			}
			if r.servedBy("a1", vip, 300*time.Millisecond) == backendOf[survivor] {
				if streak == 0 {
					moved = start
				}
				streak++
			} else {
				streak = 0
			}
			time.Sleep(100 * time.Millisecond)
		}
		took := moved.Sub(killed)
		t.Logf("new connections on %s %v after %s was killed", survivor, took.Round(10*time.Millisecond), victim)
		// 2 s of silence, noticed at a 250 ms ping tick (timer jitter can
		// cost one more), then one attempt of about 0.5 s; a broken
		// liveness check would take the QUIC idle timeout, 30 s.
		if bound := 4 * time.Second; took > bound { // relay.DefaultDeadAfter + 2*DefaultPingInterval + 1.5 s
			t.Errorf("new connections moved after %v, want within %v", took, bound)
		}
		select {
		case <-agent.done:
			t.Fatal("the agent exited")
		default:
		}
		if agent.cmd.Process.Pid != pid {
			t.Fatal("the agent was restarted")
		}
		// The long-lived flow stays where it is: it goes on if its gateway
		// survived, and breaks (as TCP must) if it was the one killed.
		if failed := strings.Contains(hold.out.String(), "FAIL"); failed != (victim == holder) {
			t.Errorf("long-lived flow on %s, %s killed, failed %v:\n%s", holder, victim, failed, hold.out.String())
		}
		out, _ := r.relayAPI("GET", "/v1/gateways")
		if strings.Contains(out, `"name": "`+victim+`"`) {
			t.Errorf("the killed gateway is still listed:\n%s", out)
		}
	})
	hold.stop(5 * time.Second)

	t.Run("every backend dead: refused at the agent, the name stays", func(t *testing.T) {
		backend1.stop(5 * time.Second)
		backend2.stop(5 * time.Second)
		eventually(t, 10*time.Second, "the relay marks web down", func() error {
			out, err := r.relayAPI("GET", "/v1/services")
			if err != nil || !strings.Contains(out, `"healthy": false`) || strings.Contains(out, `"healthy": true`) {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		// Refused by the agent itself, once the directory push reached it:
		// fast, and nothing reaches the relay.
		eventually(t, 15*time.Second, "the agent refuses the connection itself", func() error {
			sent := r.relayCounter(t, "ztgate_relay_datagrams_total", `direction="agent_to_gateway"`)
			start := time.Now()
			_, _, err := r.tryOut(r.agents["a1"], 10*time.Second, "curl", "-sS", "--max-time", "5", "http://"+vip+"/")
			d := time.Since(start)
			if ee, ok := err.(interface{ ExitCode() int }); !ok || ee.ExitCode() != 7 || d >= 2*time.Second { // 7: could not connect
				return fmt.Errorf("curl with no healthy backend: %v after %v, want refused in < 2 s", err, d)
			}
			if after := r.relayCounter(t, "ztgate_relay_datagrams_total", `direction="agent_to_gateway"`); after != sent {
				return fmt.Errorf("the refused connection reached the relay (%v → %v datagrams)", sent, after)
			}
			t.Logf("refused after %v", d.Round(time.Millisecond))
			return nil
		})
		if got := r.resolve("a1", "web.ztna.internal"); got != vip {
			t.Fatalf("dig web.ztna.internal: %q, want %s", got, vip)
		}
		if out, err := r.try(r.agents["a1"], 5*time.Second, "ping", "-c", "1", "-W", "1", vip); err == nil {
			t.Fatalf("ping answered with no healthy backend:\n%s", out)
		}
	})
}
