package tunnel

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// clientCase is one client of the TLS matrix.
type clientCase struct {
	name   string
	config func(f *tlsFixture) *tls.Config
	reason string // expected refusal by a strict server; empty: accepted
}

// clientMatrix is every kind of client a server may meet.
func clientMatrix() []clientCase {
	now := time.Now()
	agent := IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"}
	with := func(mod func(*IssueRequest)) IssueRequest { r := agent; mod(&r); return r }
	ours := func(req IssueRequest) func(*tlsFixture) *tls.Config {
		return func(f *tlsFixture) *tls.Config { return f.agentCreds(f.ca, req).ClientConfig(serverName, ALPNV2) }
	}
	foreign := func(req IssueRequest) func(*tlsFixture) *tls.Config {
		return func(f *tlsFixture) *tls.Config { return f.agentCreds(f.other, req).ClientConfig(serverName, ALPNV2) }
	}
	return []clientCase{
		{"valid agent", ours(agent), ""},
		{"legacy certificate", ours(IssueRequest{Name: "test-agent", NoIdentity: true, LegacySANs: []string{"agent.web.ztna"}}), ""},
		{"no certificate", func(f *tlsFixture) *tls.Config {
			return &tls.Config{RootCAs: rootPool(f.ca), ServerName: serverName, NextProtos: []string{ALPNV2}, MinVersion: tls.VersionTLS13}
		}, ReasonNoCertificate},
		{"other CA", foreign(agent), ReasonUnknownAuthority},
		{"expired", ours(with(func(r *IssueRequest) { r.NotBefore, r.Validity = now.Add(-48*time.Hour), 24*time.Hour })), ReasonExpired},
		{"not yet valid", ours(with(func(r *IssueRequest) { r.NotBefore = now.Add(time.Hour) })), ReasonNotYetValid},
		{"expired from other CA", foreign(with(func(r *IssueRequest) { r.NotBefore, r.Validity = now.Add(-48*time.Hour), 24*time.Hour })), ReasonUnknownAuthority},
		{"SAN-less", ours(IssueRequest{Name: "legacy-client", NoIdentity: true}), ReasonNoIdentity},
		{"conflicting legacy roles", ours(IssueRequest{Name: "x", NoIdentity: true,
			LegacySANs: []string{"agent.web.ztna", "connector.web.ztna"}}), ReasonNoIdentity},
	}
}

func TestServerRefusesClients(t *testing.T) {
	for _, tc := range clientMatrix() {
		t.Run(tc.name, func(t *testing.T) {
			f := newTLSFixture(t)
			var log rejectLog
			server := f.relay(CredentialsConfig{OnReject: log.record})
			res := handshake(t, server.ServerConfig(ALPNV2, ALPNV1), tc.config(f))
			reasons, remotes := log.snapshot()
			if tc.reason == "" {
				if res.serverErr != nil || res.clientErr != nil || len(reasons) != 0 {
					t.Fatalf("refused: server %v, client %v, rejects %v", res.serverErr, res.clientErr, reasons)
				}
				if res.server.NegotiatedProtocol != ALPNV2 {
					t.Errorf("ALPN %q, want %q", res.server.NegotiatedProtocol, ALPNV2)
				}
				if _, err := IdentityFromCert(res.server.PeerCertificates[0]); err != nil {
					t.Errorf("accepted peer without identity: %v", err)
				}
				return
			}
			ae, ok := errors.AsType[*AuthError](res.serverErr)
			if !ok || ae.Reason != tc.reason {
				t.Fatalf("server error %v, want reason %q", res.serverErr, tc.reason)
			}
			if res.clientErr == nil {
				t.Fatal("the client was not told of the refusal")
			}
			if !slices.Equal(reasons, []string{tc.reason}) || !isLoopback(remotes[0]) {
				t.Fatalf("OnReject saw %v from %v, want [%s] from loopback", reasons, remotes, tc.reason)
			}
		})
	}
}

