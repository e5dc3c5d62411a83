package tunnel

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// certWith builds an unsigned certificate carrying the given SANs: enough
// for IdentityFromCert, which reads only parsed fields.
func certWith(cn string, uris []string, dns ...string) *x509.Certificate {
	c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			panic(err)
		}
		c.URIs = append(c.URIs, u)
	}
	return c
}

func TestIdentityFromCert(t *testing.T) {
	tests := []struct {
		name string
		cert *x509.Certificate
		want Identity
		err  error
	}{
		{"uri agent", certWith("laptop", []string{"ztna://acme/agent/laptop"}),
			Identity{Tenant: "acme", Role: RoleAgent, Name: "laptop"}, nil},
		{"uri gateway with dotted name", certWith("", []string{"ztna://acme/gateway/gw1.dc-2"}),
			Identity{Tenant: "acme", Role: RoleGateway, Name: "gw1.dc-2"}, nil},
		{"uri relay", certWith("", []string{"ztna://ops/relay/relay1"}),
			Identity{Tenant: "ops", Role: RoleRelay, Name: "relay1"}, nil},
		{"uri upper case is lowered", certWith("", []string{"ZTNA://ACME/Agent/LapTop"}),
			Identity{Tenant: "acme", Role: RoleAgent, Name: "laptop"}, nil},
		{"uri among other SANs", certWith("", []string{"spiffe://acme/x", "ztna://acme/agent/a"}, "host.example"),
			Identity{Tenant: "acme", Role: RoleAgent, Name: "a"}, nil},
		{"legacy agent", certWith("test-agent", nil, "agent.echo-service.ztna"),
			Identity{Tenant: DefaultTenant, Role: RoleAgent, Name: "test-agent", Services: []string{"echo-service"}, Legacy: true}, nil},
		{"legacy connector is a gateway", certWith("test-connector", nil, "connector.web-app.ztna"),
			Identity{Tenant: DefaultTenant, Role: RoleGateway, Name: "test-connector", Services: []string{"web-app"}, Legacy: true}, nil},
		{"legacy several services, case folded, deduplicated", certWith("a", nil, "agent.svc-b.ztna", "Agent.SVC-A.ZTNA", "agent.svc-b.ztna", "www.example.com"),
			Identity{Tenant: DefaultTenant, Role: RoleAgent, Name: "a", Services: []string{"svc-a", "svc-b"}, Legacy: true}, nil},
		{"legacy dotted service", certWith("a", nil, "agent.db.eu.ztna"),
			Identity{Tenant: DefaultTenant, Role: RoleAgent, Name: "a", Services: []string{"db.eu"}, Legacy: true}, nil},
		{"legacy wildcard", certWith("w", nil, "agent.*.ztna", "agent.web.ztna"),
			Identity{Tenant: DefaultTenant, Role: RoleAgent, Name: "w", Legacy: true}, nil},
		{"legacy unknown role ignored", certWith("a", nil, "admin.web.ztna", "connector.web.ztna"),
			Identity{Tenant: DefaultTenant, Role: RoleGateway, Name: "a", Services: []string{"web"}, Legacy: true}, nil},
		{"nil certificate", nil, Identity{}, ErrNoIdentity},
		{"SAN-less", certWith("legacy-client", nil), Identity{}, ErrNoIdentity},
		{"only foreign SANs", certWith("x", []string{"spiffe://acme/agent/x"}, "www.example.com"), Identity{}, ErrNoIdentity},
		{"legacy empty service", certWith("x", nil, "agent..ztna"), Identity{}, ErrNoIdentity},
		{"legacy without role", certWith("x", nil, "myservice.ztna"), Identity{}, ErrNoIdentity},
		{"legacy without CN", certWith("", nil, "agent.web.ztna"), Identity{}, ErrMalformedIdentity},
		{"legacy mixed roles", certWith("x", nil, "agent.web.ztna", "connector.web.ztna"), Identity{}, ErrConflictingIdentity},
		{"two uris", certWith("", []string{"ztna://acme/agent/a", "ztna://acme/agent/a"}), Identity{}, ErrConflictingIdentity},
		{"uri and legacy", certWith("a", []string{"ztna://acme/agent/a"}, "agent.web.ztna"), Identity{}, ErrConflictingIdentity},
		{"uri unknown role", certWith("", []string{"ztna://acme/admin/a"}), Identity{}, ErrMalformedIdentity},
		{"uri missing name", certWith("", []string{"ztna://acme/agent"}), Identity{}, ErrMalformedIdentity},
		{"uri empty name", certWith("", []string{"ztna://acme/agent/"}), Identity{}, ErrMalformedIdentity},
		{"uri extra segment", certWith("", []string{"ztna://acme/agent/a/b"}), Identity{}, ErrMalformedIdentity},
		{"uri empty tenant", certWith("", []string{"ztna:///agent/a"}), Identity{}, ErrMalformedIdentity},
		{"uri port", certWith("", []string{"ztna://acme:443/agent/a"}), Identity{}, ErrMalformedIdentity},
		{"uri user", certWith("", []string{"ztna://root@acme/agent/a"}), Identity{}, ErrMalformedIdentity},
		{"uri query", certWith("", []string{"ztna://acme/agent/a?x=1"}), Identity{}, ErrMalformedIdentity},
		{"uri fragment", certWith("", []string{"ztna://acme/agent/a#x"}), Identity{}, ErrMalformedIdentity},
		{"uri escaped name", certWith("", []string{"ztna://acme/agent/l%61ptop"}), Identity{}, ErrMalformedIdentity},
		{"uri opaque", certWith("", []string{"ztna:acme/agent/a"}), Identity{}, ErrMalformedIdentity},
		{"uri underscore", certWith("", []string{"ztna://acme/agent/my_laptop"}), Identity{}, ErrMalformedIdentity},
		{"uri dotted tenant", certWith("", []string{"ztna://acme.corp/agent/a"}), Identity{}, ErrMalformedIdentity},
		{"uri empty label in name", certWith("", []string{"ztna://acme/agent/a..b"}), Identity{}, ErrMalformedIdentity},
		{"uri long tenant", certWith("", []string{"ztna://" + strings.Repeat("t", 64) + "/agent/a"}), Identity{}, ErrMalformedIdentity},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := IdentityFromCert(tc.cert)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if !sameIdentity(got, tc.want) {
				t.Fatalf("identity = %#v, want %#v", got, tc.want)
			}
		})
	}
}

