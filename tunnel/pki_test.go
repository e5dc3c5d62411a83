package tunnel

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// zeroReader reads zeros: the worst draw a random source can give.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestSerialPositive: RFC 5280 §4.1.2.2 wants a positive serial number
// of at most 20 octets. A draw of zero was returned as the serial zero.
func TestSerialPositive(t *testing.T) {
	for _, r := range []io.Reader{zeroReader{}, rand.Reader} {
		s, err := newSerial(r)
		if err != nil {
			t.Fatal(err)
		}
		if s.Sign() <= 0 || s.BitLen() > 159 { // 20 octets with the sign bit clear
			t.Errorf("serial %v (%d bits) from %T: want 1 to 2^159-1", s, s.BitLen(), r)
		}
		if r == rand.Reader && s.BitLen() < 64 {
			t.Errorf("serial %v has %d bits: want at least 64 random bits (CA/B Forum)", s, s.BitLen())
		}
	}
}

// TestIssueKeyUsage pins the extended key usages of each role: an agent
// is only ever a client, a gateway both (a client of its relay, the
// server of its listener and of the direct path), a relay a server and a
// client (only to be refused by role, see leafTemplate).
func TestIssueKeyUsage(t *testing.T) {
	ca := mustCA(t, "ca")
	client, server := x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth
	for _, tc := range []struct {
		name string
		req  IssueRequest
		want []x509.ExtKeyUsage
	}{
		{"agent", IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "a"}, []x509.ExtKeyUsage{client}},
		{"gateway", IssueRequest{Tenant: "acme", Role: RoleGateway, Name: "gw"}, []x509.ExtKeyUsage{client, server}},
		{"gateway listener", IssueRequest{Tenant: "acme", Role: RoleGateway, Name: "gw", DNSNames: []string{"gw.example.net"}}, []x509.ExtKeyUsage{client, server}},
		{"relay", IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", DNSNames: []string{"relay.example.net"}}, []x509.ExtKeyUsage{client, server}},
		{"SAN-less", IssueRequest{Name: "c", NoIdentity: true}, []x509.ExtKeyUsage{client}},
		{"legacy server", IssueRequest{Name: "c", NoIdentity: true, LegacySANs: []string{"connector.web.ztna"}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, []x509.ExtKeyUsage{client, server}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, _, err := ca.Issue(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			c := parsePEMCert(t, certPEM)
			got, want := slices.Sorted(slices.Values(c.ExtKeyUsage)), slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Errorf("extended key usage %v, want %v", got, tc.want)
			}
			if c.KeyUsage != x509.KeyUsageDigitalSignature || c.IsCA {
				t.Errorf("key usage %v, CA %v: want a digital signature only, not a CA", c.KeyUsage, c.IsCA)
			}
		})
	}
}