// isLoopback reports whether addr is a loopback TCP address.
func isLoopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

func TestInsecureAcceptsAnyClient(t *testing.T) {
	for _, tc := range clientMatrix() {
		t.Run(tc.name, func(t *testing.T) {
			f := newTLSFixture(t)
			var log rejectLog
			server := f.relay(CredentialsConfig{Insecure: true, OnReject: log.record})
			if !server.Insecure() {
				t.Fatal("Insecure() = false")
			}
			res := handshake(t, server.ServerConfig(ALPNV2), tc.config(f))
			if reasons, _ := log.snapshot(); res.serverErr != nil || res.clientErr != nil || len(reasons) != 0 {
				t.Fatalf("insecure server refused: server %v, client %v, rejects %v", res.serverErr, res.clientErr, reasons)
			}
		})
	}
}

func TestServerClockDecidesValidity(t *testing.T) {
	f := newTLSFixture(t)
	future := time.Now().Add(DefaultLeafValidity + time.Hour)
	server := f.relay(CredentialsConfig{Now: func() time.Time { return future }})
	client := f.agentCreds(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
	res := handshake(t, server.ServerConfig(ALPNV2), client.ClientConfig(serverName, ALPNV2))
	if ae, ok := errors.AsType[*AuthError](res.serverErr); !ok || ae.Reason != ReasonExpired {
		t.Fatalf("server error %v, want reason %q", res.serverErr, ReasonExpired)
	}
}

func TestClientVerifiesServer(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name       string
		ca         func(f *tlsFixture) *CA
		req        IssueRequest
		serverName string
		reason     string   // empty: accepted
		roles      []string // DialConfig.ServerRoles
	}{
		{"valid", ours, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", DNSNames: []string{serverName}}, serverName, "", nil},
		{"valid by IP", ours, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", IPs: loopbackIPs()}, "127.0.0.1", "", nil},
		{"gateway listener", ours, IssueRequest{Tenant: "acme", Role: RoleGateway, Name: "gw", DNSNames: []string{serverName}}, serverName, "", nil},
		{"wrong name", ours, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", DNSNames: []string{serverName}}, "other.test", ReasonBadCertificate, nil},
		{"empty name", ours, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", DNSNames: []string{serverName}}, "", ReasonBadCertificate, nil},
		{"other CA", theirs, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", DNSNames: []string{serverName}}, serverName, ReasonUnknownAuthority, nil},
		{"expired", ours, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", DNSNames: []string{serverName},
			NotBefore: now.Add(-48 * time.Hour), Validity: 24 * time.Hour}, serverName, ReasonExpired, nil},
		{"client-only certificate", ours, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "relay.test"}, serverName, ReasonBadCertificate, nil},
		{"a relay, as a gateway needs", ours, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", DNSNames: []string{serverName}}, serverName, "", []string{RoleRelay}},
		{"a gateway with the relay's name", ours, IssueRequest{Tenant: "ops", Role: RoleGateway, Name: "gw", DNSNames: []string{serverName}}, serverName, ReasonWrongRole, []string{RoleRelay}},
		{"no identity with the relay's name", ours, IssueRequest{Name: "r", NoIdentity: true, DNSNames: []string{serverName}}, serverName, ReasonWrongRole, []string{RoleRelay}},
		{"a gateway, as an agent may take", ours, IssueRequest{Tenant: "ops", Role: RoleGateway, Name: "gw", DNSNames: []string{serverName}}, serverName, "", []string{RoleRelay, RoleGateway}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTLSFixture(t)
			certFile, keyFile := f.leaf(tc.ca(f), tc.req)
			server := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: f.caFile})
			var log rejectLog
			agentCert, agentKey := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
			client := f.creds(CredentialsConfig{CertFile: agentCert, KeyFile: agentKey, CAFile: f.caFile, OnReject: log.record})
			res := handshake(t, server.ServerConfig(ALPNV1), client.clientConfig(nil, tc.serverName, "", tc.roles, []string{ALPNV1}))
			reasons, _ := log.snapshot()
			if tc.reason == "" {
				if res.clientErr != nil || res.serverErr != nil || len(reasons) != 0 {
					t.Fatalf("refused: client %v, server %v", res.clientErr, res.serverErr)
				}
				return
			}
			ae, ok := errors.AsType[*AuthError](res.clientErr)
			if !ok || ae.Reason != tc.reason || !slices.Equal(reasons, []string{tc.reason}) {
				t.Fatalf("client error %v (OnReject %v), want reason %q", res.clientErr, reasons, tc.reason)
			}
			if res.serverErr == nil {
				t.Fatal("the server completed a handshake the client refused")
			}
		})
	}
}

// ours and theirs pick the issuing CA of a test case.
func ours(f *tlsFixture) *CA   { return f.ca }
func theirs(f *tlsFixture) *CA { return f.other }

func TestReloadServerCertificate(t *testing.T) {
	f := newTLSFixture(t)
	certFile, keyFile := f.relayFiles("relay-a")
	server := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: f.caFile})
	client := f.agentCreds(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
	serverCfg, clientCfg := server.ServerConfig(ALPNV2), client.ClientConfig(serverName, ALPNV2)

	srv1, cli1, res := connect(t, serverCfg, clientCfg)
	if res.clientErr != nil || peerName(res.client) != "relay-a" {
		t.Fatalf("first connection: %v, server %q", res.clientErr, peerName(res.client))
	}
	newCert, newKey := f.relayFiles("relay-b")
	replace(t, certFile, readFile(t, newCert))
	replace(t, keyFile, readFile(t, newKey))
	if err := server.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := server.Certificate().Subject.CommonName; got != "relay-b" {
		t.Fatalf("Certificate() after reload: %q", got)
	}
	res = handshake(t, serverCfg, clientCfg)
	if res.clientErr != nil || peerName(res.client) != "relay-b" {
		t.Fatalf("after reload: %v, server %q, want relay-b", res.clientErr, peerName(res.client))
	}
	if err := exchange(srv1, cli1); err != nil {
		t.Fatalf("the session opened before the reload broke: %v", err)
	}
}

