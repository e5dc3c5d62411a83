package tunnel

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// Roles of an identity.
const (
	RoleAgent   = "agent"
	RoleGateway = "gateway"
	RoleRelay   = "relay"
)

// IdentityScheme is the URI scheme of a ztgate identity SAN:
// ztna://<tenant>/<role>/<name>.
const IdentityScheme = "ztna"

// DefaultTenant is the tenant of every legacy (DNS SAN) identity.
const DefaultTenant = "default"

// Legacy DNS SAN convention of the original system: <role>.<service>.ztna.
const (
	legacySuffix    = ".ztna"
	legacyAgent     = "agent"
	legacyConnector = "connector" // ztgate's gateway role
	legacyWildcard  = "*"
)

// Errors of IdentityFromCert.
var (
	// ErrNoIdentity: the certificate has neither a ztna:// URI SAN nor a
	// legacy <role>.<service>.ztna DNS SAN.
	ErrNoIdentity = errors.New("tunnel: certificate carries no ztgate identity")
	// ErrConflictingIdentity: several ztna:// URI SANs, legacy SANs of both
	// roles, or a URI SAN together with legacy SANs.
	ErrConflictingIdentity = errors.New("tunnel: certificate carries conflicting identities")
	// ErrMalformedIdentity: a ztna:// URI SAN that does not follow the
	// layout, or a legacy certificate without a common name.
	ErrMalformedIdentity = errors.New("tunnel: malformed ztgate identity")
)

// Identity is who a certificate speaks for.
type Identity struct {
	Tenant string // lower case; DefaultTenant for a legacy identity
	Role   string // RoleAgent, RoleGateway or RoleRelay
	Name   string // lower case from a URI SAN; the common name of a legacy certificate
	// Services lists the services a legacy identity holds rights for,
	// sorted. Nil means every service of the tenant: a URI identity, or a
	// legacy one with the "*" wildcard.
	Services []string
	Legacy   bool // from DNS SANs of the original system
}

// MaxIdentitySessions bounds the sessions of one agent identity (tenant,
// role and name of its certificate) at a relay, and directly at a gateway.
// Each session holds tags or an ingress — at a gateway, one of its 65,534
// ingress addresses —, flow tables and signaling slots, so one
// certificate must not take them all (a certificate copied to many hosts,
// or a client that redials without closing). A relay closes the
// identity's oldest session beyond it, a gateway refuses the newest.
// It bounds too the gateways of one gateway identity at a relay, one
// session per hello name: a relay refuses a gateway of another name
// beyond it. Legacy and unverified identities, which a whole fleet may
// share, are not bounded.
const MaxIdentitySessions = 16

// String returns "tenant/role/name", e.g. "acme/agent/laptop".
func (id Identity) String() string { return id.Tenant + "/" + id.Role + "/" + id.Name }

// Permits reports whether the identity holds rights for service in its
// tenant. Service ids are compared exactly, as the original system did. The
// zero Identity permits nothing.
func (id Identity) Permits(service string) bool {
	if id.Tenant == "" {
		return false
	}
	return id.Services == nil || slices.Contains(id.Services, service)
}

// IdentityFromCert extracts the ztgate identity of a certificate. It reads
// exactly one ztna://<tenant>/<role>/<name> URI SAN, or else the legacy DNS
// SANs agent.<service>.ztna and connector.<service>.ztna (role gateway) of
// the original system, which grant per-service rights in DefaultTenant and
// need a common name. URI SANs of other schemes and other DNS SANs are
// ignored. It does not verify the certificate chain.
func IdentityFromCert(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, ErrNoIdentity
	}
	var uris []*url.URL
	for _, u := range cert.URIs {
		if u != nil && strings.EqualFold(u.Scheme, IdentityScheme) {
			uris = append(uris, u)
		}
	}
	roles, services := legacyRights(cert.DNSNames)
	switch {
	case len(uris) > 1:
		return Identity{}, fmt.Errorf("%w: %d ztna URI SANs", ErrConflictingIdentity, len(uris))
	case len(uris) == 1 && len(roles) > 0:
		return Identity{}, fmt.Errorf("%w: ztna URI SAN and legacy DNS SANs", ErrConflictingIdentity)
	case len(uris) == 1:
		return identityFromURI(uris[0])
	case len(roles) > 1:
		return Identity{}, fmt.Errorf("%w: legacy SANs of roles %v", ErrConflictingIdentity, roles)
	case len(roles) == 0:
		return Identity{}, ErrNoIdentity
	case cert.Subject.CommonName == "":
		return Identity{}, fmt.Errorf("%w: legacy certificate without common name", ErrMalformedIdentity)
	}
	if slices.Contains(services, legacyWildcard) {
		services = nil
	}
	return Identity{
		Tenant:   DefaultTenant,
		Role:     roles[0],
		Name:     cert.Subject.CommonName,
		Services: services,
		Legacy:   true,
	}, nil
}

// identityFromURI parses ztna://<tenant>/<role>/<name>. Anything beyond that
// layout (port, user, query, fragment, escapes, more segments) is refused
// rather than ignored: a certificate means exactly one thing.
func identityFromURI(u *url.URL) (Identity, error) {
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery ||
		u.Fragment != "" || u.RawFragment != "" || u.RawPath != "" {
		return Identity{}, fmt.Errorf("%w: %q", ErrMalformedIdentity, u.Redacted())
	}
	tenant := strings.ToLower(u.Host)
	role, name, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	role, name = strings.ToLower(role), strings.ToLower(name)
	if !strings.HasPrefix(u.Path, "/") || !validLabel(tenant) || !validRole(role) || !validName(name) {
		return Identity{}, fmt.Errorf("%w: %q", ErrMalformedIdentity, u.Redacted())
	}
	return Identity{Tenant: tenant, Role: role, Name: name}, nil
}

// legacyRights collects the roles (sorted, unique) and services (sorted,
// unique) that legacy DNS SANs grant.
func legacyRights(dnsNames []string) (roles, services []string) {
	for _, dns := range dnsNames {
		role, service, ok := parseLegacySAN(dns)
		if !ok {
			continue
		}
		roles = append(roles, role)
		services = append(services, service)
	}
	slices.Sort(roles)
	slices.Sort(services)
	return slices.Compact(roles), slices.Compact(services)
}

// parseLegacySAN parses <role>.<service>.ztna, case-insensitively. The
// service is everything between the first dot and the suffix, so it may
// contain dots; "*" is the wildcard.
func parseLegacySAN(dns string) (role, service string, ok bool) {
	prefix, found := strings.CutSuffix(strings.ToLower(dns), legacySuffix)
	if !found {
		return "", "", false
	}
	role, service, found = strings.Cut(prefix, ".")
	if !found || service == "" {
		return "", "", false
	}
	switch role {
	case legacyAgent:
		return RoleAgent, service, true
	case legacyConnector:
		return RoleGateway, service, true
	}
	return "", "", false
}

// validRole reports whether role is one of the identity roles.
func validRole(role string) bool {
	return role == RoleAgent || role == RoleGateway || role == RoleRelay
}

// validLabel reports whether s is a lower-case DNS-label-like tenant:
// 1 to 63 characters of a-z, 0-9 and '-'.
func validLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// validName reports whether s is a lower-case DNS-name-like identity name:
// at most 253 characters, labels as validLabel joined by single dots.
func validName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !validLabel(label) {
			return false
		}
	}
	return true
}