// sameIdentity compares identities, keeping nil and empty Services apart:
// nil means every service.
func sameIdentity(a, b Identity) bool {
	return a.Tenant == b.Tenant && a.Role == b.Role && a.Name == b.Name && a.Legacy == b.Legacy &&
		(a.Services == nil) == (b.Services == nil) && slices.Equal(a.Services, b.Services)
}

func TestIdentityPermits(t *testing.T) {
	uri := Identity{Tenant: "acme", Role: RoleAgent, Name: "a"}
	legacy := Identity{Tenant: DefaultTenant, Role: RoleAgent, Name: "a", Services: []string{"db.eu", "web"}, Legacy: true}
	tests := []struct {
		name    string
		id      Identity
		service string
		want    bool
	}{
		{"uri identity, any service", uri, "anything", true},
		{"legacy listed", legacy, "web", true},
		{"legacy dotted", legacy, "db.eu", true},
		{"legacy not listed", legacy, "mail", false},
		{"legacy compares exactly", legacy, "WEB", false},
		{"legacy no prefix match", legacy, "we", false},
		{"zero identity", Identity{}, "web", false},
		{"empty rights", Identity{Tenant: "t", Services: []string{}}, "web", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.id.Permits(tc.service); got != tc.want {
				t.Errorf("Permits(%q) = %v, want %v", tc.service, got, tc.want)
			}
		})
	}
}

