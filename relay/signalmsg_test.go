package relay

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// registerDirect registers services with direct-path candidates.
func (c *client) registerDirect(candidates []netip.AddrPort, services ...tunnel.ServiceInfo) *tunnel.Assign {
	c.t.Helper()
	if err := c.s.Send(&tunnel.Register{Type: tunnel.MessageRegister, Services: services, Candidates: candidates}); err != nil {
		c.t.Fatal(err)
	}
	return next[tunnel.Assign](c)
}

// signalError waits for an error message about a signaling session.
func signalError(c *client) *tunnel.ErrorMessage {
	c.t.Helper()
	for {
		if e := next[tunnel.ErrorMessage](c); e.SessionID != 0 {
			return e
		}
	}
}

func rejected(r *Relay, reason string) float64 {
	return testutil.ToFloat64(r.m.sigRejected.WithLabelValues(reason))
}

// TestSignalingThroughRelay runs the signaling of the direct path with
// real sessions: an offer is bound to the authorised agent and a gateway
// with candidates; third parties (another agent, another gateway) can
// neither answer, complete nor abort it; what they send is rejected,
// counted and answered as an unknown session.
func TestSignalingThroughRelay(t *testing.T) {
	p := newPKI(t)
	var logs syncBuffer
	r, err := New(p.relayConfig(t.TempDir()), Options{}, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	addr := r.Addr().String()
	direct := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434"), netip.MustParseAddrPort("0.0.0.0:4434")}
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.registerDirect(direct, svc("web", "acme"))
	thief := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw2"), gatewayHello("gw2"))
	thief.register(svc("nodirect", "acme"))
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	other := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a2"), agentHello("a2"))
	outsider := mustDial(t, addr, p.identity("globex", tunnel.RoleAgent, "b"), agentHello("b"))
	agentCands := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.2:50000"), netip.MustParseAddrPort("100.64.0.1:0")}

	waitFor(t, "candidates stored", func() bool {
		r.mu.RLock()
		defer r.mu.RUnlock()
		for g := range r.gateways {
			if g.name == "gw1" {
				return len(g.candidates) == 1 // the unspecified one is dropped
			}
		}
		return false
	})

	// The agent offers; the gateway gets the offer under a leg id.
	const id = 0xABCDEF
	a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: id, Service: "web", Candidates: agentCands})
	offer := next[tunnel.Offer](gw)
	if offer.SessionID == id || offer.SessionID == 0 || offer.Service != "web" || offer.Agent != "acme/agent/a1" ||
		len(offer.Candidates) != 2 {
		t.Fatalf("gateway got %+v", offer)
	}

	type attempt struct {
		name   string
		from   *client
		msg    any
		reason string
	}
	for _, tc := range []attempt{
		{"another gateway answers", thief, &tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: offer.SessionID,
			Candidates: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.66:4434")}}, sigNotOwner},
		{"another agent reports a result", other, &tunnel.Result{Type: tunnel.MessageResult, SessionID: id, Success: true}, sigNotOwner},
		{"another agent aborts", other, &tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: "x", SessionID: id}, sigNotOwner},
		{"another gateway aborts", thief, &tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: "x", SessionID: offer.SessionID}, sigNotOwner},
		{"an agent answers", other, &tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: id}, sigWrongRole},
		{"a gateway offers", thief, &tunnel.Offer{Type: tunnel.MessageOffer, SessionID: 5, Service: "web"}, sigWrongRole},
		{"a result before the answer", a, &tunnel.Result{Type: tunnel.MessageResult, SessionID: id}, sigWrongState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := rejected(r, tc.reason)
			if err := tc.from.s.Send(tc.msg); err != nil {
				t.Fatal(err)
			}
			waitFor(t, tc.reason+" counted", func() bool { return rejected(r, tc.reason) > before })
			if _, isErr := tc.msg.(*tunnel.ErrorMessage); !isErr {
				if e := signalError(tc.from); tc.reason == sigNotOwner && e.Code != tunnel.CodeUnknownSession {
					t.Errorf("a third party was told %q", e.Code)
				}
			}
		})
	}

	// The bound gateway answers; the agent gets it with the gateway's
	// identity and its own id; its result reaches the gateway.
	gw.s.Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: offer.SessionID, Gateway: "ops/gateway/liar",
		Candidates: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}})
	ans := next[tunnel.Answer](a)
	if ans.SessionID != id || ans.Gateway != "ops/gateway/gw1" || ans.Service != "web" || len(ans.Candidates) != 1 {
		t.Fatalf("agent got %+v", ans)
	}
	a.s.Send(&tunnel.Result{Type: tunnel.MessageResult, SessionID: id, Success: true, Address: netip.MustParseAddrPort("192.0.2.1:4434")})
	if res := next[tunnel.Result](gw); res.SessionID != offer.SessionID || !res.Success {
		t.Fatalf("gateway got %+v", res)
	}
	waitFor(t, "success counted", func() bool {
		return testutil.ToFloat64(r.m.sigOutcomes.WithLabelValues(outcomeSuccess)) == 1
	})

	t.Run("drain tells the agent to start no new flows on its direct path", func(t *testing.T) {
		if status, _ := post(t, r, "/v1/gateways/gw1/drain"); status != 200 {
			t.Fatal(status)
		}
		if e := signalError(a); e.SessionID != id || e.Code != tunnel.CodeDrained {
			t.Fatalf("agent got %+v", e)
		}
		a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: 2, Service: "web"})
		if e := signalError(a); e.SessionID != 2 || e.Code != tunnel.CodeNoGateway {
			t.Fatalf("offer to a drained gateway: %+v", e)
		}
		post(t, r, "/v1/gateways/gw1/undrain")
	})

	refusals := []struct {
		name    string
		from    *client
		offer   tunnel.Offer
		code    string
		counted string
		message string // the error's message; "" for none
	}{
		{"another tenant's service", outsider, tunnel.Offer{SessionID: 3, Service: "web"}, tunnel.CodeNotAuthorized, sigNotAuthorized, ""},
		{"a service that does not exist", a, tunnel.Offer{SessionID: 4, Service: "nope"}, tunnel.CodeNotAuthorized, sigNotAuthorized, ""},
		{"no gateway with candidates", a, tunnel.Offer{SessionID: 5, Service: "nodirect"}, tunnel.CodeNoGateway, sigNoGateway, noGatewayMessage},
		{"too many candidates", a, tunnel.Offer{SessionID: 6, Service: "web", Candidates: make([]netip.AddrPort, 9)}, tunnel.CodeBadMessage, sigBadMessage, ""},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			before := rejected(r, tc.counted)
			tc.offer.Type = tunnel.MessageOffer
			tc.from.s.Send(&tc.offer)
			if e := signalError(tc.from); e.SessionID != tc.offer.SessionID || e.Code != tc.code || e.Message != tc.message {
				t.Fatalf("got %+v", e)
			}
			if rejected(r, tc.counted) != before+1 {
				t.Errorf("%s not counted", tc.counted)
			}
		})
	}
	// no_gateway is the answer to every offer while the service's gateways
	// have no [tunnel] listen, the relay's path being the deployment's
	// choice: no warning, as for a message that broke a rule.
	if l := logs.String(); strings.Contains(l, "reason=no_gateway") || !strings.Contains(l, "no gateway of the service offers one") {
		t.Errorf("no_gateway logged as a rejection, or not at debug:\n%s", l)
	}

	t.Run("cap and duplicates", func(t *testing.T) {
		for i := range agentSignalCap {
			other.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: uint64(100 + i), Service: "web"})
		}
		other.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: 100, Service: "web"})
		other.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: 999, Service: "web"})
		codes := map[string]int{}
		for range 2 {
			codes[signalError(other).Code]++
		}
		if codes[tunnel.CodeDuplicate] != 1 || codes[tunnel.CodeBusy] != 1 {
			t.Fatalf("codes %v", codes)
		}
		for range agentSignalCap {
			next[tunnel.Offer](gw)
		}
	})

	t.Run("the agent leaves: its gateway is told", func(t *testing.T) {
		other.close()
		codes := map[uint64]string{}
		for len(codes) < agentSignalCap {
			e := signalError(gw)
			codes[e.SessionID] = e.Code
		}
		for _, code := range codes {
			if code != tunnel.CodePeerGone {
				t.Fatalf("codes %v", codes)
			}
		}
	})

	t.Run("the gateway answers an error: the agent is told", func(t *testing.T) {
		a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: 77, Service: "web"})
		o := next[tunnel.Offer](gw)
		gw.s.Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeNoListener, Message: "no", SessionID: o.SessionID})
		if e := signalError(a); e.SessionID != 77 || e.Code != tunnel.CodeNoListener {
			t.Fatalf("agent got %+v", e)
		}
		// The session is gone: a late answer is unknown.
		before := rejected(r, sigUnknown)
		gw.s.Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: o.SessionID})
		waitFor(t, "late answer rejected", func() bool { return rejected(r, sigUnknown) > before })
	})

	t.Run("metrics count the rejections", func(t *testing.T) {
		_, body := get(t, r, "/metrics", "")
		if !strings.Contains(body, `ztgate_relay_signaling_rejected_total{reason="not_owner"} 4`) {
			t.Errorf("metrics:\n%s", body)
		}
	})
}

