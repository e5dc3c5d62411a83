package agent

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/internal/monoclock"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// directFixture is an agent attached to a fake relay, and a fake gateway
// the relay's answers point to.
type directFixture struct {
	t     *testing.T
	a     *Agent
	dev   *netstacktest.Client
	relay *server
	gw    *server
	pki   *pki
}

func newDirectFixture(t *testing.T) *directFixture {
	p := newPKI(t)
	f := &directFixture{t: t, pki: p}
	f.relay = startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(directoryOf(true)) })
	f.gw = startServer(t, p, gatewayReq, nil)
	f.a, f.dev = startAgent(t, p, f.relay.addr())
	return f
}

// flow opens a new UDP flow to the web service and sends text on it.
func (f *directFixture) flow(text string) net.Conn {
	f.t.Helper()
	return udpFlow(f.t, f.dev, netip.AddrPortFrom(webVIP, 7), text)
}

// offer returns the next offer that reaches sv within d, or nil.
func (sv *server) offer(d time.Duration) *tunnel.Offer {
	deadline := time.After(d)
	for {
		select {
		case m := <-sv.msgs:
			if o, ok := m.(*tunnel.Offer); ok {
				return o
			}
		case <-deadline:
			return nil
		}
	}
}

// answer answers the agent's next offer with candidates and identity.
func (f *directFixture) answer(gateway string, cands ...string) *tunnel.Offer {
	f.t.Helper()
	o := next[tunnel.Offer](f.t, f.relay)
	if o.Service != "web" || o.SessionID == 0 || len(o.Candidates) == 0 {
		f.t.Fatalf("offer %+v", o)
	}
	var cs []netip.AddrPort
	for _, c := range cands {
		cs = append(cs, netip.MustParseAddrPort(c))
	}
	f.relay.session().Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: o.SessionID, Service: "web",
		Candidates: cs, Gateway: gateway})
	return o
}

// TestDirectPath brings a direct path up through the relay's signaling:
// new flows then go straight to the gateway, both ways, while the flow
// that started on the relay stays there; when the gateway stops
// answering, new flows are back on the relay within a second, and the
// agent offers again later.
func TestDirectPath(t *testing.T) {
	f := newDirectFixture(t)
	first := f.flow("one")
	if !f.relay.routed("one", testTimeout) {
		t.Fatal("the first flow did not take the relay")
	}
	// A candidate that does not answer, and the gateway.
	o := f.answer("ops/gateway/gw1", "127.0.0.1:9", f.gw.addr())
	res := next[tunnel.Result](t, f.relay)
	if res.SessionID != o.SessionID || !res.Success || res.Address.String() != f.gw.addr() {
		t.Fatalf("result %+v", res)
	}

	second := f.flow("two")
	if !f.gw.routed("two", testTimeout) {
		t.Fatal("a new flow did not take the direct path")
	}
	first.Write([]byte("one-again"))
	if !f.relay.routed("one-again", testTimeout) {
		t.Fatal("the relay's flow moved")
	}
	local := netip.MustParseAddrPort(second.LocalAddr().String())
	f.gw.session().SendDatagram(udpReply(netip.AddrPortFrom(webVIP, 7), local, "two-back"))
	second.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 64)
	if n, err := second.Read(buf); err != nil || string(buf[:n]) != "two-back" {
		t.Fatalf("reply on the direct path: %q, %v", buf[:n], err)
	}
	// The gateway poses as another service (the relay's own path checks
	// this at the relay; a direct path has only the agent to check it),
	// or sends from a VIP that no service has: dropped, counted. The
	// relay's session may send from any service's VIP.
	wrong := testutil.ToFloat64(f.a.m.drops[dropWrongGateway])
	f.gw.session().SendDatagram(udpReply(netip.AddrPortFrom(upVIP, 7), local, "posing"))
	f.gw.session().SendDatagram(udpReply(netip.AddrPortFrom(netip.MustParseAddr("10.100.0.99"), 7), local, "nobody"))
	f.relay.session().SendDatagram(udpReply(netip.AddrPortFrom(webVIP, 7), local, "via-relay"))
	second.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := second.Read(buf); err != nil || string(buf[:n]) != "via-relay" {
		t.Fatalf("after the gateway's forged packets, the flow read %q, %v", buf[:n], err)
	}
	waitFor(t, "the forged packets counted", func() bool {
		return testutil.ToFloat64(f.a.m.drops[dropWrongGateway]) == wrong+2
	})
	second.Write([]byte("two-2"))
	if !f.gw.routed("two-2", testTimeout) || !f.relay.quietFor("web", 100*time.Millisecond) {
		t.Fatal("the relay carried a packet of the direct path")
	}
	if testutil.ToFloat64(f.a.m.upDirect) < 2 || testutil.ToFloat64(f.a.m.downDirect) != 1 {
		t.Errorf("direct packets up %v down %v", testutil.ToFloat64(f.a.m.upDirect), testutil.ToFloat64(f.a.m.downDirect))
	}

	t.Run("the gateway stops answering: back on the relay within a second", func(t *testing.T) {
		f.gw.silent.Store(true)
		start := time.Now()
		for i := 0; ; i++ {
			text := fmt.Sprintf("probe-%d", i)
			f.flow(text)
			if f.relay.routed(text, 50*time.Millisecond) {
				break
			}
			if time.Since(start) > testTimeout {
				t.Fatal("no fallback")
			}
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("fallback after %v", d)
		} else {
			t.Logf("fallback after %v", d.Round(time.Millisecond))
		}
		second.Write([]byte("two-3")) // its path is dead: the relay takes it
		if !f.relay.routed("two-3", testTimeout) {
			t.Error("the dead path's flow was not rerouted")
		}
	})

	t.Run("and offers again later", func(t *testing.T) {
		start := time.Now()
		for i := 0; ; i++ {
			f.flow(fmt.Sprintf("later-%d", i))
			if o := f.relay.offer(100 * time.Millisecond); o != nil {
				if d := time.Since(start); d < 500*time.Millisecond || o.Service != "web" {
					t.Errorf("offer %+v after %v: no backoff", o, d)
				}
				return
			}
			if time.Since(start) > testTimeout {
				t.Fatal("no new offer")
			}
		}
	})
}

