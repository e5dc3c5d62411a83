package relay

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// TestGatewayIdentitySessionsBounded: one gateway identity holds at most
// tunnel.MaxIdentitySessions sessions at a relay, one per hello name. A
// session of a new name beyond them is refused (too_many_sessions) and
// the live gateways keep serving; a gateway of a name already connected
// (a restart) still replaces its old session, and a name freed by an
// ended session may be taken again. Legacy identities and unverified peers
// of an insecure relay are not bounded, as for agents.
func TestGatewayIdentitySessionsBounded(t *testing.T) {
	const tooManySessions = "too_many_sessions" // the refusal's code and metric reason, as documented
	p := newPKI(t)
	// Liveness is not under test, and a session the relay closes as silent
	// frees a place for one more: a burst of 32 handshakes under the race
	// detector on a loaded machine can starve the clients' answers to its
	// pings past DeadAfter (the likely cause of one run's 18 admitted, 14
	// refused; the registry's bound is checked under one lock).
	r := startRelayWith(t, p.relayConfig(t.TempDir()), Options{DeadAfter: time.Minute})
	addr := r.Addr().String()
	creds := p.identity("ops", tunnel.RoleGateway, "shared")
	other := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "other"), gatewayHello("other"))
	other.register(svc("other", "acme"))
	gws := make([]*client, tunnel.MaxIdentitySessions)
	for i := range gws {
		gws[i] = mustDial(t, addr, creds, gatewayHello(fmt.Sprintf("gw%d", i)))
		if a := gws[i].register(svc(fmt.Sprintf("svc%d", i), "acme")); len(a.VIPs) != 1 {
			t.Fatalf("gateway %d's registration: %+v", i, a)
		}
	}
	refused := func(name string) {
		t.Helper()
		c, err := dial(t, addr, creds, gatewayHello(name))
		var re *tunnel.RefusedError
		if !errors.As(err, &re) || re.Code != tooManySessions {
			if err == nil {
				c.close()
			}
			t.Fatalf("gateway %q of an identity with %d gateways: %v, want refused as %s",
				name, tunnel.MaxIdentitySessions, err, tooManySessions)
		}
	}
	refused("gw-new")
	if n := testutil.ToFloat64(r.m.refusals.WithLabelValues(tooManySessions)); n != 1 {
		t.Errorf("%v refusals counted as %s, want 1", n, tooManySessions)
	}
	for i, c := range append(gws, other) {
		if err := c.s.Err(); err != nil {
			t.Errorf("gateway %d ended: %v", i, err)
		}
	}

	// gw0 restarts: its new session replaces the old one, at the cap.
	restarted := mustDial(t, addr, creds, gatewayHello("gw0"))
	restarted.register(svc("svc0", "acme"))
	select {
	case <-gws[0].s.Done():
	case <-time.After(testTimeout):
		t.Fatal("the restarted gateway's old session is still open")
	}
	refused("gw-new")

	// gw1 goes away: its place is free for a gateway of another name.
	gws[1].close()
	waitFor(t, "gw1's session removed", func() bool { return len(gatewaysNamed(r, "gw1")) == 0 })
	mustDial(t, addr, creds, gatewayHello("gw-new")).register(svc("svc-new", "acme"))
	refused("gw-newer")

	t.Run("a burst of sessions at once", func(t *testing.T) {
		creds := p.identity("ops", tunnel.RoleGateway, "burst")
		var (
			wg                sync.WaitGroup
			admitted, refused atomic.Int32
		)
		for i := range 2 * tunnel.MaxIdentitySessions {
			wg.Go(func() {
				_, err := dial(t, addr, creds, gatewayHello(fmt.Sprintf("burst%d", i)))
				var re *tunnel.RefusedError
				switch {
				case err == nil:
					admitted.Add(1)
				case errors.As(err, &re) && re.Code == tooManySessions:
					refused.Add(1)
				default:
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if admitted.Load() != tunnel.MaxIdentitySessions || refused.Load() != tunnel.MaxIdentitySessions {
			t.Errorf("%d gateways of one identity admitted, %d refused; want %d each",
				admitted.Load(), refused.Load(), tunnel.MaxIdentitySessions)
		}
	})

	t.Run("legacy identity not bounded", func(t *testing.T) {
		legacy := p.creds(p.ca, tunnel.IssueRequest{Name: "connector-1", NoIdentity: true,
			LegacySANs: []string{"connector.web.ztna"}})
		for i := range tunnel.MaxIdentitySessions + 1 {
			mustDial(t, addr, legacy, gatewayHello(fmt.Sprintf("legacy%d", i)))
		}
	})

	t.Run("unverified peers of an insecure relay not bounded", func(t *testing.T) {
		cfg := p.relayConfig(t.TempDir())
		cfg.Insecure = true
		addr := startRelay(t, cfg).Addr().String()
		anon := p.creds(p.other, tunnel.IssueRequest{Name: "x", NoIdentity: true})
		for i := range tunnel.MaxIdentitySessions + 1 {
			mustDial(t, addr, anon, gatewayHello(fmt.Sprintf("anon%d", i)))
		}
	})
}

// gatewaysNamed returns the gateway sessions in r's registry whose hello
// gave name.
func gatewaysNamed(r *Relay, name string) []*gateway {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*gateway
	for g := range r.gateways {
		if g.name == name {
			out = append(out, g)
		}
	}
	return out
}
