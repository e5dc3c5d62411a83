package tunnel

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"slices"
	"testing"
)

// FuzzIdentityFromCert fuzzes SAN strings into an unsigned certificate
// template, which is all IdentityFromCert reads.
func FuzzIdentityFromCert(f *testing.F) {
	f.Add("ztna://acme/agent/laptop", "", "", "laptop")
	f.Add("ztna://ACME/Gateway/gw1.dc", "host.example", "", "")
	f.Add("", "agent.echo-service.ztna", "agent.*.ztna", "test-agent")
	f.Add("", "connector.web.ztna", "agent.web.ztna", "c")
	f.Add("ztna://acme:1/agent/a?b#c", "agent.x.ztna", "", "x")
	f.Add("ztna://acme/agent/l%61ptop", "", "", "")
	f.Add("spiffe://acme/agent/a", "Agent..ZTNA", "connector.a.b.ztna", "")
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
			checkLegacyIdentity(t, id, cn)
			return
		}
		checkURIIdentity(t, id)
	})
}

// checkLegacyIdentity checks the invariants of an identity from DNS SANs.
func checkLegacyIdentity(t *testing.T, id Identity, cn string) {
	t.Helper()
	if id.Tenant != DefaultTenant || id.Name != cn || cn == "" || id.Role == RoleRelay {
		t.Fatalf("legacy identity %#v from CN %q", id, cn)
	}
	if id.Services != nil && (len(id.Services) == 0 || !slices.IsSorted(id.Services) ||
		len(slices.Compact(slices.Clone(id.Services))) != len(id.Services) || slices.Contains(id.Services, "")) {
		t.Fatalf("legacy services %q", id.Services)
	}
}

// checkURIIdentity checks that a URI identity is normalised and survives
// being issued again.
func checkURIIdentity(t *testing.T, id Identity) {
	t.Helper()
	if id.Services != nil || !validLabel(id.Tenant) || !validName(id.Name) {
		t.Fatalf("URI identity %#v", id)
	}
	u, err := identityURI(id.Tenant, id.Role, id.Name)
	if err != nil {
		t.Fatalf("identity %#v cannot be issued: %v", id, err)
	}
	again, err := IdentityFromCert(&x509.Certificate{URIs: []*url.URL{u}})
	if err != nil || !sameIdentity(again, id) {
		t.Fatalf("re-issued %s gives %#v, %v; want %#v", u, again, err, id)
	}
}