// forwardingRelay starts a relay with four forward ports, a gateway gw1
// of ops serving web to acme with the direct-path candidates cands, and an
// agent a1 of acme.
func forwardingRelay(t *testing.T, cands []netip.AddrPort) (r *Relay, cfg *conf.Relay, gw, a *client) {
	t.Helper()
	p := newPKI(t)
	cfg = p.relayConfig(t.TempDir())
	cfg.ForwardPorts = freePorts(t, 4)
	r = startRelay(t, cfg)
	addr := r.Addr().String()
	gw = mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.registerDirect(cands, svc("web", "acme"))
	a = mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	waitFor(t, "candidates stored", func() bool {
		r.mu.RLock()
		defer r.mu.RUnlock()
		for g := range r.gateways {
			return len(g.candidates) == len(cands)
		}
		return false
	})
	return r, cfg, gw, a
}

// TestSignalingForwarder: a relay with forward_ports passes each answer to
// the agent with a forwarder's port. The forwarder sends only to the
// gateway's listen port at the address the gateway's relay session comes
// from (here 127.0.0.1, whatever the candidates say), carries the agent's
// datagrams there, and closes when the attempt fails.
func TestSignalingForwarder(t *testing.T) {
	listener := udpAt(t, "127.0.0.1:0") // the gateway's [tunnel] listen
	lport := addrOf(listener).Port()
	cands := []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), lport)}
	r, cfg, gw, a := forwardingRelay(t, cands)
	live := func() float64 { return testutil.ToFloat64(r.fwd.m.live) }

	attempt := func(id uint64, success bool) uint16 {
		a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: id, Service: "web"})
		offer := next[tunnel.Offer](gw)
		gw.s.Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: offer.SessionID, Candidates: cands})
		ans := next[tunnel.Answer](a)
		if ans.SessionID != id || ans.ForwardPort < cfg.ForwardPorts.First || ans.ForwardPort > cfg.ForwardPorts.Last {
			t.Fatalf("agent got %+v, want a forward port in %v", ans, cfg.ForwardPorts)
		}
		if live() != 1 {
			t.Fatalf("%v forwarders live", live())
		}
		fwd := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ans.ForwardPort)
		agentSock := udpAt(t, "127.0.0.1:0")
		send(t, agentSock, fwd, false, []byte("initial"))
		if got, _ := recv(t, listener, 1); string(got[0]) != "initial" {
			t.Fatalf("the listener got %q", got[0])
		}
		a.s.Send(&tunnel.Result{Type: tunnel.MessageResult, SessionID: id, Success: success})
		next[tunnel.Result](gw)
		return ans.ForwardPort
	}
	attempt(7, false)
	waitFor(t, "the failed attempt's forwarder closed", func() bool { return live() == 0 })
	if n := testutil.ToFloat64(r.fwd.m.closed.WithLabelValues(fwdCloseSignaling)); n != 1 {
		t.Errorf("%v forwarders counted as closed by their signaling session, want 1", n)
	}

	// An answer without candidates names no listen port: no forwarder,
	// counted, and the relay goes on.
	a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: 9, Service: "web"})
	offer := next[tunnel.Offer](gw)
	gw.s.Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: offer.SessionID})
	if ans := next[tunnel.Answer](a); ans.SessionID != 9 || ans.ForwardPort != 0 || live() != 0 {
		t.Fatalf("an answer without candidates: %+v, %v forwarders", ans, live())
	}
	if n := testutil.ToFloat64(r.fwd.m.refused.WithLabelValues(fwdRefuseTarget)); n != 1 {
		t.Errorf("%v refusals counted as no_target", n)
	}
	a.s.Send(&tunnel.Result{Type: tunnel.MessageResult, SessionID: 9})
	next[tunnel.Result](gw)
	port := attempt(8, true)
	time.Sleep(100 * time.Millisecond)
	if live() != 1 {
		t.Fatalf("the path's forwarder: %v live", live())
	}
	status, body := get(t, r, "/v1/forwarders", "")
	for _, want := range []string{fmt.Sprintf(`"port": %d`, port), `"agent": "acme/agent/a1"`, `"gateway": "ops/gateway/gw1"`,
		fmt.Sprintf(`"target": "127.0.0.1:%d"`, lport), `"from": "127.0.0.1:`} {
		if status != 200 || !strings.Contains(body, want) {
			t.Errorf("GET /v1/forwarders: %d %s, want %s", status, body, want)
		}
	}
	r.Close()
	if live() != 0 {
		t.Fatalf("%v forwarders live after the relay closed", live())
	}
}

