package integration

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestNetworkBack: a client's network (a laptop's, a gateway's uplink)
// goes away long enough for its waits between dials to the relay to grow,
// then comes back: it dials again at once, not at the end of its wait, and
// flows work.
func TestNetworkBack(t *testing.T) {
	needTools(t, "curl", "dig")
	for _, tc := range []struct {
		name   string
		client func(r *relayTopo) (p *proc, ns, addr string)
	}{
		{"agent", func(r *relayTopo) (*proc, string, string) {
			return r.agentProcs["a1"], r.agents["a1"], "203.0.113.2/30"
		}},
		{"gateway", func(r *relayTopo) (*proc, string, string) { return r.gwProc, r.gw, "203.0.113.14/30" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRelayTopo(t, "a1")
			r.startBackend("192.0.2.10")
			r.startRelay()
			r.startGateway()
			r.startAgent("a1", "acme")
			vip := r.waitResolve(t, "a1", "web.ztna.internal")
			p, ns, addr := tc.client(r)
			dev := devWithAddr(t, r, ns, addr)

			r.exec(ns, "ip", "link", "set", dev, "down")
			// Traffic: the session's next send fails.
			r.try(r.agents["a1"], 5*time.Second, "curl", "-s", "--max-time", "1", "http://"+vip+"/hello")
			// Failed dials until the wait is past 6 s (1, 2, 4, then 8 s ± 20 %).
			waits := regexp.MustCompile(`msg="tunnel disconnected; redialing".* in=([0-9.]+)s`)
			eventually(t, 40*time.Second, "a wait of more than 6 s", func() error {
				for _, m := range waits.FindAllStringSubmatch(p.out.String(), -1) {
					var d float64
					fmt.Sscanf(m[1], "%g", &d)
					if d > 6 {
						return nil
					}
				}
				return fmt.Errorf("not yet")
			})
			before := strings.Count(p.out.String(), `msg="tunnel connected"`)
			up := time.Now()
			r.exec(ns, "ip", "link", "set", dev, "up")
			eventually(t, 5*time.Second, "connected again", func() error {
				if strings.Count(p.out.String(), `msg="tunnel connected"`) == before {
					return fmt.Errorf("not yet")
				}
				return nil
			})
			if took := time.Since(up); took > 4*time.Second {
				t.Errorf("connected %v after the network came back", took)
			}
			if !strings.Contains(p.out.String(), `msg="network changed; redialing"`) {
				t.Error("no word of why it dialled early")
			}
			eventually(t, 15*time.Second, "curl through relay and gateway", func() error {
				out, err := r.curl(r.agents["a1"], "--max-time", "3", "http://"+vip+"/hello")
				if err != nil || !strings.Contains(out, "/hello") {
					return fmt.Errorf("%v %q", err, out)
				}
				return nil
			})
		})
	}
}

// TestAgentJoinsOverlappingNetwork: a laptop joins a network numbered like
// part of the VIP pool: the agent says so at once, naming the network and
// the pool, and again if the network comes back after it went.
func TestAgentJoinsOverlappingNetwork(t *testing.T) {
	needTools(t, "dig")
	r := newRelayTopo(t, "a1")
	r.startBackend("192.0.2.10")
	r.startRelay()
	r.startGateway()
	agent := r.startAgent("a1", "acme")
	r.waitResolve(t, "a1", "web.ztna.internal")
	ns := r.agents["a1"]
	dev := devWithAddr(t, r, ns, "203.0.113.2/30")
	warning := fmt.Sprintf(`msg="the host's network 10.100.0.128/25 on %s (its address 10.100.0.130) overlaps the VIP pool 10.100.0.0/24`, dev)
	if strings.Contains(agent.out.String(), "overlaps the VIP pool") {
		t.Fatalf("an overlap before any:\n%s", agent.out.String())
	}
	for i := 1; i <= 2; i++ {
		r.exec(ns, "ip", "addr", "add", "10.100.0.130/25", "dev", dev) // as a DHCP client would
		eventually(t, 5*time.Second, "the warning", func() error {
			if n := strings.Count(agent.out.String(), warning); n != i {
				return fmt.Errorf("%d warnings", n)
			}
			return nil
		})
		r.exec(ns, "ip", "addr", "del", "10.100.0.130/25", "dev", dev)
	}
	// The zone is still answered at 10.100.0.1, outside the overlap.
	if got := r.resolve("a1", "web.ztna.internal"); got == "" {
		t.Error("no answer from the agent's DNS")
	}
}