func TestReloadCA(t *testing.T) {
	f := newTLSFixture(t)
	certFile, keyFile := f.relayFiles("relay1")
	serverCA := f.write("server-ca.crt", f.ca.CertPEM())
	server := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: serverCA})
	serverCfg := server.ServerConfig(ALPNV2)
	agent := IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"}
	oldClient := f.agentCreds(f.ca, agent).ClientConfig(serverName, ALPNV2)
	newClient := f.agentCreds(f.other, agent).ClientConfig(serverName, ALPNV2)

	tests := []struct {
		name   string
		caPEM  []byte // the server's CA file before the handshakes; nil: unchanged
		client *tls.Config
		reason string
	}{
		{"old CA accepts its client", nil, oldClient, ""},
		{"old CA refuses the new one", nil, newClient, ReasonUnknownAuthority},
		{"new CA accepts its client", f.other.CertPEM(), newClient, ""},
		{"new CA refuses the old one", nil, oldClient, ReasonUnknownAuthority},
		{"bundle accepts both", append(f.ca.CertPEM(), f.other.CertPEM()...), oldClient, ""},
		{"bundle, new client", nil, newClient, ""},
	}
	for _, tc := range tests { // in order: each step builds on the last
		if tc.caPEM != nil {
			replace(t, serverCA, tc.caPEM)
			if err := server.Reload(); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
		}
		res := handshake(t, serverCfg, tc.client)
		ae, _ := errors.AsType[*AuthError](res.serverErr)
		switch {
		case tc.reason == "" && res.serverErr != nil:
			t.Fatalf("%s: refused: %v", tc.name, res.serverErr)
		case tc.reason != "" && (ae == nil || ae.Reason != tc.reason):
			t.Fatalf("%s: server error %v, want reason %q", tc.name, res.serverErr, tc.reason)
		}
	}
}