// TestDirectPathRefusals covers attempts that must leave the agent on the
// relay: a gateway whose certificate is not the identity the relay
// vouched for, an answer without candidates, an offer the relay refuses.
func TestDirectPathRefusals(t *testing.T) {
	tests := []struct {
		name    string
		reply   func(f *directFixture, o *tunnel.Offer)
		results bool   // the agent reports a failed result
		failure string // in the service's status (ServiceStatus.DirectFailure)
	}{
		{"another identity", func(f *directFixture, o *tunnel.Offer) {
			f.relay.session().Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: o.SessionID,
				Candidates: []netip.AddrPort{netip.MustParseAddrPort(f.gw.addr())}, Gateway: "ops/gateway/gw2"})
		}, true, "no candidate of ops/gateway/gw2 answered"},
		{"no candidates", func(f *directFixture, o *tunnel.Offer) {
			f.relay.session().Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: o.SessionID, Gateway: "ops/gateway/gw1"})
		}, true, "no candidate of the gateway to dial"},
		{"refused by the relay", func(f *directFixture, o *tunnel.Offer) {
			f.relay.session().Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeNoGateway, SessionID: o.SessionID})
		}, false, "refused: no_gateway"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newDirectFixture(t)
			f.flow("one")
			o := next[tunnel.Offer](t, f.relay)
			tc.reply(f, o)
			if tc.results {
				if res := next[tunnel.Result](t, f.relay); res.SessionID != o.SessionID || res.Success {
					t.Fatalf("result %+v", res)
				}
			}
			waitFor(t, "failure counted", func() bool { return testutil.ToFloat64(f.a.m.directFailed) == 1 })
			for _, svc := range f.a.Status().Services {
				if svc.Name == "web" && (svc.Path != "relay" || svc.DirectFailure != tc.failure) {
					t.Errorf("web's status %+v, want the relay and the failure %q", svc, tc.failure)
				}
			}
			f.flow("two")
			if !f.relay.routed("two", testTimeout) {
				t.Fatal("a new flow did not take the relay")
			}
			if f.a.direct.route("web") != nil {
				t.Fatal("a route to the gateway")
			}
		})
	}
}

// TestDirectPathRetired: the relay tells the agent its gateway was
// drained; new flows go back to the relay, the direct path's flows stay.
func TestDirectPathRetired(t *testing.T) {
	f := newDirectFixture(t)
	f.flow("one")
	o := f.answer("ops/gateway/gw1", f.gw.addr())
	next[tunnel.Result](t, f.relay)
	onPath := f.flow("two")
	if !f.gw.routed("two", testTimeout) {
		t.Fatal("no direct path")
	}
	f.relay.session().Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeDrained, SessionID: o.SessionID})
	waitFor(t, "route retired", func() bool { return f.a.direct.route("web") == nil })
	f.flow("three")
	if !f.relay.routed("three", testTimeout) {
		t.Fatal("a new flow did not take the relay")
	}
	onPath.Write([]byte("two-again"))
	if !f.gw.routed("two-again", testTimeout) {
		t.Fatal("the direct path's flow moved")
	}
}

