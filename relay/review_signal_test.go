package relay

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// TestDrainDuringSignalingRetiresThePath: a gateway drained while an
// agent's signaling session with it is in progress (offered, or answered
// but not yet reported) must not end up with an established direct path
// that the drain never retires: docs/direct-path.md, "Retirement", and
// docs/operations.md ("the gateway takes no new flows, relayed or
// direct"). Either the session is ended, or the path is retired at once.
func TestDrainDuringSignalingRetiresThePath(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	direct := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.registerDirect(direct, svc("web", "acme"))
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	waitFor(t, "candidates stored", func() bool {
		r.mu.RLock()
		defer r.mu.RUnlock()
		for g := range r.gateways {
			if len(g.candidates) == 1 {
				return true
			}
		}
		return false
	})

	const id = 77
	a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: id, Service: "web"})
	offer := next[tunnel.Offer](gw)
	gw.s.Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: offer.SessionID, Candidates: direct})
	next[tunnel.Answer](a)

	// Drained between the answer and the agent's result.
	if status, _ := post(t, r, "/v1/gateways/gw1/drain"); status != 200 {
		t.Fatal(status)
	}
	a.s.Send(&tunnel.Result{Type: tunnel.MessageResult, SessionID: id, Success: true, Address: direct[0]})

	deadline := time.After(3 * time.Second)
	for {
		select {
		case m := <-a.msgs:
			if e, ok := m.(*tunnel.ErrorMessage); ok && e.SessionID == id {
				return // the session was ended or the path retired
			}
		case <-deadline:
			r.sigMu.Lock()
			paths := len(r.sig.paths)
			r.sigMu.Unlock()
			t.Fatalf("the agent holds a direct path to a drained gateway that was never retired (%d direct paths recorded)", paths)
		}
	}
}
