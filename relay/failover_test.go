package relay

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// arrival waits for the packet with payload at one of the gateways and
// returns that gateway's name.
func arrival(t *testing.T, gws map[string]*client, text string) string {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		for name, g := range gws {
			select {
			case b := <-g.dgs:
				_, _, packet, err := tunnel.ParseTagged(b)
				if err == nil && packetText(packet) == text {
					return name
				}
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatalf("packet %q reached no gateway", text)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// packetText is the payload of a UDP packet, or the source port of a TCP
// segment (the tests mark TCP segments by port).
func packetText(p []byte) string {
	if len(p) > 9 && p[9] == tunnel.ProtoTCP {
		return fmt.Sprintf("tcp:%d", uint16(p[20])<<8|uint16(p[21]))
	}
	return payload(p)
}

// post sends a POST to the relay's API.
func post(t *testing.T, r *Relay, path string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+r.APIAddr()+path, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestFailover drives the gateway choice per flow: new flows spread over
// the healthy gateways and move away from one that reports the service
// down, is drained or is lost, while existing flows stay where they are
// (and TCP flows of a lost gateway are dropped and counted).
func TestFailover(t *testing.T) {
	p := newPKI(t)
	r := startRelayWith(t, p.relayConfig(t.TempDir()), Options{PingInterval: 50 * time.Millisecond, DeadAfter: 400 * time.Millisecond})
	addr := r.Addr().String()
	gws := map[string]*client{}
	for _, name := range []string{"gw1", "gw2"} {
		gws[name] = mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, name), gatewayHello(name))
	}
	vip := vipOf(gws["gw1"].register(svc("web", "acme")), "web")
	gws["gw2"].register(svc("web", "acme"))
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	next[tunnel.Directory](a)

	sent := 0
	udp := func(port uint16) string { // one packet of the UDP flow from port; where it went
		t.Helper()
		sent++
		text := fmt.Sprintf("p%d-%d", port, sent)
		a.send("web", udpPacket(netip.AddrPortFrom(innerAddr, port), netip.AddrPortFrom(vip, 7), text))
		return arrival(t, gws, text)
	}
	tcp := func(port uint16, flags byte) {
		t.Helper()
		a.send("web", tcpPacket(netip.AddrPortFrom(innerAddr, port), netip.AddrPortFrom(vip, 80), flags))
	}
	flows := map[uint16]string{}
	for port := range uint16(4) {
		flows[1000+port] = udp(1000 + port)
	}
	count := map[string]int{}
	for _, g := range flows {
		count[g]++
	}
	if count["gw1"] != 2 || count["gw2"] != 2 {
		t.Fatalf("new flows spread %v", count)
	}
	stays := func(t *testing.T) {
		t.Helper()
		for port, g := range flows {
			if got := udp(port); got != g {
				t.Errorf("flow %d moved from %s to %s", port, g, got)
			}
		}
	}

	t.Run("service down at gw1: new flows to gw2, existing stay", func(t *testing.T) {
		gws["gw1"].s.Send(&tunnel.Health{Type: tunnel.MessageHealth, Services: map[string]bool{"web": false}})
		waitFor(t, "health applied", func() bool {
			r.mu.RLock()
			defer r.mu.RUnlock()
			return !r.services["web"].gateways[0].services["web"]
		})
		for port := uint16(2000); port < 2004; port++ {
			if g := udp(port); g != "gw2" {
				t.Errorf("new flow %d went to %s", port, g)
			}
		}
		stays(t)
		gws["gw1"].s.Send(&tunnel.Health{Type: tunnel.MessageHealth, Services: map[string]bool{"web": true}})
		waitFor(t, "health applied", func() bool {
			r.mu.RLock()
			defer r.mu.RUnlock()
			return r.services["web"].gateways[0].services["web"]
		})
	})

	t.Run("drain gw2: new flows to gw1, existing stay, visible in the API", func(t *testing.T) {
		if status, body := post(t, r, "/v1/gateways/gw2/drain"); status != 200 || !strings.Contains(body, `"drained": true`) {
			t.Fatalf("drain: %d %s", status, body)
		}
		if status, _ := post(t, r, "/v1/gateways/nope/drain"); status != 404 {
			t.Errorf("drain of an unknown gateway: %d", status)
		}
		for port := uint16(3000); port < 3004; port++ {
			if g := udp(port); g != "gw1" {
				t.Errorf("new flow %d went to %s", port, g)
			}
		}
		stays(t)
		_, body := get(t, r, "/v1/services", "")
		if !strings.Contains(body, `"state": "draining"`) || !strings.Contains(body, `"state": "healthy"`) {
			t.Errorf("services do not show the drain:\n%s", body)
		}
		_, body = get(t, r, "/v1/gateways", "")
		if !strings.Contains(body, `"name": "gw2"`) || !strings.Contains(body, `"drained": true`) {
			t.Errorf("gateways:\n%s", body)
		}
		if status, body := post(t, r, "/v1/gateways/gw2/undrain"); status != 200 || !strings.Contains(body, `"drained": false`) {
			t.Fatalf("undrain: %d %s", status, body)
		}
	})

	t.Run("gw1 lost: TCP flows on it dropped and counted, new ones to gw2", func(t *testing.T) {
		// A TCP flow on each gateway: fewest flows decides, so open until
		// one lands on gw1.
		var onGW1, onGW2 uint16
		for port := uint16(4000); onGW1 == 0 || onGW2 == 0; port++ {
			if port > 4010 {
				t.Fatal("TCP flows do not spread")
			}
			tcp(port, tcpSYN)
			if g := arrival(t, gws, fmt.Sprintf("tcp:%d", port)); g == "gw1" && onGW1 == 0 {
				onGW1 = port
			} else if g == "gw2" && onGW2 == 0 {
				onGW2 = port
			}
		}
		lost := testutil.ToFloat64(r.m.gatewaysLost)
		start := time.Now()
		gws["gw1"].silent.Store(true)
		waitFor(t, "gw1 closed", func() bool {
			r.mu.RLock()
			defer r.mu.RUnlock()
			return len(r.gateways) == 1
		})
		if d := time.Since(start); d > 2*time.Second { // DeadAfter 400 ms: about 500 ms; the idle timeout would be 30 s
			t.Errorf("a silent gateway was noticed after %v", d)
		}
		if testutil.ToFloat64(r.m.gatewaysLost) != lost+1 {
			t.Error("lost gateway not counted")
		}
		before := dropped(r, dropFlowLost)
		tcp(onGW1, tcpACK)
		waitFor(t, "flow_gateway_lost drop", func() bool { return dropped(r, dropFlowLost) > before })
		tcp(onGW2, tcpACK)
		if g := arrival(t, gws, fmt.Sprintf("tcp:%d", onGW2)); g != "gw2" {
			t.Errorf("gw2's flow went to %s", g)
		}
		tcp(onGW1, tcpSYN) // the client tries again: a new flow
		if g := arrival(t, gws, fmt.Sprintf("tcp:%d", onGW1)); g != "gw2" {
			t.Errorf("new SYN went to %s", g)
		}
		for port, g := range flows { // UDP flows of gw1 start over on gw2
			if got := udp(port); got != "gw2" {
				t.Errorf("UDP flow %d (was on %s) went to %s", port, g, got)
			}
		}
	})
}

// TestDirectoryDrainedServiceDown: a service whose gateways that admit the
// agent's tenant are all drained, or report it down, takes no new flow of
// the agent, so its directory shows it down (the agent refuses a new flow
// at once, with a RST or an ICMP unreachable) until a gateway is undrained.
// Before, a drained gateway that reported the service healthy kept it
// healthy in the directory, and a drain pushed no directory: the relay
// dropped the agent's new flows without a word (all_drained) and its
// clients waited for their own timeouts.
func TestDirectoryDrainedServiceDown(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw1 := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw1.register(svc("web", "acme"))
	gw2 := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw2"), gatewayHello("gw2"))
	down := svc("web", "acme")
	down.Healthy = false
	gw2.register(down)
	other := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw3"), gatewayHello("gw3"))
	other.register(svc("web", "globex")) // healthy, never drained, not acme's
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	seen := "absent"
	await := func(t *testing.T, want string) {
		t.Helper()
		deadline := time.After(testTimeout)
		for seen != want {
			select {
			case m := <-a.msgs:
				if d, ok := m.(*tunnel.Directory); ok {
					seen = webEntry(d)
				}
			case <-deadline:
				t.Fatalf("the directory shows web %s, want %s", seen, want)
			}
		}
	}
	drain := func(name, verb string) func() {
		return func() {
			if status, body := post(t, r, "/v1/gateways/"+name+"/"+verb); status != http.StatusOK {
				t.Fatalf("%s %s: %d %s", verb, name, status, body)
			}
		}
	}
	health := func(g *client, healthy bool) func() {
		return func() {
			if err := g.s.Send(&tunnel.Health{Type: tunnel.MessageHealth, Services: map[string]bool{"web": healthy}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	steps := []struct {
		name   string
		change func()
		want   string
	}{
		{"gw1 serves it healthy", func() {}, "healthy ports=[udp/7]"},
		{"gw1 drained, gw2 reports it down", drain("gw1", "drain"), "down ports=[udp/7]"},
		{"gw2 reports it healthy", health(gw2, true), "healthy ports=[udp/7]"},
		{"gw2 drained too", drain("gw2", "drain"), "down ports=[udp/7]"},
		{"gw1 undrained", drain("gw1", "undrain"), "healthy ports=[udp/7]"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.change()
			await(t, st.want)
		})
	}
}
