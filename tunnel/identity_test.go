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
