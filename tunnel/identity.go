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
	// ErrMalformedIdentity: a ztna:// URI SAN that is not one ztgate's pki
	// issues (but for ASCII case), a legacy DNS SAN whose service is not
	// printable ASCII, or a legacy certificate whose common name is missing
	// or not printable ASCII without '/'.
	ErrMalformedIdentity = errors.New("tunnel: malformed ztgate identity")
)

// Identity is who a certificate speaks for.
type Identity struct {
	Tenant string // lower case; DefaultTenant for a legacy identity
	Role   string // RoleAgent, RoleGateway or RoleRelay
	Name   string // lower case from a URI SAN; the common name of a legacy certificate, as it is
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
//
// Only ASCII letters are lowered: the certificate may come from a CA other
// than ztgate's pki, and a Unicode lowering would read the Kelvin sign
// U+212A as 'k' — "ztna://acme/agent/%E2%84%AAate" as the agent "kate". A
// URI SAN is read with the checks that issue it (normalizeIdentity) and
// must be the issued form but for ASCII case: anything else (another
// character, a percent-encoding, an empty or extra segment, a user, a
// port, a query, a fragment) is refused with ErrMalformedIdentity, as are
// legacy SANs and common names with characters other than printable ASCII.
func IdentityFromCert(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, ErrNoIdentity
	}
	var uris []*url.URL
	for _, u := range cert.URIs {
		if u != nil && lowerASCII(u.Scheme) == IdentityScheme {
			uris = append(uris, u)
		}
	}
	roles, services, err := legacyRights(cert.DNSNames)
	switch {
	case err != nil:
		return Identity{}, err
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
	case !validLegacyName(cert.Subject.CommonName):
		return Identity{}, fmt.Errorf("%w: legacy common name %+q: only printable ASCII without '/' names an identity", ErrMalformedIdentity, cert.Subject.CommonName)
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
	malformed := func(err error) (Identity, error) {
		return Identity{}, fmt.Errorf("%w: URI SAN %q: %w", ErrMalformedIdentity, u.Redacted(), err)
	}
	if err := uriShape(u); err != nil {
		return malformed(err)
	}
	// "", role, name
	segments := strings.Split(u.Path, "/")
	if len(segments) != 3 || segments[0] != "" {
		return malformed(fmt.Errorf("has %d path segments, not 2: want ztna://<tenant>/<role>/<name>", len(segments)-1))
	}
	tenant, role, name, err := normalizeIdentity(u.Host, segments[1], segments[2])
	if err != nil {
		return malformed(err)
	}
	id := Identity{Tenant: tenant, Role: role, Name: name}
	// Whatever url.Parse decoded or left out, the SAN is the one issued
	// for this identity but for ASCII case, or it means something else.
	if issued := id.uri(); lowerASCII(u.String()) != issued.String() {
		return malformed(fmt.Errorf("is not the form ztgate issues, %s", issued))
	}
	return id, nil
}

// uriShape refuses what a ztna URI SAN has beyond ztna://host/path.
func uriShape(u *url.URL) error {
	switch {
	case u.Opaque != "":
		return errors.New("want ztna://<tenant>/<role>/<name>")
	case u.User != nil:
		return errors.New("has a user name")
	case !strings.HasPrefix(u.Host, "[") && strings.Contains(u.Host, ":"):
		return errors.New("has a port")
	case u.RawQuery != "" || u.ForceQuery:
		return errors.New("has a query")
	case u.Fragment != "" || u.RawFragment != "":
		return errors.New("has a fragment")
	case u.RawPath != "":
		return errors.New("percent-encodes what needs no encoding")
	}
	return nil
}

// identityURI builds ztna://tenant/role/name after normalising the parts
// (normalizeIdentity). The issuing side (ValidateIdentity, CA.Issue) and
// the reading side (identityFromURI) both use it.
func identityURI(tenant, role, name string) (*url.URL, error) {
	tenant, role, name, err := normalizeIdentity(tenant, role, name)
	if err != nil {
		return nil, err
	}
	return Identity{Tenant: tenant, Role: role, Name: name}.uri(), nil
}

// uri returns the URI SAN of a URI identity: ztna://tenant/role/name.
func (id Identity) uri() *url.URL {
	return &url.URL{Scheme: IdentityScheme, Host: id.Tenant, Path: "/" + id.Role + "/" + id.Name}
}

// normalizeIdentity is the one check of an identity's parts: it lowers
// them, ASCII letters only, and refuses any character other than a-z, 0-9,
// '-' (and '.' between the labels of a name). strings.ToLower would fold
// the Kelvin sign U+212A into 'k' and the dotted capital I U+0130 into
// 'i': another identity than the one written. The error says what is
// allowed.
func normalizeIdentity(tenant, role, name string) (string, string, string, error) {
	tenant, role, name = lowerASCII(tenant), lowerASCII(role), lowerASCII(name)
	switch {
	case !validLabel(tenant):
		return "", "", "", fmt.Errorf("invalid tenant %+q: 1 to 63 characters a-z, 0-9 and '-'", tenant)
	case !validRole(role):
		return "", "", "", fmt.Errorf("invalid role %+q: agent, gateway or relay", role)
	case !validName(name):
		return "", "", "", fmt.Errorf("invalid name %+q: labels of 1 to 63 characters a-z, 0-9 and '-', joined by single dots, at most 253 in all", name)
	}
	return tenant, role, name, nil
}

// lowerASCII maps A-Z to a-z and leaves every other byte alone.
func lowerASCII(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, s)
}

// legacyRights collects the roles (sorted, unique) and services (sorted,
// unique) that legacy DNS SANs grant. A legacy SAN whose service is not
// printable ASCII is refused (ErrMalformedIdentity): crypto/x509 reads
// DNS SANs as ASCII, but a space or a control character would make a
// service no configuration names.
func legacyRights(dnsNames []string) (roles, services []string, err error) {
	for _, dns := range dnsNames {
		role, service, ok := parseLegacySAN(dns)
		if !ok {
			continue
		}
		if !printableASCII(service, false) {
			return nil, nil, fmt.Errorf("%w: legacy DNS SAN %+q: the service is not printable ASCII without spaces", ErrMalformedIdentity, dns)
		}
		roles = append(roles, role)
		services = append(services, service)
	}
	slices.Sort(roles)
	slices.Sort(services)
	return slices.Compact(roles), slices.Compact(services), nil
}

// parseLegacySAN parses <role>.<service>.ztna, lowering ASCII letters only.
// The service is everything between the first dot and the suffix, so it may
// contain dots; "*" is the wildcard.
func parseLegacySAN(dns string) (role, service string, ok bool) {
	prefix, found := strings.CutSuffix(lowerASCII(dns), legacySuffix)
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

// validLegacyName reports whether a legacy certificate's common name may
// be an identity's name: printable ASCII, spaces included, but '/', which
// separates the parts of Identity.String. It is kept as it is, not lowered.
func validLegacyName(cn string) bool {
	return printableASCII(cn, true) && !strings.Contains(cn, "/")
}

// printableASCII reports whether s has only the bytes '!' to '~', and ' '
// with space.
func printableASCII(s string, space bool) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '!' || c > '~') && (c != ' ' || !space) {
			return false
		}
	}
	return true
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
