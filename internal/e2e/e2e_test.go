package e2e

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

// TestRelayGatewayAgents wires the real relay, gateway and agents together
// over loopback QUIC through a proxy that drops datagrams: two agents of
// acme with the same inner address, and one of globex. The gateway
// publishes web to acme only; the relay assigns its VIP.
func TestRelayGatewayAgents(t *testing.T) {
	const size = 128 << 10 // bytes each acme agent fetches
	p := newPKI(t)
	backendPort := startBackend(t, size)
	r := startRelay(t, p)
	proxy, err := tunneltest.NewProxy(tunneltest.ProxyConfig{Target: r.Addr().String(), DropRate: 0.02, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() }) // after the peers, which close later-registered
	gw := startGateway(t, p, proxy.Addr(), backendPort)
	vip := serviceVIP(t, r, "web")
	acme := []*testAgent{
		startAgent(t, p, "acme", "a1", proxy.Addr()),
		startAgent(t, p, "acme", "a2", proxy.Addr()),
	}
	outsider := startAgent(t, p, "globex", "b1", proxy.Addr())
	gatewayAddr := netip.MustParseAddr("10.100.0.1")
	name := "web." + zone

	// DNS through each agent answers the relay's VIP (once the agent has
	// its directory).
	for _, a := range acme {
		waitFor(t, a.name+" to resolve "+name, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			addrs, err := a.resolver(gatewayAddr).LookupNetIP(ctx, "ip4", name)
			if err != nil {
				return false
			}
			if len(addrs) != 1 || addrs[0] != vip {
				t.Fatalf("%s resolved %s to %v, want [%v]", a.name, name, addrs, vip)
			}
			return true
		})
	}

	t.Run("same inner address and port, own bytes", func(t *testing.T) {
		src := netip.AddrPortFrom(innerAddr, 40000)
		dst := netip.AddrPortFrom(vip, 80)
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		conns := make([]net.Conn, len(acme))
		for i, a := range acme {
			c, err := a.client.DialTCPFrom(ctx, src, dst)
			if err != nil {
				t.Fatalf("%s: dial %v from %v: %v", a.name, dst, src, err)
			}
			defer c.Close()
			conns[i] = c
		}
		// Both connections are open at the gateway now (it dials the
		// backend before it completes a client's handshake): fetch at once.
		var wg sync.WaitGroup
		got := make([][32]byte, len(acme))
		errs := make([]error, len(acme))
		for i, a := range acme {
			wg.Go(func() {
				c := conns[i]
				c.SetDeadline(time.Now().Add(waitLimit))
				if _, err := fmt.Fprintf(c, "%s\n", a.name); err != nil {
					errs[i] = err
					return
				}
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil || n != size {
					errs[i] = fmt.Errorf("read %d of %d bytes: %v", n, size, err)
					return
				}
				copy(got[i][:], h.Sum(nil))
			})
		}
		wg.Wait()
		for i, a := range acme {
			if errs[i] != nil {
				t.Errorf("%s: %v (proxy %+v)", a.name, errs[i], proxy.Stats())
				continue
			}
			if want := sha256.Sum256(payload(a.name, size)); got[i] != want {
				t.Errorf("%s got bytes that are not its own", a.name)
			}
		}
		t.Logf("proxy: %+v", proxy.Stats())
	})

	t.Run("other tenant", func(t *testing.T) {
		waitMetric(t, outsider.reg, "ztgate_agent_connected", 1)
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		_, err := outsider.resolver(gatewayAddr).LookupNetIP(ctx, "ip4", name)
		var dnsErr *net.DNSError
		if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			t.Errorf("%s resolved %s: %v, want not found", outsider.name, name, err)
		}
		start := time.Now()
		c, err := outsider.client.DialTCP(ctx, innerAddr, netip.AddrPortFrom(vip, 80))
		if err == nil {
			c.Close()
			t.Fatalf("%s connected to %v", outsider.name, vip)
		}
		// Refused, not timed out: the agent answers with a reset.
		if ctx.Err() != nil {
			t.Errorf("%s's connection to %v hung (%v): %v", outsider.name, vip, time.Since(start), err)
		}
		if n := metric(t, outsider.reg, "ztgate_flows_refused_total"); n == 0 {
			t.Errorf("%s refused no flow locally", outsider.name)
		}
	})

	t.Run("closing an agent closes its tags", func(t *testing.T) {
		// A closing agent's CONNECTION_CLOSE is sent once; were it lost the
		// relay would learn of the end only at the idle timeout.
		proxy.SetDropRate(0)
		reg := gw.Registry()
		waitMetric(t, reg, "ztgate_tunnel_ingresses", 2)
		waitMetric(t, r.Registry(), "ztgate_relay_tags", 2)
		for i, a := range acme {
			a.close()
			left := float64(len(acme) - i - 1)
			waitMetric(t, reg, "ztgate_tunnel_ingresses", left)
			waitMetric(t, r.Registry(), "ztgate_relay_tags", left)
		}
		waitMetric(t, reg, "ztgate_flows_active", 0)
	})
}