func TestIdentityString(t *testing.T) {
	id := Identity{Tenant: "acme", Role: RoleAgent, Name: "laptop"}
	if got := id.String(); got != "acme/agent/laptop" {
		t.Fatalf("String() = %q", got)
	}
}

// TestIdentityFromCertRefusesFolding: a certificate from a CA other than
// ztgate's own (an enterprise CA, openssl) may carry characters that a
// Unicode lowering folds into ASCII — the Kelvin sign U+212A into 'k' — or
// percent-encodings, ports, user names and the like. Each is refused, with
// ErrMalformedIdentity and a message saying what is wrong, rather than read
// as another, possibly existing, tenant or name.
func TestIdentityFromCertRefusesFolding(t *testing.T) {
	tests := []struct {
		name string
		cert *x509.Certificate
		msg  string // in the error
	}{
		{"Kelvin sign in tenant", certWith("", []string{"ztna://%E2%84%AAcme/agent/a"}), "invalid tenant"},
		{"Kelvin sign in name", certWith("", []string{"ztna://acme/agent/%E2%84%AAate"}), "invalid name"},
		{"Kelvin sign in dotted name", certWith("", []string{"ztna://acme/gateway/gw1.%E2%84%AA"}), "invalid name"},
		{"long s in name", certWith("", []string{"ztna://acme/agent/la%C5%BFt"}), "invalid name"},
		{"dotted capital I in tenant", certWith("", []string{"ztna://%C4%B0nc/agent/a"}), "invalid tenant"},
		{"lower-case escape of Kelvin", certWith("", []string{"ztna://acme/agent/%e2%84%aa"}), "percent"},
		{"escaped slash", certWith("", []string{"ztna://acme/agent/a%2Fb"}), "percent"},
		{"escaped letter", certWith("", []string{"ztna://acme/agent/l%61ptop"}), "percent"},
		{"escaped percent", certWith("", []string{"ztna://acme/agent/%2561"}), "invalid name"},
		{"escaped percent in tenant", certWith("", []string{"ztna://%25acme/agent/a"}), "invalid tenant"},
		{"NUL", certWith("", []string{"ztna://acme/agent/a%00b"}), "invalid name"},
		{"space", certWith("", []string{"ztna://acme/agent/a%20b"}), "invalid name"},
		{"empty port", certWith("", []string{"ztna://acme:/agent/a"}), "port"},
		{"port", certWith("", []string{"ztna://acme:443/agent/a"}), "port"},
		{"empty user", certWith("", []string{"ztna://@acme/agent/a"}), "user"},
		{"user and password", certWith("", []string{"ztna://u:p@acme/agent/a"}), "user"},
		{"empty query", certWith("", []string{"ztna://acme/agent/a?"}), "query"},
		{"query", certWith("", []string{"ztna://acme/agent/a?tenant=ops"}), "query"},
		{"fragment", certWith("", []string{"ztna://acme/agent/a#b"}), "fragment"},
		{"extra segment", certWith("", []string{"ztna://acme/agent/a/b"}), "segments"},
		{"trailing slash", certWith("", []string{"ztna://acme/agent/a/"}), "segments"},
		{"empty role", certWith("", []string{"ztna://acme//a"}), "invalid role"},
		{"empty segment before name", certWith("", []string{"ztna://acme/agent//a"}), "segments"},
		{"no path", certWith("", []string{"ztna://acme"}), "segments"},
		{"IPv6 host", certWith("", []string{"ztna://[::1]/agent/a"}), "invalid tenant"},
		{"opaque", certWith("", []string{"ztna:acme/agent/a"}), "ztna://<tenant>/<role>/<name>"},
		{"legacy Kelvin sign in service", certWith("a", nil, "agent.\u212Aweb.ztna"), "legacy DNS SAN"},
		{"legacy NUL in service", certWith("a", nil, "agent.web\x00.ztna"), "legacy DNS SAN"},
		{"legacy space in service", certWith("a", nil, "agent.my web.ztna"), "legacy DNS SAN"},
		{"legacy Kelvin sign in common name", certWith("\u212Aate", nil, "agent.web.ztna"), "common name"},
		{"legacy NUL in common name", certWith("a\x00b", nil, "agent.web.ztna"), "common name"},
		{"legacy slash in common name", certWith("a/b", nil, "agent.web.ztna"), "common name"},
		{"legacy newline in common name", certWith("a\nb", nil, "agent.web.ztna"), "common name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := IdentityFromCert(tc.cert)
			if !errors.Is(err, ErrMalformedIdentity) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("IdentityFromCert = %#v, %v; want %v saying %q", got, err, ErrMalformedIdentity, tc.msg)
			}
			if !sameIdentity(got, Identity{}) {
				t.Fatalf("refused, yet identity %#v", got)
			}
		})
	}
}