func TestReloadFailureKeepsCredentials(t *testing.T) {
	tests := []struct {
		name       string
		breakFiles func(t *testing.T, f *tlsFixture, certFile, keyFile, caFile string)
	}{
		{"garbage certificate", func(t *testing.T, _ *tlsFixture, certFile, _, _ string) {
			replace(t, certFile, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
		}},
		{"key of another certificate", func(t *testing.T, f *tlsFixture, _, keyFile, _ string) {
			_, otherKey := f.relayFiles("other")
			replace(t, keyFile, readFile(t, otherKey))
		}},
		{"missing CA file", func(t *testing.T, _ *tlsFixture, _, _, caFile string) {
			if err := os.Remove(caFile); err != nil {
				t.Fatal(err)
			}
		}},
		{"CA file without certificates", func(t *testing.T, _ *tlsFixture, _, _, caFile string) {
			replace(t, caFile, []byte("nothing here\n"))
		}},
		{"CA file with a bad certificate", func(t *testing.T, f *tlsFixture, _, _, caFile string) {
			replace(t, caFile, append(f.ca.CertPEM(), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"...))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTLSFixture(t)
			certFile, keyFile := f.relayFiles("relay1")
			caFile := f.write("server-ca.crt", f.ca.CertPEM())
			server := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile})
			before := server.Certificate()
			tc.breakFiles(t, f, certFile, keyFile, caFile)
			if err := server.Reload(); err == nil {
				t.Fatal("Reload accepted broken files")
			}
			if server.Certificate() != before {
				t.Fatal("a failed reload changed the certificate")
			}
			client := f.agentCreds(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
			if res := handshake(t, server.ServerConfig(ALPNV2), client.ClientConfig(serverName, ALPNV2)); res.serverErr != nil || res.clientErr != nil {
				t.Fatalf("handshake after a failed reload: server %v, client %v", res.serverErr, res.clientErr)
			}
		})
	}
}

func TestReloadClientCertificate(t *testing.T) {
	f := newTLSFixture(t)
	server := f.relay(CredentialsConfig{})
	agentCert, agentKey := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "old"})
	client := f.creds(CredentialsConfig{CertFile: agentCert, KeyFile: agentKey, CAFile: f.caFile})
	serverCfg, clientCfg := server.ServerConfig(ALPNV2), client.ClientConfig(serverName, ALPNV2)
	for _, name := range []string{"old", "new"} {
		if name == "new" {
			newCert, newKey := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "new"})
			replace(t, agentCert, readFile(t, newCert))
			replace(t, agentKey, readFile(t, newKey))
			if err := client.Reload(); err != nil {
				t.Fatal(err)
			}
		}
		res := handshake(t, serverCfg, clientCfg)
		if res.serverErr != nil || peerName(res.server) != name {
			t.Fatalf("server saw %q, %v; want %q", peerName(res.server), res.serverErr, name)
		}
	}
}

func TestNewCredentialsErrors(t *testing.T) {
	f := newTLSFixture(t)
	certFile, keyFile := f.relayFiles("relay1")
	missing := filepath.Join(f.dir, "missing")
	tests := []struct {
		name string
		cfg  CredentialsConfig
	}{
		{"missing certificate", CredentialsConfig{CertFile: missing, KeyFile: keyFile, CAFile: f.caFile}},
		{"missing key", CredentialsConfig{CertFile: certFile, KeyFile: missing, CAFile: f.caFile}},
		{"missing CA", CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: missing}},
		{"no files", CredentialsConfig{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewCredentials(tc.cfg, nil); err == nil || !strings.HasPrefix(err.Error(), "tunnel: ") {
				t.Fatalf("err = %v, want a tunnel error", err)
			}
		})
	}
	// tls names neither file of a pair that does not match; the error does.
	_, otherKey := f.relayFiles("relay2")
	_, err := NewCredentials(CredentialsConfig{CertFile: certFile, KeyFile: otherKey, CAFile: f.caFile}, nil)
	if want := "certificate " + certFile + ", key " + otherKey + ": tls: private key does not match public key"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("key of another certificate: err = %v, want it to contain %q", err, want)
	}
}

