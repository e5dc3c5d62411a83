package relay

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

// TestRelayThroughLossyNetwork is the relay's component test: a relay, a
// fake gateway echoing tagged packets, two agents of one tenant with the
// same inner address and source port, and an agent of another tenant, all
// talking through a proxy that drops and delays datagrams.
func TestRelayThroughLossyNetwork(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	proxy, err := tunneltest.NewProxy(tunneltest.ProxyConfig{
		Target: r.Addr().String(), DropRate: 0.05, DelayRate: 0.05, Delay: 2 * time.Millisecond, Seed: 42,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	addr := proxy.Addr()

	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	assign := gw.register(svc("echo", "acme"))
	vip := vipOf(assign, "echo")
	if !vip.IsValid() || len(assign.Rejected) != 0 || assign.Zone != "ztna.internal." || assign.TTL != 30 {
		t.Fatalf("assign %+v", assign)
	}
	gw.echo()

	agents := map[string]*client{
		"a1": mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1")),
		"a2": mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a2"), agentHello("a2")),
	}
	outsider := mustDial(t, addr, p.identity("other", tunnel.RoleAgent, "b"), agentHello("b"))
	for name, a := range agents {
		if d := next[tunnel.Directory](a); len(d.Services) != 1 || d.Services[0].Name != "echo" || d.Services[0].VIP != vip {
			t.Fatalf("%s's directory %+v", name, d)
		}
		if w := a.s.Welcome(); w.MaxPacket < 1000 || w.MaxPacket > a.s.MaxDatagram() {
			t.Errorf("%s's welcome %+v", name, w)
		}
	}
	if d := next[tunnel.Directory](outsider); len(d.Services) != 0 {
		t.Fatalf("the other tenant's directory lists %+v", d.Services)
	}

	// Both agents send from 100.64.0.1:5000 at the same time.
	src, dst := netip.AddrPortFrom(innerAddr, 5000), netip.AddrPortFrom(vip, 7)
	const n = 100
	var wg sync.WaitGroup
	for name, a := range agents {
		wg.Go(func() {
			for i := range n {
				a.send("echo", udpPacket(src, dst, fmt.Sprintf("%s-%d", name, i)))
				// Paced, so that each datagram travels in its own QUIC
				// packet and losses hit datagrams one by one.
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	for name, a := range agents {
		got := a.replies(t, name, vip, 500*time.Millisecond)
		if got < n/4 {
			t.Errorf("%s got %d of %d replies (proxy %+v)", name, got, n, proxy.Stats())
		}
		t.Logf("%s got %d of %d replies", name, got, n)
	}

	opens := map[string]*tunnel.TagOpen{}
	for len(opens) < 2 {
		o := next[tunnel.TagOpen](gw)
		opens[o.Identity] = o
	}
	o1, o2 := opens["acme/agent/a1"], opens["acme/agent/a2"]
	if o1 == nil || o2 == nil || o1.Tag == o2.Tag || o1.Tenant != "acme" || o1.InnerAddr != innerAddr || o1.Service != "echo" {
		t.Fatalf("tag_open messages %+v", opens)
	}

	// The other tenant's packets go nowhere.
	before := dropped(r, dropNotAuthorized)
	waitFor(t, "not_authorized drops", func() bool {
		outsider.send("echo", udpPacket(src, dst, "b")) // again: the proxy may drop it
		time.Sleep(5 * time.Millisecond)
		return dropped(r, dropNotAuthorized) > before
	})
	if !outsider.quiet(300 * time.Millisecond) {
		t.Error("the other tenant's agent got a reply")
	}

	// An agent that leaves: its tag is closed at the gateway. Its
	// CONNECTION_CLOSE is sent once; were it lost the relay would learn of
	// the end only at the idle timeout, so the proxy stops dropping.
	proxy.SetDropRate(0)
	agents["a1"].close()
	if tc := next[tunnel.TagClose](gw); len(tc.Tags) != 1 || tc.Tags[0] != o1.Tag {
		t.Errorf("tag_close %+v, want [%d]", tc, o1.Tag)
	}
}

// replies reads an agent's replies until none came for idle, and checks
// that each is its own: from the VIP, to the inner address, with its
// marker.
func (c *client) replies(t *testing.T, name string, vip netip.Addr, idle time.Duration) int {
	t.Helper()
	got := 0
	for {
		select {
		case b := <-c.dgs:
			src, dst, ok := ipAddrs(b)
			if !ok || src != vip || dst != innerAddr || !strings.HasPrefix(payload(b), name+"-") {
				t.Fatalf("%s received %q from %v to %v", name, payload(b), src, dst)
			}
			got++
		case <-time.After(idle):
			return got
		}
	}
}