// TestIssueRefusesNames: what Issue would write but no peer would parse
// back as given, or no client would match as a server name, is refused.
func TestIssueRefusesNames(t *testing.T) {
	ca := mustCA(t, "ca")
	relay := func(dns ...string) IssueRequest {
		return IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", DNSNames: dns}
	}
	for _, tc := range []struct {
		name string
		req  IssueRequest
		want string // in the error
	}{
		// strings.ToLower folds the Kelvin sign to k: the identity would
		// have been "kcme", not the tenant given.
		{"Kelvin sign in the tenant", IssueRequest{Tenant: "\u212acme", Role: RoleAgent, Name: "a"}, "tenant"},
		{"Kelvin sign in the name", IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "\u212a"}, "name"},
		{"tenant with a dot", IssueRequest{Tenant: "ac.me", Role: RoleAgent, Name: "a"}, "a-z, 0-9"},
		{"empty label in the name", IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "a..b"}, "a-z, 0-9"},
		{"name with a space", IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "my laptop"}, "a-z, 0-9"},
		{"DNS name with a port", relay("relay.example.net:4433"), "port"},
		{"DNS name that is an address", relay("203.0.113.1"), "IP"},
		{"DNS name that is a URL", relay("https://relay.example.net"), "URL: a certificate names the host alone (relay.example.net)"},
		{"DNS name with a space", relay("relay example"), "not a DNS name"},
		{"DNS name with an empty label", relay("relay..example"), "not a DNS name"},
		{"wildcard not leftmost", relay("relay.*.example"), "not a DNS name"},
		{"DNS name too long", relay(strings.Repeat("a.", 127) + "net"), "not a DNS name"},
		{"IP with a zone", IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", IPs: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}}, "zone"},
		{"invalid IP", IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r", IPs: []netip.Addr{{}}}, "IP"},
		{"agent with a server name", IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "a", DNSNames: []string{"a.example.net"}}, "agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ca.Issue(tc.req)
			if err == nil {
				t.Fatal("Issue accepted the request")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// TestIssueServerNamesNormalised: DNS names are matched case-insensitively
// and without the root's dot; the certificate carries them lower case,
// without it, once.
func TestIssueServerNamesNormalised(t *testing.T) {
	ca := mustCA(t, "ca")
	certPEM, _, err := ca.Issue(IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "r",
		DNSNames: []string{"Relay.Example.NET.", "relay.example.net", "*.relays.example.net", "int_name.corp"}})
	if err != nil {
		t.Fatal(err)
	}
	c := parsePEMCert(t, certPEM)
	if want := []string{"relay.example.net", "*.relays.example.net", "int_name.corp"}; !slices.Equal(c.DNSNames, want) {
		t.Errorf("DNS SANs %q, want %q", c.DNSNames, want)
	}
	for _, host := range []string{"relay.example.net", "eu.relays.example.net"} {
		if err := c.VerifyHostname(host); err != nil {
			t.Errorf("VerifyHostname(%q): %v", host, err)
		}
	}
}

// FuzzIssueIdentity: whatever leafTemplate accepts as tenant, role and
// name comes back from the certificate exactly, but for ASCII case.
func FuzzIssueIdentity(f *testing.F) {
	f.Add("acme", "agent", "laptop")
	f.Add("ACME", "Gateway", "gw1.DC-2")
	f.Add("\u212acme", "relay", "r")
	f.Add("acme", "agent", "\u212a")
	f.Add("acme", "agent", "a/b")
	f.Add("acme", "agent", "a%2fb")
	f.Add("a:1", "agent", "x")
	ca := mustCA(f, "fuzz") // signs every leaf with its own key: the leaf's key does not matter here
	f.Fuzz(func(t *testing.T, tenant, role, name string) {
		tmpl, err := leafTemplate(IssueRequest{Tenant: tenant, Role: role, Name: name})
		if err != nil {
			return
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate(), ca.cert.PublicKey, ca.key)
		if err != nil {
			t.Fatalf("%q %q %q: %v", tenant, role, name, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("%q %q %q: %v", tenant, role, name, err)
		}
		id, err := IdentityFromCert(c)
		want := Identity{Tenant: asciiLower(tenant), Role: asciiLower(role), Name: asciiLower(name)}
		if err != nil || !sameIdentity(id, want) {
			t.Fatalf("issued %q %q %q, parsed back as %#v, %v", tenant, role, name, id, err)
		}
	})
}

// asciiLower lowers A-Z only.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// TestLoadCAErrors: LoadCA says which file is wrong and how.
func TestLoadCAErrors(t *testing.T) {
	dir := t.TempDir()
	ca, other := mustCA(t, "ca"), mustCA(t, "other")
	caCert := writeFile(t, dir, "ca.crt", ca.CertPEM())
	der, _ := pem.Decode(ca.KeyPEM())
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: der.Bytes})
	legacyEncrypted := pem.EncodeToMemory(&pem.Block{Type: pemECKey, Headers: map[string]string{
		"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"}, Bytes: []byte{1, 2, 3}})
	for _, tc := range []struct {
		name, cert, key string
		want            []string
	}{
		{"garbage key", caCert, writeFile(t, dir, "junk.key", []byte("junk")), []string{"junk.key", "no private key"}},
		{"a certificate as key", caCert, writeFile(t, dir, "cert-as.key", ca.CertPEM()), []string{"cert-as.key", "no private key"}},
		{"encrypted PKCS #8 key", caCert, writeFile(t, dir, "enc.key", encrypted), []string{"enc.key", "encrypted"}},
		{"encrypted SEC 1 key", caCert, writeFile(t, dir, "enc1.key", legacyEncrypted), []string{"enc1.key", "encrypted"}},
		{"key of another CA", caCert, writeFile(t, dir, "other.key", other.KeyPEM()), []string{"other.key", "ca.crt", "does not match"}},
		{"garbage certificate", writeFile(t, dir, "junk.crt", []byte("junk")), writeFile(t, dir, "ca.key", ca.KeyPEM()), []string{"junk.crt", "no CERTIFICATE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadCA(tc.cert, tc.key)
			if err == nil {
				t.Fatal("LoadCA accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestLoadCABundle: a ca.crt that became a bundle of the old and the new
// CA during a rotation (operations.md) still loads, with the certificate
// that matches the key, whatever the order.
func TestLoadCABundle(t *testing.T) {
	dir := t.TempDir()
	ca, other := mustCA(t, "ca"), mustCA(t, "other")
	key := writeFile(t, dir, "ca.key", ca.KeyPEM())
	for name, bundle := range map[string][]byte{
		"other first": append(slices.Clone(other.CertPEM()), ca.CertPEM()...),
		"ca first":    append(slices.Clone(ca.CertPEM()), other.CertPEM()...),
	} {
		t.Run(name, func(t *testing.T) {
			loaded, err := LoadCA(writeFile(t, dir, "bundle.crt", bundle), key)
			if err != nil {
				t.Fatal(err)
			}
			if !loaded.Certificate().Equal(ca.Certificate()) || !slices.Equal(loaded.CertPEM(), ca.CertPEM()) {
				t.Fatal("loaded another certificate than the key's")
			}
		})
	}
}

// TestLoadCARSA: a CA of the user's own with an RSA key in PKCS #1
// ("RSA PRIVATE KEY", as older openssl wrote it) signs as well.
func TestLoadCARSA(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rsa CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca, err := LoadCA(writeFile(t, dir, "ca.crt", pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})),
		writeFile(t, dir, "ca.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})))
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	checkLeaf(t, ca, parsePEMCert(t, certPEM), keyPEM)
}
