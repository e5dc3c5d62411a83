package tunnel

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestVerifyServerNameHint: a relay certificate without the name or
// address its client dials is bad_certificate with x509's message and what
// to do, with -dns for a name and -ip for an address; it said only
// "x509: certificate is valid for relay.example.net, not relay.example.com".
func TestVerifyServerNameHint(t *testing.T) {
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.Issue(IssueRequest{Tenant: "infra", Role: RoleRelay, Name: "relay1",
		DNSNames: []string{"relay.example.net"}, IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := parseTrust(ca.CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dial, want string }{
		{"relay.example.com", "not relay.example.com: dial a name the certificate holds (server_name), or issue it for this one (ztgate pki issue -dns relay.example.com)"},
		{"127.0.0.1", "dial a name the certificate holds (server_name), or issue it for this one (ztgate pki issue -ip 127.0.0.1)"},
	} {
		ae := tr.verifyChain([]*x509.Certificate{leaf}, time.Now(), x509.ExtKeyUsageServerAuth, tc.dial)
		var he x509.HostnameError
		if ae == nil || ae.Reason != ReasonBadCertificate || !strings.Contains(ae.Error(), tc.want) || !errors.As(ae, &he) {
			t.Errorf("dial %s: %v; want bad_certificate, a HostnameError and %q", tc.dial, ae, tc.want)
		}
	}
	if ae := tr.verifyChain([]*x509.Certificate{leaf}, time.Now(), x509.ExtKeyUsageServerAuth, "relay.example.net"); ae != nil {
		t.Errorf("its own name: %v", ae)
	}
}