func TestAuthError(t *testing.T) {
	detail := errors.New("x509: certificate signed by unknown authority")
	tests := []struct {
		err  *AuthError
		want string
	}{
		{&AuthError{Reason: ReasonNoCertificate}, "tunnel: peer certificate refused: no_certificate"},
		{&AuthError{Reason: ReasonUnknownAuthority, Err: detail},
			"tunnel: peer certificate refused: unknown_authority: x509: certificate signed by unknown authority"},
	}
	for _, tc := range tests {
		t.Run(tc.err.Reason, func(t *testing.T) {
			if tc.err.Error() != tc.want {
				t.Errorf("Error() = %q, want %q", tc.err.Error(), tc.want)
			}
			if errors.Unwrap(tc.err) != tc.err.Err {
				t.Error("Unwrap does not return the detail")
			}
		})
	}
	reasons := AuthReasons()
	if len(reasons) != 7 || len(slices.Compact(slices.Sorted(slices.Values(reasons)))) != 7 {
		t.Fatalf("AuthReasons() = %v, want seven distinct reasons", reasons)
	}
}

// TestCredentialsOwnRole: a peer started with a certificate of another
// role (an agent's given to the relay) or the CA's own is refused at load
// with what to do, instead of starting and being refused by every peer at
// the handshake; a reload to such a certificate fails and keeps the one
// in use. A certificate without a ztgate identity (the original system's)
// still loads.
func TestCredentialsOwnRole(t *testing.T) {
	f := newTLSFixture(t)
	agentCert, agentKey := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
	relayCert, relayKey := f.relayFiles("relay1")
	bareCert, bareKey := f.leaf(f.ca, IssueRequest{Name: "old-relay", NoIdentity: true, DNSNames: []string{serverName}})
	caCert, caKey := f.write("ca.crt", f.ca.CertPEM()), f.write("ca.key", f.ca.KeyPEM())
	for _, tc := range []struct {
		name, cert, key, role string
		want                  string // in the error; "" loads
	}{
		{"relay as relay", relayCert, relayKey, RoleRelay, ""},
		{"any role", agentCert, agentKey, "", ""},
		{"agent as relay", agentCert, agentKey, RoleRelay, "is the certificate of acme/agent/laptop, not of a relay: issue one with `ztgate pki issue -role relay`"},
		{"relay as gateway", relayCert, relayKey, RoleGateway, "not of a gateway"},
		{"relay as agent", relayCert, relayKey, RoleAgent, "not of an agent:"},
		{"the CA as agent", caCert, caKey, RoleAgent, "is a CA's certificate, not an agent's"},
		{"the CA as relay", caCert, caKey, RoleRelay, "is a CA's certificate, not a relay's"},
		{"no identity", bareCert, bareKey, RoleRelay, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewCredentials(CredentialsConfig{CertFile: tc.cert, KeyFile: tc.key, CAFile: f.caFile, Role: tc.role}, nil)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.cert)):
				t.Fatalf("err = %v, want one naming %s and saying %q", err, tc.cert, tc.want)
			}
		})
	}

	// A reload to an agent's certificate keeps the relay's.
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key")
	copyFile := func(dst, src string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(certFile, relayCert)
	copyFile(keyFile, relayKey)
	c := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: f.caFile, Role: RoleRelay})
	copyFile(certFile, agentCert)
	copyFile(keyFile, agentKey)
	if err := c.Reload(); err == nil {
		t.Fatal("a reload to an agent's certificate succeeded")
	}
	if id, err := IdentityFromCert(c.Certificate()); err != nil || id.Role != RoleRelay {
		t.Errorf("after the failed reload the certificate in use is %v (%v), want the relay's", id, err)
	}
}

