package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestForwardedPath: the agent cannot reach the gateway's [tunnel] listen
// at all (no link between them), but the relay can, and has forward_ports.
// The agent's direct path then goes through the relay's forwarder: an end
// to end QUIC session with the gateway, which the relay carries as UDP
// without terminating it. The relay's own tunnel path carries none of its
// data; the gateway sees the agent's identity, from the relay's address.
func TestForwardedPath(t *testing.T) {
	needTools(t, "curl")
	r := newRelayTopo(t, "a1")
	r.startBackend("192.0.2.10")
	r.relayExtra = `forward_ports = "4440-4443"`
	r.startRelay()
	gw := r.startGatewayIn(r.gw, "gw1", r.multiGatewayConfig("gw1", "203.0.113.13", "192.0.2.10", "0.0.0.0:4434"))
	agent := r.startAgent("a1", "acme")
	a1 := r.agents["a1"]

	vip := r.waitResolve(t, "a1", "web.ztna.internal")
	// The first flows take the relay's tunnel path and trigger the offer;
	// the gateway's own candidates are out of the agent's reach, so the
	// forwarder wins after them.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(agent.out.String(), "direct path up") {
		if time.Now().After(deadline) {
			t.Fatalf("no forwarded path:\nagent:\n%s\nrelay:\n%s", agent.out.String(), r.relayProc.out.String())
		}
		r.curl(a1, "--max-time", "2", "http://"+vip+"/poke")
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(agent.out.String(), "via=\"relay forwarder\"") || !strings.Contains(agent.out.String(), "address=203.0.113.1:444") {
		t.Fatalf("the path is not the relay's forwarder:\n%s", agent.out.String())
	}
	r.relayProc.waitOutput(t, "forwarder carries a path", 5*time.Second)

	up, down := r.relayData(t)
	fwdUp := r.relayCounter(t, "ztgate_relay_forwarded_datagrams_total", `direction="agent_to_gateway"`)
	fwdDown := r.relayCounter(t, "ztgate_relay_forwarded_datagrams_total", `direction="gateway_to_agent"`)
	r.download(t, vip, 7, 4<<20)
	out, err := r.curl(a1, "http://"+vip+"/hello-forwarded")
	if err != nil || !strings.Contains(out, "/hello-forwarded") {
		t.Fatalf("curl: %v %q", err, out)
	}
	if up2, down2 := r.relayData(t); up2 != up || down2 != down {
		t.Fatalf("the relay's tunnel path carried data of the forwarded path: %v/%v → %v/%v datagrams", up, down, up2, down2)
	}
	fwdUp2 := r.relayCounter(t, "ztgate_relay_forwarded_datagrams_total", `direction="agent_to_gateway"`)
	fwdDown2 := r.relayCounter(t, "ztgate_relay_forwarded_datagrams_total", `direction="gateway_to_agent"`)
	// 4 MiB down is about 3,000 datagrams at least.
	if fwdDown2-fwdDown < 3000 || fwdUp2 <= fwdUp {
		t.Fatalf("the forwarder carried %v datagrams down and %v up for a 4 MiB download", fwdDown2-fwdDown, fwdUp2-fwdUp)
	}
	if dropped := r.relayCounter(t, "ztgate_relay_forward_dropped_total"); dropped != 0 {
		t.Errorf("the forwarder dropped %v packets", dropped)
	}
	gwLog := gw.out.String()
	if !strings.Contains(gwLog, "agent connected directly") || !strings.Contains(gwLog, "identity=acme/agent/a1") ||
		!strings.Contains(gwLog, "remote=203.0.113.13:") {
		t.Errorf("the gateway did not see the agent's own session from the relay's address:\n%s", gwLog)
	}

	// Restarts: the path dies with either process; the agent's flows work
	// again through the relay at once, then through a new forwarder.
	cfg := r.multiGatewayConfig("gw1", "203.0.113.13", "192.0.2.10", "0.0.0.0:4434")
	for _, tc := range []struct {
		name    string
		restart func()
	}{
		{"gateway restart", func() { gw.stop(6 * time.Second); gw = r.startGatewayIn(r.gw, "gw1", cfg) }},
		{"relay restart", func() { r.relayProc.stop(6 * time.Second); r.startRelay() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paths := strings.Count(agent.out.String(), `via="relay forwarder"`)
			tc.restart()
			start := time.Now()
			eventually(t, 10*time.Second, "the agent reaches web again", func() error {
				out, err := r.curl(a1, "--max-time", "2", "http://"+vip+"/after")
				if err != nil || !strings.Contains(out, "/after") {
					return fmt.Errorf("%v %q", err, out)
				}
				return nil
			})
			t.Logf("working again %v after the %s", time.Since(start).Round(100*time.Millisecond), tc.name)
			eventually(t, 30*time.Second, "a new forwarded path", func() error {
				if n := strings.Count(agent.out.String(), `via="relay forwarder"`); n <= paths {
					r.curl(a1, "--max-time", "2", "http://"+vip+"/poke")
					return fmt.Errorf("%d forwarded paths up in the agent's log, as before", n)
				}
				return nil
			})
			r.download(t, vip, 8, 1<<20)
		})
	}
}
