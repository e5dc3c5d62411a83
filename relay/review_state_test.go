package relay

import (
	"net/netip"
	"testing"

	"github.com/ztgate/ztgate/tunnel"
)

// TestHeldVIPNotMovedByGatewayPin: a gateway's vip pin is honoured only
// while the service has no allocation of its own (docs/protocol.md,
// "VIPs": a VIP never moves; a service that returns within the hold-down
// gets the same VIP back). A service whose gateways all left has its VIP
// held for it; a gateway that comes back within the hold-down with a pin
// (ignored while the service was allocated) must get the held VIP back,
// not move the service to the pin.
func TestHeldVIPNotMovedByGatewayPin(t *testing.T) {
	pin := netip.MustParseAddr("10.100.0.77")
	pinned := func() tunnel.ServiceInfo {
		s := svc("web", "acme")
		s.VIP = pin
		return s
	}
	t.Run("gateway restart after its pin was added", func(t *testing.T) {
		p := newPKI(t)
		r := startRelay(t, p.relayConfig(t.TempDir()))
		creds := p.identity("ops", tunnel.RoleGateway, "gw1")
		gw := mustDial(t, r.Addr().String(), creds, gatewayHello("gw1"))
		vip := vipOf(gw.register(svc("web", "acme")), "web")
		if vip == pin {
			t.Skip("automatic VIP happens to be the pin")
		}
		// A reload adds a pin: ignored, the service has its VIP.
		if got := vipOf(gw.register(pinned()), "web"); got != vip {
			t.Fatalf("pin moved an allocated VIP: %v -> %v", vip, got)
		}
		gw.close()
		waitFor(t, "web released", func() bool { _, ok := r.pool.Lookup("web"); return !ok })
		gw2 := mustDial(t, r.Addr().String(), creds, gatewayHello("gw1"))
		if got := vipOf(gw2.register(pinned()), "web"); got != vip {
			t.Errorf("VIP of web moved across a gateway restart within the hold-down: %v -> %v", vip, got)
		}
	})
	t.Run("two gateways, the pinning one returns first", func(t *testing.T) {
		p := newPKI(t)
		r := startRelay(t, p.relayConfig(t.TempDir()))
		credsA := p.identity("ops", tunnel.RoleGateway, "gwa")
		credsB := p.identity("ops", tunnel.RoleGateway, "gwb")
		a := mustDial(t, r.Addr().String(), credsA, gatewayHello("gwa"))
		vip := vipOf(a.register(svc("web", "acme")), "web")
		b := mustDial(t, r.Addr().String(), credsB, gatewayHello("gwb"))
		if got := vipOf(b.register(pinned()), "web"); got != vip {
			t.Fatalf("second gateway's pin moved the VIP: %v -> %v", vip, got)
		}
		a.close()
		b.close()
		waitFor(t, "web released", func() bool { _, ok := r.pool.Lookup("web"); return !ok })
		b2 := mustDial(t, r.Addr().String(), credsB, gatewayHello("gwb"))
		if got := vipOf(b2.register(pinned()), "web"); got != vip {
			t.Errorf("VIP of web moved when its gateways reconnected within the hold-down: %v -> %v", vip, got)
		}
	})
}
