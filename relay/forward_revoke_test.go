package relay

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// TestForwardersClosedOnRevoke: the forwarder of a forwarded path outlives
// the relay sessions of its agent and gateway when they end for other
// reasons (here the peer closes it, and comes back), but closes when the
// relay revokes the session of its agent identity or of its gateway: a
// reload of the CA file drops the CA of their certificate. Unless another
// session of that agent identity is live that the relay still trusts.
func TestForwardersClosedOnRevoke(t *testing.T) {
	for _, tc := range []struct {
		name string
		// revokeAgent: the agent's certificate is of the CA the reload
		// drops, else the gateway's.
		revokeAgent bool
		// trustedTwin: another session of the agent identity, of the CA
		// the relay keeps, stays up.
		trustedTwin bool
	}{
		{"agent", true, false},
		{"gateway", false, false},
		{"agent with another trusted session", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPKI(t)
			cfg := p.relayConfig(t.TempDir())
			cfg.CA = p.write("both.crt", append(append([]byte(nil), p.ca.CertPEM()...), p.other.CertPEM()...))
			cfg.ForwardPorts = freePorts(t, 4)
			r := startRelay(t, cfg)
			addr := r.Addr().String()

			agentCA, gwCA := p.ca, p.other
			if tc.revokeAgent {
				agentCA, gwCA = p.other, p.ca
			}
			gwCreds := p.creds(gwCA, tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleGateway, Name: "gw1"})
			agentCreds := p.creds(agentCA, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "a1"})

			listener := udpAt(t, "127.0.0.1:0") // the gateway's [tunnel] listen
			cands := []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), addrOf(listener).Port())}
			gwUp := func() *client {
				gw := mustDial(t, addr, gwCreds, gatewayHello("gw1"))
				gw.registerDirect(cands, svc("web", "acme"))
				return gw
			}
			agentUp := func() *client {
				a := mustDial(t, addr, agentCreds, agentHello("a1"))
				next[tunnel.Directory](a) // registered
				return a
			}
			gw, a := gwUp(), agentUp()
			live := func() float64 { return testutil.ToFloat64(r.fwd.m.live) }
			revoked := func() float64 { return testutil.ToFloat64(r.fwd.m.closed.WithLabelValues(fwdCloseRevoked)) }

			// A forwarded path: the attempt succeeds, the forwarder is locked
			// to the agent's socket.
			a.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: 7, Service: "web"})
			offer := next[tunnel.Offer](gw)
			gw.s.Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: offer.SessionID, Candidates: cands})
			ans := next[tunnel.Answer](a)
			if ans.ForwardPort == 0 {
				t.Fatalf("answer without a forward port: %+v", ans)
			}
			fwd := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ans.ForwardPort)
			agentSock := udpAt(t, "127.0.0.1:0")
			carries := func(what string) {
				t.Helper()
				send(t, agentSock, fwd, false, []byte(what))
				if got, _ := recv(t, listener, 1); string(got[0]) != what {
					t.Fatalf("the listener got %q, want %q", got[0], what)
				}
			}
			carries("initial")
			a.s.Send(&tunnel.Result{Type: tunnel.MessageResult, SessionID: 7, Success: true})
			next[tunnel.Result](gw)

			// The party's session ends for another reason, and comes back:
			// the path, and its forwarder, go on.
			if tc.revokeAgent {
				a.close()
				waitFor(t, "the agent's session gone", func() bool { return agentCount(r) == 0 })
				a = agentUp()
			} else {
				gw.close()
				waitFor(t, "the gateway's session gone", func() bool { r.mu.RLock(); defer r.mu.RUnlock(); return len(r.gateways) == 0 })
				gw = gwUp()
			}
			carries("after a reconnection")
			if live() != 1 {
				t.Fatalf("%v forwarders live after a reconnection", live())
			}
			var twin *client
			if tc.trustedTwin {
				twin = mustDial(t, addr, p.creds(p.ca, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "a1"}), agentHello("a1-b"))
				next[tunnel.Directory](twin)
			}

			// The relay drops the CA of the party's certificate.
			if err := os.WriteFile(cfg.CA, p.ca.CertPEM(), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := r.ReloadCredentials(); err != nil {
				t.Fatal(err)
			}
			party := a
			if !tc.revokeAgent {
				party = gw
			}
			select {
			case <-party.s.Done():
			case <-time.After(testTimeout):
				t.Fatal("the party's session outlived the reload that dropped its CA")
			}
			if err := party.s.Err(); err == nil || !strings.Contains(err.Error(), "revoked: ") {
				t.Fatalf("the party's session ended with %v, want revoked", err)
			}
			if tc.trustedTwin {
				// The relay still trusts the identity: wait for the revoked
				// session to leave the registry, then the forwarder must
				// still carry the path.
				waitFor(t, "the revoked session gone", func() bool { return agentCount(r) == 1 })
				time.Sleep(50 * time.Millisecond)
				carries("the identity is still trusted")
				if live() != 1 || revoked() != 0 {
					t.Fatalf("%v forwarders live, %v closed as revoked", live(), revoked())
				}
				return
			}
			waitFor(t, "the forwarder closed", func() bool { return live() == 0 })
			if revoked() != 1 {
				t.Errorf("%v forwarders counted as closed revoked, want 1", revoked())
			}
			send(t, agentSock, fwd, false, []byte("after the revocation"))
			quiet(t, listener, 100*time.Millisecond)
			if status, body := get(t, r, "/v1/forwarders", ""); status != 200 || !strings.Contains(body, `"forwarders": []`) {
				t.Errorf("GET /v1/forwarders: %d %s", status, body)
			}
		})
	}
}
