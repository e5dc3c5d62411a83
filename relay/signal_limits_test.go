package relay

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// TestSignalErrorForwardedWhateverItsSize: an error that ends a signaling
// session reaches the other party, whatever the sender put in it. An
// agent may name its session 7; the relay forwards the error under the
// gateway's leg id, sixteen digits, so an error that filled the control
// message's limit no longer fit: the relay ended the session, counted it
// aborted, and the gateway never heard of it. Code and message are cut to
// maxSignalText now.
func TestSignalErrorForwardedWhateverItsSize(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.registerDirect([]netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}, svc("web", "acme"))
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))

	for _, tc := range []struct {
		name        string
		code, text  int // bytes of each, the rest of the message filling the limit
		id          uint64
		fromGateway bool
	}{
		{"the agent's message fills the limit", 8, -1, 7, false},
		{"the agent's code fills the limit", -1, 0, 8, false},
		{"the gateway's message fills the limit", 8, -1, 9, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: tc.id, Service: "web"})
			offer := next[tunnel.Offer](gw)
			from, to, id, want := a, gw, tc.id, offer.SessionID
			if tc.fromGateway {
				from, to, id, want = gw, a, offer.SessionID, tc.id
			}
			e := &tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: strings.Repeat("c", max(tc.code, 1)),
				Message: strings.Repeat("m", max(tc.text, 0)), SessionID: id}
			b, _ := json.Marshal(e)
			fill := strings.Repeat("x", tunnel.MaxMessageSize-len(b)-len(`,"message":""`))
			if tc.code < 0 {
				e.Code = fill
			} else {
				e.Message = fill
			}
			if err := from.s.Send(e); err != nil {
				t.Fatal(err)
			}
			deadline := time.After(3 * time.Second)
			for {
				select {
				case m := <-to.msgs:
					got, ok := m.(*tunnel.ErrorMessage)
					if !ok || got.SessionID != want {
						continue
					}
					if !strings.HasPrefix(e.Code, strings.TrimSuffix(got.Code, "…")) || len(got.Code) > maxSignalText ||
						!strings.HasPrefix(e.Message, strings.TrimSuffix(got.Message, "…")) || len(got.Message) > maxSignalText {
						t.Fatalf("forwarded code of %d bytes, message of %d", len(got.Code), len(got.Message))
					}
					return
				case <-deadline:
					t.Fatal("the other party was not told that the session ended")
				}
			}
		})
	}
}

// TestEndSignalAfterDropCountsOnce: a session whose party left may be
// ended twice at once: by the party's departure (dropSignaling) and by
// the message the relay could not post to it (endSignal, after an
// answer). The second found the session gone and still counted it and
// told the other party again: the gateway got two peer_gone errors for
// one session, and ztgate_relay_signaling_sessions_total{outcome=
// "peer_gone"} counted two.
func TestEndSignalAfterDropCountsOnce(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.registerDirect([]netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}, svc("web", "acme"))
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: 7, Service: "web"})
	offer := next[tunnel.Offer](gw)
	r.sigMu.Lock()
	s := r.sig.byLeg[offer.SessionID]
	r.sigMu.Unlock()

	gone := party{a: s.a}
	r.dropSignaling(gone)
	r.endSignal(s, outcomePeerGone, gone, tunnel.CodePeerGone, "the agent's session ended")
	if e := signalError(gw); e.SessionID != offer.SessionID || e.Code != tunnel.CodePeerGone {
		t.Fatalf("the gateway got %+v", e)
	}
	select {
	case m := <-gw.msgs:
		t.Errorf("the gateway got %+v too", m)
	case <-time.After(200 * time.Millisecond):
	}
	if n := testutil.ToFloat64(r.m.sigOutcomes.WithLabelValues(outcomePeerGone)); n != 1 {
		t.Errorf("peer_gone counted %v times", n)
	}
}

// TestOfferGoesToGatewayWithRoom: the relay bound an offer to the one
// gateway new flows prefer and answered busy when that gateway was at its
// cap, or the agent's tenant at its share there, though another gateway
// serving the service to the tenant had room. The offer goes to the first
// gateway with room now, in the order of preference (healthy first, then
// the earliest registered), and is busy only when none has.
func TestOfferGoesToGatewayWithRoom(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	r.sigMu.Lock()
	r.sig.gatewayCap = 2 // a tenant's share: 1
	r.sigMu.Unlock()
	direct := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}
	web := svc("web", "acme", "globex", "initech")
	down := web
	down.Healthy = false
	gws := map[string]*client{}
	for _, name := range []string{"gw1", "gw2", "gw3"} { // registered in this order; gw2 reports web down
		gws[name] = mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, name), gatewayHello(name))
		def := web
		if name == "gw2" {
			def = down
		}
		gws[name].registerDirect(direct, def)
	}
	agents := map[string]*client{}
	for _, tenant := range []string{"acme", "globex", "initech"} {
		agents[tenant] = mustDial(t, addr, p.identity(tenant, tunnel.RoleAgent, "a"), agentHello("a"))
	}
	for i, step := range []struct {
		tenant string
		id     uint64
		gw     string // "" = busy
	}{
		{"acme", 1, "gw1"},
		{"acme", 2, "gw3"}, // acme's share of gw1 is full; gw3 is healthy, gw2 not
		{"acme", 3, "gw2"},
		{"acme", 4, ""}, // acme's share is full everywhere
		{"globex", 1, "gw1"},
		{"initech", 1, "gw3"}, // gw1 is at its cap
		{"initech", 2, "gw2"},
		{"initech", 3, ""}, // every gateway is at its cap
	} {
		a := agents[step.tenant]
		if err := a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: step.id, Service: "web"}); err != nil {
			t.Fatal(err)
		}
		want := step.gw
		if want == "" {
			want = "busy"
		}
		if got := offerOutcome(t, a, step.tenant+"/agent/a", step.id, gws); got != want {
			t.Fatalf("step %d: %s's offer %d: %s, want %s", i, step.tenant, step.id, got, want)
		}
	}
	for name, gw := range gws {
		select {
		case m := <-gw.msgs:
			if o, ok := m.(*tunnel.Offer); ok {
				t.Errorf("%s got an offer of %s too", name, o.Agent)
			}
		default:
		}
	}
}

// offerOutcome waits for the outcome of the offer id of agent a (named
// agent): the name of the gateway it reached, or the code of the error a
// got.
func offerOutcome(t *testing.T, a *client, agent string, id uint64, gws map[string]*client) string {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		for name, gw := range gws {
			select {
			case m := <-gw.msgs:
				if o, ok := m.(*tunnel.Offer); ok {
					if o.Agent != agent {
						t.Fatalf("%s got an offer of %s", name, o.Agent)
					}
					return name
				}
			default:
			}
		}
		select {
		case m := <-a.msgs:
			if e, ok := m.(*tunnel.ErrorMessage); ok && e.SessionID == id {
				return e.Code
			}
		case <-deadline:
			t.Fatalf("offer %d: no outcome", id)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