// TestIdentityFromCertASCIIOnly: what is accepted is lowered in ASCII only,
// and legacy common names are kept as they are.
func TestIdentityFromCertASCIIOnly(t *testing.T) {
	tests := []struct {
		name string
		cert *x509.Certificate
		want Identity
	}{
		{"upper-case URI", certWith("", []string{"ZTNA://KCME/AGENT/KATE.S"}),
			Identity{Tenant: "kcme", Role: RoleAgent, Name: "kate.s"}},
		{"legacy upper-case SAN", certWith("Test Agent 1", nil, "AGENT.WEB.ZTNA"),
			Identity{Tenant: DefaultTenant, Role: RoleAgent, Name: "Test Agent 1", Services: []string{"web"}, Legacy: true}},
		{"legacy service of printable ASCII", certWith("a", nil, "agent.web_1~x.ztna"),
			Identity{Tenant: DefaultTenant, Role: RoleAgent, Name: "a", Services: []string{"web_1~x"}, Legacy: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := IdentityFromCert(tc.cert)
			if err != nil || !sameIdentity(got, tc.want) {
				t.Fatalf("IdentityFromCert = %#v, %v; want %#v", got, err, tc.want)
			}
		})
	}
}

// TestIdentityFromForeignCertificate signs certificates as a CA other than
// ztgate's pki would (an enterprise CA, openssl), with SANs and common
// names that fold into another identity under Unicode lowering, and reads
// them back through crypto/x509 as a handshake does: each is refused,
// whether by crypto/x509 or by IdentityFromCert, never read as the folded
// identity.
func TestIdentityFromForeignCertificate(t *testing.T) {
	ca := mustCA(t, "foreign")
	tests := []struct {
		name string
		uri  string
		cn   string
		dns  []string
	}{
		{name: "Kelvin sign in name", uri: "ztna://acme/agent/%E2%84%AAate"},
		{name: "Kelvin sign in tenant", uri: "ztna://%E2%84%AAcme/agent/a"},
		{name: "dotted capital I in name", uri: "ztna://acme/relay/%C4%B0nfra"},
		{name: "legacy Kelvin sign in common name", cn: "\u212Aate", dns: []string{"agent.web.ztna"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(int64(i + 1)),
				Subject:      pkix.Name{CommonName: tc.cn},
				NotBefore:    time.Now().Add(-time.Hour),
				NotAfter:     time.Now().Add(time.Hour),
				DNSNames:     tc.dns,
			}
			if tc.uri != "" {
				u, err := url.Parse(tc.uri)
				if err != nil {
					t.Fatal(err)
				}
				tmpl.URIs = []*url.URL{u}
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate(), ca.cert.PublicKey, ca.key)
			if err != nil {
				t.Fatal(err)
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return // refused by crypto/x509 already
			}
			if id, err := IdentityFromCert(c); !errors.Is(err, ErrMalformedIdentity) {
				t.Fatalf("%q %q read as %#v, %v; want %v", tc.uri, tc.cn, id, err, ErrMalformedIdentity)
			}
		})
	}
}
