package tunnel

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzIdentityFromCert fuzzes SAN strings into an unsigned certificate
// template, which is all IdentityFromCert reads. Whatever it reads back is
// in the character set ztgate's pki issues, was lowered in ASCII only (the
// SAN it came from reads the same but for ASCII case: nothing folded,
// decoded or dropped), and reads back the same once encoded again.
func FuzzIdentityFromCert(f *testing.F) {
	f.Add("ztna://acme/agent/laptop", "", "", "laptop")
	f.Add("ztna://ACME/Gateway/gw1.dc", "host.example", "", "")
	f.Add("", "agent.echo-service.ztna", "agent.*.ztna", "test-agent")
	f.Add("", "connector.web.ztna", "agent.web.ztna", "c")
	f.Add("ztna://acme:1/agent/a?b#c", "agent.x.ztna", "", "x")
	f.Add("ztna://acme/agent/l%61ptop", "", "", "")
	f.Add("spiffe://acme/agent/a", "Agent..ZTNA", "connector.a.b.ztna", "")
	// Characters a Unicode lowering or folding maps into ASCII: the Kelvin
	// sign (k), the long s (s), the dotted capital I (i).
	f.Add("ztna://%E2%84%AAcme/agent/a", "", "", "")
	f.Add("ztna://acme/agent/%E2%84%AAate", "", "", "")
	f.Add("ztna://acme/gateway/gw.%C5%BF", "", "", "")
	f.Add("ztna://%C4%B0nc/relay/r", "", "", "")
	f.Add("", "agent.\u212Aweb.ztna", "", "a")
	f.Add("", "Agent.web.ZTNA", "connector.\u017Fvc.ztna", "a")
	f.Add("", "agent.web.ztna", "", "\u212Aate")
	f.Add("", "agent.web.ztna", "", "Test Agent 1")
	// Percent-encodings: of a letter, of '/', of NUL, of '%', lower-case hex.
	f.Add("ztna://acme/agent%2Fa/b", "", "", "")
	f.Add("ztna://acme/agent/a%2fb", "", "", "")
	f.Add("ztna://acme/agent/a%00b", "", "", "")
	f.Add("ztna://%25acme/agent/a", "", "", "")
	f.Add("ztna://acme/agent/%2561", "", "", "")
	f.Add("ztna://acme/agent/%e2%84%aa", "", "", "")
	// Separators, empty and extra segments, port, user, query, fragment.
	f.Add("", "agent.web\x00.ztna", "", "a\x00b")
	f.Add("", "agent.w b.ztna", "", "a/b")
	f.Add("ztna://acme//a", "", "", "")
	f.Add("ztna://acme/agent//a", "", "", "")
	f.Add("ztna://acme/agent/a/", "", "", "")
	f.Add("ztna://acme/agent/a/b", "", "", "")
	f.Add("ztna://acme:/agent/a", "", "", "")
	f.Add("ztna://@acme/agent/a", "", "", "")
	f.Add("ztna://u:p@acme/agent/a", "", "", "")
	f.Add("ztna://acme/agent/a?", "", "", "")
	f.Add("ztna://acme/agent/a#", "", "", "")
	f.Add("ztna://[::1]/agent/a", "", "", "")
	f.Add("ztna:acme/agent/a", "", "", "")
	f.Fuzz(func(t *testing.T, uri, dns1, dns2, cn string) {
		cert := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
		if u, err := url.Parse(uri); err == nil && uri != "" {
			cert.URIs = []*url.URL{u}
		}
		for _, d := range []string{dns1, dns2} {
			if d != "" {
				cert.DNSNames = append(cert.DNSNames, d)
			}
		}
		id, err := IdentityFromCert(cert)
		if err != nil {
			if !errors.Is(err, ErrNoIdentity) && !errors.Is(err, ErrConflictingIdentity) &&
				!errors.Is(err, ErrMalformedIdentity) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if !validRole(id.Role) {
			t.Fatalf("role %q", id.Role)
		}
		if id.Legacy {
			checkLegacyIdentity(t, id, cn, cert.DNSNames)
			return
		}
		checkURIIdentity(t, id, uri)
	})
}

// checkLegacyIdentity checks the invariants of an identity from DNS SANs:
// the common name as it is, of printable ASCII but '/'; each service from
// one of the SANs lowered in ASCII only, of printable ASCII; the same
// identity from the SANs encoded again.
func checkLegacyIdentity(t *testing.T, id Identity, cn string, dnsNames []string) {
	t.Helper()
	if id.Tenant != DefaultTenant || id.Name != cn || cn == "" || id.Role == RoleRelay ||
		strings.ContainsFunc(cn, func(r rune) bool { return r < ' ' || r > '~' || r == '/' }) {
		t.Fatalf("legacy identity %#v from CN %q", id, cn)
	}
	if id.Services != nil && (len(id.Services) == 0 || !slices.IsSorted(id.Services) ||
		len(slices.Compact(slices.Clone(id.Services))) != len(id.Services) || slices.Contains(id.Services, "")) {
		t.Fatalf("legacy services %q", id.Services)
	}
	prefix := map[string]string{RoleAgent: "agent.", RoleGateway: "connector."}[id.Role]
	again := &x509.Certificate{Subject: pkix.Name{CommonName: id.Name}}
	for _, s := range id.Services {
		san := prefix + s + ".ztna"
		if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r > '~' || ('A' <= r && r <= 'Z') }) ||
			!slices.ContainsFunc(dnsNames, func(d string) bool { return asciiLower(d) == san }) {
			t.Fatalf("legacy service %q from SANs %q", s, dnsNames)
		}
		again.DNSNames = append(again.DNSNames, san)
	}
	if id.Services == nil {
		again.DNSNames = []string{prefix + legacyWildcard + ".ztna"}
	}
	if got, err := IdentityFromCert(again); err != nil || !sameIdentity(got, id) {
		t.Fatalf("encoded again as %q, %q: %#v, %v; want %#v", again.Subject.CommonName, again.DNSNames, got, err, id)
	}
}

// checkURIIdentity checks that a URI identity is in the character set of
// the issuing side, that uri is its canonical URI but for ASCII case, and
// that the identity survives being issued again.
func checkURIIdentity(t *testing.T, id Identity, uri string) {
	t.Helper()
	if id.Services != nil || !validLabel(id.Tenant) || !validName(id.Name) {
		t.Fatalf("URI identity %#v", id)
	}
	u, err := identityURI(id.Tenant, id.Role, id.Name)
	if err != nil {
		t.Fatalf("identity %#v cannot be issued: %v", id, err)
	}
	// url.Parse, and so crypto/x509, keeps no trace of an empty fragment:
	// "ztna://acme/agent/a#" cannot be told from "ztna://acme/agent/a".
	if asciiLower(strings.TrimSuffix(uri, "#")) != u.String() {
		t.Fatalf("%q read as %#v: not the SAN lowered in ASCII, %s", uri, id, u)
	}
	// Through the SAN's text, as a certificate carries it.
	reparsed, err := url.Parse(u.String())
	if err != nil {
		t.Fatalf("%s: %v", u, err)
	}
	again, err := IdentityFromCert(&x509.Certificate{URIs: []*url.URL{reparsed}})
	if err != nil || !sameIdentity(again, id) {
		t.Fatalf("re-issued %s gives %#v, %v; want %#v", u, again, err, id)
	}
}
