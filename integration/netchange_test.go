package integration

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestAgentNetworkBack: a laptop's network goes away long enough for the
// agent's waits between dials to grow, then comes back: the agent dials
// again at once, not at the end of its wait, and names and flows work.
func TestAgentNetworkBack(t *testing.T) {
	needTools(t, "curl", "dig")
	r := newRelayTopo(t, "a1")
	r.startBackend("192.0.2.10")
	r.startRelay()
	r.startGateway()
	agent := r.startAgent("a1", "acme")
	vip := r.waitResolve(t, "a1", "web.ztna.internal")

	ns := r.agents["a1"]
	dev := devWithAddr(t, r, ns, "203.0.113.2/30") // its end of the link to the relay

	r.exec(ns, "ip", "link", "set", dev, "down")
	r.try(ns, 5*time.Second, "dig", "+time=1", "+tries=1", "@10.100.0.1", "web.ztna.internal") // traffic: the session's next send fails
	// Failed dials until the wait is past 6 s (1, 2, 4, then 8 s ± 20 %).
	waits := regexp.MustCompile(`msg="tunnel disconnected; redialing".* in=([0-9.]+)s`)
	eventually(t, 40*time.Second, "a wait of more than 6 s", func() error {
		for _, m := range waits.FindAllStringSubmatch(agent.out.String(), -1) {
			var d float64
			fmt.Sscanf(m[1], "%g", &d)
			if d > 6 {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	before := strings.Count(agent.out.String(), `msg="tunnel connected"`)
	up := time.Now()
	r.exec(ns, "ip", "link", "set", dev, "up")
	eventually(t, 5*time.Second, "the agent connected again", func() error {
		if strings.Count(agent.out.String(), `msg="tunnel connected"`) == before {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if took := time.Since(up); took > 4*time.Second {
		t.Errorf("connected %v after the network came back", took)
	}
	if !strings.Contains(agent.out.String(), `msg="network changed; redialing"`) {
		t.Error("the agent did not say why it dialled early")
	}
	eventually(t, 10*time.Second, "curl through relay and gateway", func() error {
		out, err := r.curl(ns, "--max-time", "3", "http://"+vip+"/hello")
		if err != nil || !strings.Contains(out, "/hello") {
			return fmt.Errorf("%v %q", err, out)
		}
		return nil
	})
}
