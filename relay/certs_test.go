package relay

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

// handshakeRefusals reads the relay's count of clients refused at the TLS
// handshake for reason.
func handshakeRefusals(r *Relay, reason string) float64 {
	mfs, err := r.m.reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != "ztgate_tunnel_handshakes_total" {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			want := map[string]string{"side": "server", "result": "refused", "reason": reason}
			for _, l := range m.GetLabel() {
				if want[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestCertificateMatrix connects with every kind of bad certificate and
// checks that the relay refuses each at the right stage with the right
// reason: at the TLS handshake for what the certificate itself lacks, at
// admission for a role that does not match, and an agent of the wrong
// tenant is admitted but gets nothing of another tenant's.
func TestCertificateMatrix(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	vip := vipOf(gw.register(svc("web", "acme")), "web")
	gw.echo()

	acme := func(req tunnel.IssueRequest) tunnel.IssueRequest {
		req.Tenant, req.Role, req.Name = "acme", tunnel.RoleAgent, "a1"
		return req
	}
	now := time.Now()
	handshake := []struct {
		name   string
		creds  func() *tunnel.Credentials // nil: no certificate at all
		reason string
	}{
		{"no certificate", nil, tunnel.ReasonNoCertificate},
		{"other CA", func() *tunnel.Credentials { return p.creds(p.other, acme(tunnel.IssueRequest{})) }, tunnel.ReasonUnknownAuthority},
		{"expired", func() *tunnel.Credentials {
			return p.creds(p.ca, acme(tunnel.IssueRequest{NotBefore: now.Add(-48 * time.Hour), Validity: 24 * time.Hour}))
		}, tunnel.ReasonExpired},
		{"not yet valid", func() *tunnel.Credentials {
			return p.creds(p.ca, acme(tunnel.IssueRequest{NotBefore: now.Add(24 * time.Hour)}))
		}, tunnel.ReasonNotYetValid},
		{"SAN-less", func() *tunnel.Credentials {
			return p.creds(p.ca, tunnel.IssueRequest{Name: "nosan", NoIdentity: true})
		}, tunnel.ReasonNoIdentity},
	}
	for _, tc := range handshake {
		t.Run(tc.name, func(t *testing.T) {
			before := handshakeRefusals(r, tc.reason)
			var err error
			if tc.creds == nil {
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				err = tunneltest.DialWithoutCertificate(ctx, addr, 2*time.Second, tunnel.ALPNV2)
			} else {
				_, err = dial(t, addr, tc.creds(), agentHello("a1"))
			}
			if err == nil {
				t.Fatal("admitted")
			}
			waitFor(t, tc.reason+" counted at the handshake", func() bool { return handshakeRefusals(r, tc.reason) > before })
			if n := agentCount(r); n != 0 {
				t.Fatalf("%d agents registered", n)
			}
		})
	}

	t.Run("wrong role", func(t *testing.T) {
		counter := r.m.refusals.WithLabelValues(refuseWrongRole)
		before := testutil.ToFloat64(counter)
		_, err := dial(t, addr, p.identity("acme", tunnel.RoleGateway, "a1"), agentHello("a1"))
		if re, ok := errors.AsType[*tunnel.RefusedError](err); !ok || re.Code != refuseWrongRole {
			t.Fatalf("error %v, want refusal %s at admission", err, refuseWrongRole)
		}
		waitFor(t, "wrong_role counted", func() bool { return testutil.ToFloat64(counter) > before })
	})

	t.Run("wrong tenant", func(t *testing.T) {
		a := mustDial(t, addr, p.identity("globex", tunnel.RoleAgent, "g1"), agentHello("g1"))
		if d := next[tunnel.Directory](a); len(d.Services) != 0 {
			t.Fatalf("globex's directory lists %+v", d.Services)
		}
		before := dropped(r, dropNotAuthorized)
		src, dst := netip.AddrPortFrom(innerAddr, 5000), netip.AddrPortFrom(vip, 7)
		waitFor(t, "not_authorized drops", func() bool {
			a.send("web", udpPacket(src, dst, "let me in"))
			time.Sleep(5 * time.Millisecond)
			return dropped(r, dropNotAuthorized) > before
		})
		if !a.quiet(300 * time.Millisecond) {
			t.Fatal("the other tenant's agent got a reply")
		}
	})
}

func agentCount(r *Relay) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.agents)
}

// TestReloadCredentials rotates the relay's CA (a bundle of the old and a
// new one) and its certificate while an agent is connected: the agent's
// session goes on, and an agent with a certificate of the new CA, refused
// before, is admitted after.
func TestReloadCredentials(t *testing.T) {
	p := newPKI(t)
	cfg := p.relayConfig(t.TempDir())
	r := startRelay(t, cfg)
	addr := r.Addr().String()
	old := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	next[tunnel.Directory](old)

	newcomer := p.creds(p.other, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "a2"})
	if _, err := dial(t, addr, newcomer, agentHello("a2")); err == nil {
		t.Fatal("an agent of the new CA was admitted before the reload")
	}
	bundle := append(append([]byte(nil), p.ca.CertPEM()...), p.other.CertPEM()...)
	if err := os.WriteFile(cfg.CA, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := p.issue(p.ca, tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleRelay, Name: "relay1-renewed",
		DNSNames: []string{serverName}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	for src, dst := range map[string]string{certFile: cfg.Cert, keyFile: cfg.Key} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.ReloadCredentials(); err != nil {
		t.Fatal(err)
	}
	if got := r.creds.Certificate().Subject.CommonName; got != "relay1-renewed" {
		t.Fatalf("relay presents %q after the reload", got)
	}
	// The relay sends its welcome before it registers the agent; the
	// directory comes after, so once it is here the agent is registered.
	next[tunnel.Directory](mustDial(t, addr, newcomer, agentHello("a2")))
	select {
	case <-old.s.Done():
		t.Fatalf("the connected agent's session ended: %v", old.s.Err())
	default:
	}
	if n := agentCount(r); n != 2 {
		t.Fatalf("%d agents registered, want both", n)
	}

	// A broken file is not taken: the relay keeps what it has.
	if err := os.WriteFile(cfg.CA, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.ReloadCredentials(); err == nil {
		t.Fatal("a broken CA file was accepted")
	}
	mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a3"), agentHello("a3"))
}