// TestDirectPathForwarder: an answer with the relay's forwarder (a port at
// the relay's address) makes the agent dial it when the gateway's own
// candidates do not answer, a little after them, and prefer a candidate of
// the gateway that does. (The forwarder is played by a gateway listening
// at the relay's address, 127.0.0.1: to the agent it is the gateway.)
func TestDirectPathForwarder(t *testing.T) {
	portOf := func(sv *server) uint16 { return netip.MustParseAddrPort(sv.addr()).Port() }
	answer := func(f *directFixture, fwd uint16, cands ...string) (*tunnel.Offer, time.Time) {
		o := next[tunnel.Offer](t, f.relay)
		var cs []netip.AddrPort
		for _, c := range cands {
			cs = append(cs, netip.MustParseAddrPort(c))
		}
		f.relay.session().Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: o.SessionID, Service: "web",
			Candidates: cs, Gateway: "ops/gateway/gw1", ForwardPort: fwd})
		return o, time.Now()
	}
	t.Run("the gateway's candidates do not answer", func(t *testing.T) {
		f := newDirectFixture(t)
		f.flow("one")
		o, sent := answer(f, portOf(f.gw), "127.0.0.1:9")
		res := next[tunnel.Result](t, f.relay)
		if res.SessionID != o.SessionID || !res.Success || res.Address.String() != f.gw.addr() {
			t.Fatalf("result %+v, want success through %s", res, f.gw.addr())
		}
		if d := time.Since(sent); d < forwardDelay {
			t.Errorf("the forwarder answered %v after the answer: dialled before the gateway's candidates had %v", d, forwardDelay)
		}
		f.flow("two")
		if !f.gw.routed("two", testTimeout) {
			t.Fatal("a new flow did not take the forwarded path")
		}
		if d, fw := testutil.ToFloat64(f.a.m.directPaths), testutil.ToFloat64(f.a.m.forwardedPaths); d != 1 || fw != 1 {
			t.Errorf("paths %v, forwarded %v; want 1 and 1", d, fw)
		}
	})
	t.Run("a candidate of the gateway that answers is preferred", func(t *testing.T) {
		f := newDirectFixture(t)
		fwd := startServer(t, f.pki, gatewayReq, nil) // would answer too, had it been dialled
		f.flow("one")
		o, _ := answer(f, portOf(fwd), f.gw.addr())
		res := next[tunnel.Result](t, f.relay)
		if res.SessionID != o.SessionID || !res.Success || res.Address.String() != f.gw.addr() {
			t.Fatalf("result %+v, want success through %s", res, f.gw.addr())
		}
		time.Sleep(forwardDelay + 200*time.Millisecond)
		fwd.mu.Lock()
		dialled := fwd.last != nil
		fwd.mu.Unlock()
		if dialled {
			t.Error("the forwarder was dialled although the gateway had answered")
		}
		if d, fw := testutil.ToFloat64(f.a.m.directPaths), testutil.ToFloat64(f.a.m.forwardedPaths); d != 1 || fw != 0 {
			t.Errorf("paths %v, forwarded %v; want 1 and 0", d, fw)
		}
	})
	t.Run("the forwarder alone, and it fails", func(t *testing.T) {
		f := newDirectFixture(t)
		f.flow("one")
		o, _ := answer(f, 9)
		if res := next[tunnel.Result](t, f.relay); res.SessionID != o.SessionID || res.Success {
			t.Fatalf("result %+v, want a failure", res)
		}
		f.flow("two")
		if !f.relay.routed("two", testTimeout) {
			t.Fatal("the relay does not carry new flows after a failed attempt")
		}
	})
}

// TestDirectPathSurvivesAStall: a path whose gateway answers is not taken
// for dead because the agent did not run for a while (starved of CPU, a
// paused VM: its next tick finds the last answer seconds old, the answers
// since unread). It pings again first; it is dead only when its pings go
// unanswered too. Before, time alone killed it at that tick.
func TestDirectPathSurvivesAStall(t *testing.T) {
	f := newDirectFixture(t)
	f.flow("one")
	f.answer("ops/gateway/gw1", f.gw.addr())
	next[tunnel.Result](t, f.relay)
	p := f.a.direct.route("web")
	if p == nil {
		t.Fatal("no direct path")
	}
	p.lastPong.Store(monoclock.Now() - int64(5*time.Second)) // as the watch finds it after a stall
	deadline := time.Now().Add(4 * directPingEvery)
	for time.Now().Before(deadline) {
		if f.a.direct.route("web") == nil {
			t.Fatal("the path was taken for dead after a stall, though its gateway answers")
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.flow("two")
	if !f.gw.routed("two", testTimeout) {
		t.Fatal("a new flow did not take the direct path")
	}
}