// TestSignalingHostileAnswers: a gateway's answers of every odd shape to a
// relay with forward_ports. Each is rejected (the gateway is told, the
// agent's session stays open until it gives up) or passed on with the
// relay's own fields (gateway identity, forward port); none leaves the
// relay stuck: a well-formed round works after each.
func TestSignalingHostileAnswers(t *testing.T) {
	good := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}
	_, cfg, gw, a := forwardingRelay(t, good)
	many := make([]netip.AddrPort, tunnel.MaxCandidates+1)
	for i := range many {
		many[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), 4434)
	}
	id := uint64(100)
	round := func(t *testing.T, ans tunnel.Answer) (*tunnel.Answer, *tunnel.ErrorMessage) {
		t.Helper()
		id++
		a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: id, Service: "web"})
		offer := next[tunnel.Offer](gw)
		ans.Type, ans.SessionID = tunnel.MessageAnswer, offer.SessionID
		gw.s.Send(&ans)
		deadline := time.After(testTimeout)
		for {
			select {
			case m := <-a.msgs:
				if got, ok := m.(*tunnel.Answer); ok && got.SessionID == id {
					a.s.Send(&tunnel.Result{Type: tunnel.MessageResult, SessionID: id})
					next[tunnel.Result](gw)
					return got, nil
				}
			case m := <-gw.msgs:
				if e, ok := m.(*tunnel.ErrorMessage); ok && e.SessionID == offer.SessionID {
					// Rejected: the agent gives up its session, as it would.
					a.s.Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: "gave_up", SessionID: id})
					return nil, e
				}
			case <-deadline:
				t.Fatal("neither the agent nor the gateway heard back")
			}
		}
	}
	for _, tc := range []struct {
		name     string
		ans      tunnel.Answer
		rejected bool
	}{
		{"no candidates", tunnel.Answer{}, false},
		{"null candidates", tunnel.Answer{Candidates: nil}, false},
		{"too many candidates", tunnel.Answer{Candidates: many}, true},
		{"port 0", tunnel.Answer{Candidates: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:0")}}, true},
		{"unspecified address", tunnel.Answer{Candidates: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:4434")}}, true},
		{"multicast address", tunnel.Answer{Candidates: []netip.AddrPort{netip.MustParseAddrPort("[ff02::1]:4434")}}, true},
		{"an invalid address", tunnel.Answer{Candidates: []netip.AddrPort{{}}}, true},
		{"the gateway names a forward port and another identity", tunnel.Answer{Candidates: good, ForwardPort: 9, Gateway: "acme/gateway/evil"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, e := round(t, tc.ans)
			switch {
			case tc.rejected && e == nil:
				t.Fatalf("passed on: %+v", got)
			case !tc.rejected && got == nil:
				t.Fatalf("rejected: %+v", e)
			case got != nil:
				if got.Gateway != "ops/gateway/gw1" {
					t.Errorf("the agent was told gateway %q", got.Gateway)
				}
				if fp := got.ForwardPort; len(tc.ans.Candidates) == 0 && fp != 0 ||
					len(tc.ans.Candidates) > 0 && (fp < cfg.ForwardPorts.First || fp > cfg.ForwardPorts.Last) {
					t.Errorf("forward port %d (range %v, %d candidates)", fp, cfg.ForwardPorts, len(tc.ans.Candidates))
				}
			}
			// The relay still serves a well-formed round.
			if got, _ := round(t, tunnel.Answer{Candidates: good}); got == nil || got.ForwardPort == 0 {
				t.Fatalf("a well-formed round after it: %+v", got)
			}
		})
	}
}

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
