package tunnel

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

// TestDialExpectIdentity checks the direct path's server verification: a
// gateway reached by IP is known by its ztgate identity, not a name, and
// its certificate must still chain to the CA.
func TestDialExpectIdentity(t *testing.T) {
	f := newTLSFixture(t)
	gwCert, gwKey := f.leaf(f.ca, IssueRequest{Tenant: "ops", Role: RoleGateway, Name: "gw1"})
	foreignCert, foreignKey := f.leaf(f.other, IssueRequest{Tenant: "ops", Role: RoleGateway, Name: "gw1"})
	// The original system's connector certificate (fit for a server: it
	// names an address) with the common name of a gateway of the default
	// tenant reads as that gateway's identity string; it must not pass for
	// it.
	defaultCert, defaultKey := f.leaf(f.ca, IssueRequest{Tenant: DefaultTenant, Role: RoleGateway, Name: "gw1"})
	legacyCert, legacyKey := f.leaf(f.ca, IssueRequest{Name: "gw1", NoIdentity: true, LegacySANs: []string{"connector.web.ztna"},
		IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	tests := []struct {
		name       string
		cert, key  string
		expect     string
		serverName string
		reason     string // "" = connects
	}{
		{"matching identity, no name", gwCert, gwKey, "ops/gateway/gw1", "", ""},
		{"another gateway", gwCert, gwKey, "ops/gateway/gw2", "", ReasonBadCertificate},
		{"another tenant", gwCert, gwKey, "acme/gateway/gw1", "", ReasonBadCertificate},
		{"right identity from another CA", foreignCert, foreignKey, "ops/gateway/gw1", "", ReasonUnknownAuthority},
		{"no identity expected: the name must match", gwCert, gwKey, "", "gw1.example", ReasonBadCertificate},
		{"a gateway of the default tenant", defaultCert, defaultKey, "default/gateway/gw1", "", ""},
		{"the original system's certificate with its name", legacyCert, legacyKey, "default/gateway/gw1", "", ReasonBadCertificate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			server := f.creds(CredentialsConfig{CertFile: tc.cert, KeyFile: tc.key, CAFile: f.caFile})
			ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: server}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				if s, err := ln.Accept(ctx); err == nil {
					_ = s.SendWelcome(Welcome{})
				}
			}()
			certFile, keyFile := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
			agent := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: f.caFile})
			s, err := Dial(ctx, ln.Addr().String(), DialConfig{
				Credentials: agent, ExpectIdentity: tc.expect, ServerName: tc.serverName,
				Hello: Hello{Role: RoleAgent},
			}, nil)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				if s.Peer().String() != tc.expect {
					t.Errorf("peer %s", s.Peer())
				}
				s.Close("test over")
				return
			}
			if err == nil {
				s.Close("test over")
				t.Fatal("connected")
			}
			ae, ok := errors.AsType[*AuthError](err)
			if !ok || ae.Reason != tc.reason {
				t.Errorf("error %v, want refusal %s", err, tc.reason)
			}
		})
	}
}

func TestDialable(t *testing.T) {
	for addr, want := range map[string]bool{
		"192.0.2.1": true, "2001:db8::1": true, "127.0.0.1": false, "::1": false, "169.254.1.1": false,
		"fe80::1": false, "0.0.0.0": false, "::": false, "224.0.0.1": false,
	} {
		if got := Dialable(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %v", addr, got)
		}
	}
	for _, a := range HostAddrs() {
		if !Dialable(a) {
			t.Errorf("host address %v", a)
		}
	}
}
