package tunnel

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// parsePEMCert parses the first certificate of a PEM block.
func parsePEMCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mustCA creates a CA or fails the test.
func mustCA(t testing.TB, name string) *CA {
	t.Helper()
	ca, err := NewCA(name, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestNewCA(t *testing.T) {
	ca := mustCA(t, "ztgate test CA")
	c := parsePEMCert(t, ca.CertPEM())
	if !c.IsCA || c.Subject.CommonName != "ztgate test CA" || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("CA certificate: IsCA %v, CN %q, usage %v", c.IsCA, c.Subject.CommonName, c.KeyUsage)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if !ca.Certificate().Equal(c) {
		t.Fatal("Certificate() differs from CertPEM()")
	}
	if _, err := parseKey(ca.KeyPEM()); err != nil {
		t.Fatalf("KeyPEM: %v", err)
	}
	if _, err := NewCA("x", 0); err == nil {
		t.Fatal("NewCA accepted a zero validity")
	}
}

func TestIssue(t *testing.T) {
	ca := mustCA(t, "ca")
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name      string
		req       IssueRequest
		identity  string // String() of the identity; empty: none expected
		server    bool
		dns       []string
		ips       int
		notBefore time.Time
		validity  time.Duration
	}{
		{name: "agent", req: IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"},
			identity: "acme/agent/laptop", validity: DefaultLeafValidity},
		{name: "upper case normalised", req: IssueRequest{Tenant: "ACME", Role: "Agent", Name: "LapTop"},
			identity: "acme/agent/laptop", validity: DefaultLeafValidity},
		{name: "gateway is also a server", req: IssueRequest{Tenant: "acme", Role: RoleGateway, Name: "gw1"},
			identity: "acme/gateway/gw1", server: true, validity: DefaultLeafValidity},
		{name: "relay with names", req: IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "relay1",
			DNSNames: []string{"relay.example.net"}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}},
			identity: "ops/relay/relay1", server: true, dns: []string{"relay.example.net"}, ips: 2, validity: DefaultLeafValidity},
		{name: "explicit dates", req: IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "a", NotBefore: start, Validity: time.Hour},
			identity: "acme/agent/a", notBefore: start, validity: time.Hour},
		{name: "SAN-less", req: IssueRequest{Name: "legacy-client", NoIdentity: true}, validity: DefaultLeafValidity},
		{name: "legacy", req: IssueRequest{Name: "test-agent", NoIdentity: true, LegacySANs: []string{"agent.web.ztna"}},
			identity: "default/agent/test-agent", dns: []string{"agent.web.ztna"}, validity: DefaultLeafValidity},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, keyPEM, err := ca.Issue(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			c := parsePEMCert(t, certPEM)
			checkLeaf(t, ca, c, keyPEM)
			id, err := IdentityFromCert(c)
			if (tc.identity == "") != (err != nil) || (err == nil && id.String() != tc.identity) {
				t.Fatalf("identity %v, %v; want %q", id, err, tc.identity)
			}
			if got := slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth); got != tc.server {
				t.Errorf("server auth = %v, want %v", got, tc.server)
			}
			if !slices.Equal(c.DNSNames, tc.dns) || len(c.IPAddresses) != tc.ips {
				t.Errorf("SANs: DNS %q, IPs %v", c.DNSNames, c.IPAddresses)
			}
			if !tc.notBefore.IsZero() && !c.NotBefore.Equal(tc.notBefore) {
				t.Errorf("NotBefore = %v, want %v", c.NotBefore, tc.notBefore)
			}
			if got := c.NotAfter.Sub(c.NotBefore); got != tc.validity {
				t.Errorf("validity = %v, want %v", got, tc.validity)
			}
		})
	}
}

// checkLeaf checks what every issued leaf has: it chains to ca for client
// authentication at its NotBefore, and keyPEM is its key.
func checkLeaf(t *testing.T, ca *CA, c *x509.Certificate, keyPEM []byte) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	opts := x509.VerifyOptions{Roots: roots, CurrentTime: c.NotBefore, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := c.Verify(opts); err != nil {
		// A leaf dated outside the CA's validity still has to be signed by it.
		if err := c.CheckSignatureFrom(ca.Certificate()); err != nil {
			t.Fatalf("leaf not signed by the CA: %v", err)
		}
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(c.PublicKey) {
		t.Fatal("key does not match the certificate")
	}
}

func TestIssueRefuses(t *testing.T) {
	ca := mustCA(t, "ca")
	tests := []struct {
		name string
		req  IssueRequest
	}{
		{"no tenant", IssueRequest{Role: RoleAgent, Name: "a"}},
		{"bad tenant", IssueRequest{Tenant: "ac_me", Role: RoleAgent, Name: "a"}},
		{"unknown role", IssueRequest{Tenant: "acme", Role: "admin", Name: "a"}},
		{"no name", IssueRequest{Tenant: "acme", Role: RoleAgent}},
		{"bad name", IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "a/b"}},
		{"negative validity", IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "a", Validity: -time.Hour}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := ca.Issue(tc.req); err == nil {
				t.Fatal("Issue accepted the request")
			}
		})
	}
}

// writeFile writes data to name in dir and returns its path.
func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// sec1Key re-encodes a PKCS #8 EC key as "EC PRIVATE KEY" after an
// "EC PARAMETERS" block, as openssl writes it.
func sec1Key(t *testing.T, pkcs8PEM []byte) []byte {
	t.Helper()
	key, err := parseKey(pkcs8PEM)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}})
	return append(params, pem.EncodeToMemory(&pem.Block{Type: pemECKey, Bytes: der})...)
}

func TestLoadCA(t *testing.T) {
	dir := t.TempDir()
	ca, other := mustCA(t, "ca"), mustCA(t, "other")
	leafPEM, leafKey, err := ca.Issue(IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	caCert := writeFile(t, dir, "ca.crt", ca.CertPEM())
	tests := []struct {
		name    string
		cert    string
		key     string
		wantErr bool
	}{
		{"pkcs8 key", caCert, writeFile(t, dir, "ca.key", ca.KeyPEM()), false},
		{"sec1 key", caCert, writeFile(t, dir, "ca-sec1.key", sec1Key(t, ca.KeyPEM())), false},
		{"key of another CA", caCert, writeFile(t, dir, "other.key", other.KeyPEM()), true},
		{"not a CA", writeFile(t, dir, "leaf.crt", leafPEM), writeFile(t, dir, "leaf.key", leafKey), true},
		{"garbage certificate", writeFile(t, dir, "junk.crt", []byte("junk")), writeFile(t, dir, "ca2.key", ca.KeyPEM()), true},
		{"garbage key", caCert, writeFile(t, dir, "junk.key", []byte("junk")), true},
		{"missing certificate", filepath.Join(dir, "nope.crt"), writeFile(t, dir, "ca3.key", ca.KeyPEM()), true},
		{"missing key", caCert, filepath.Join(dir, "nope.key"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			loaded, err := LoadCA(tc.cert, tc.key)
			if tc.wantErr {
				if err == nil {
					t.Fatal("LoadCA accepted it")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			certPEM, keyPEM, err := loaded.Issue(IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "b"})
			if err != nil {
				t.Fatal(err)
			}
			checkLeaf(t, ca, parsePEMCert(t, certPEM), keyPEM)
		})
	}
}