// TestCredentialsOwnRoleInsecureSelfSigned: a development relay started
// insecure without a CA, on a self-signed certificate without a ztgate
// identity that says CA:TRUE (as `openssl req -x509` makes them), worked:
// its insecure peers without a CA verify no server. It is not the CA's
// certificate — there is no CA — and loads as any certificate without an
// identity does, with a warning.
func TestCredentialsOwnRoleInsecureSelfSigned(t *testing.T) {
	f := newTLSFixture(t)
	selfCert, selfKey := f.write("self.crt", f.other.CertPEM()), f.write("self.key", f.other.KeyPEM())
	for _, role := range []string{RoleRelay, RoleGateway, RoleAgent} {
		if _, err := NewCredentials(CredentialsConfig{CertFile: selfCert, KeyFile: selfKey, Insecure: true, Role: role}, nil); err != nil {
			t.Errorf("%s: insecure without a CA, a self-signed certificate refused: %v", role, err)
		}
	}
	// With the CA file naming it, it is the CA's own certificate.
	if _, err := NewCredentials(CredentialsConfig{CertFile: selfCert, KeyFile: selfKey, CAFile: selfCert, Insecure: true, Role: RoleRelay}, nil); err == nil ||
		!strings.Contains(err.Error(), "is a CA's certificate") {
		t.Errorf("the CA's own certificate as the relay's: %v, want refused", err)
	}
}

// TestCredentialsWarnings: what the load starts with but warns about is
// also given back, for `ztgate check`: a certificate its own CA file does
// not verify, and one without a ztgate identity; a good one, nothing.
func TestCredentialsWarnings(t *testing.T) {
	f := newTLSFixture(t)
	for _, tc := range []struct {
		name   string
		ca     *CA
		req    IssueRequest
		want   string
		reason string
	}{
		{"verified", f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "a"}, "", ""},
		{"another CA", f.other, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "b"}, CertNotVerified, ReasonUnknownAuthority},
		{"no identity", f.ca, IssueRequest{Name: "c", NoIdentity: true}, CertNoIdentity, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert, key := f.leaf(tc.ca, tc.req)
			c := f.creds(CredentialsConfig{CertFile: cert, KeyFile: key, CAFile: f.caFile, Role: RoleAgent})
			ws := c.Warnings()
			if tc.want == "" {
				if len(ws) != 0 {
					t.Fatalf("warnings %v, want none", ws)
				}
				return
			}
			if len(ws) != 1 || ws[0].Msg != tc.want || ws[0].Cert != cert || ws[0].Reason != tc.reason {
				t.Fatalf("warnings %v, want one %q about %s (%s)", ws, tc.want, cert, tc.reason)
			}
		})
	}
	// A CA file that holds a peer's certificate (relay1.crt for ca.crt),
	// with a certificate and without one (insecure): one warning, which
	// says why the certificate does not verify.
	relayCert, _ := f.relayFiles("relay1")
	cert, key := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "d"})
	for name, cfg := range map[string]CredentialsConfig{
		"a peer's certificate as the CA":     {CertFile: cert, KeyFile: key, CAFile: relayCert, Role: RoleAgent},
		"the same, insecure, no certificate": {CAFile: relayCert, Insecure: true, Role: RoleAgent},
	} {
		ws := f.creds(cfg).Warnings()
		if len(ws) != 1 || ws[0].Msg != CertCAIsPeer || ws[0].CA != relayCert || !slices.Equal(ws[0].Peers, []string{"ops/relay/relay1"}) {
			t.Errorf("%s: warnings %v, want one %q naming ops/relay/relay1", name, ws, CertCAIsPeer)
		}
	}
}
