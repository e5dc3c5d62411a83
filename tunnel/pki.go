package tunnel

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// Defaults of the certificate authority.
const (
	// DefaultLeafValidity is the lifetime of an issued certificate whose
	// IssueRequest.Validity is zero.
	DefaultLeafValidity = 90 * 24 * time.Hour
	// ClockSkew backdates certificates so that peers with a slightly slow
	// clock accept them at once: a certificate's NotBefore is its issue
	// time minus ClockSkew.
	ClockSkew = 5 * time.Minute
)

// PEM block types.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
	pemECKey       = "EC PRIVATE KEY"
	pemRSAKey      = "RSA PRIVATE KEY"
	// pemEncryptedKey is an encrypted PKCS #8 key (openssl -aes256 …).
	pemEncryptedKey = "ENCRYPTED PRIVATE KEY"
)

// CA is a certificate authority that issues ztgate identities. It uses
// ECDSA P-256 keys and crypto/x509 only. A CA is safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte
}

// IssueRequest describes a certificate to issue.
type IssueRequest struct {
	// Tenant, Role and Name form the URI SAN ztna://tenant/role/name (lower
	// cased). Name is also the common name.
	Tenant, Role, Name string
	// DNSNames and IPs are the server names of a relay or gateway listener:
	// the names clients dial, which they verify. DNS names are lowered and
	// lose a trailing dot; "*." may start one.
	DNSNames []string
	IPs      []netip.Addr
	// NotBefore defaults to now minus a few minutes of clock skew.
	NotBefore time.Time
	// Validity defaults to DefaultLeafValidity. For an expired certificate
	// set NotBefore far enough in the past.
	Validity time.Duration
	// LegacySANs are added as raw DNS SANs, e.g. "agent.web.ztna", to make
	// certificates of the original system (together with NoIdentity).
	LegacySANs []string
	// NoIdentity omits the URI SAN: with no DNSNames, IPs or LegacySANs the
	// certificate is SAN-less, for negative tests.
	NoIdentity bool
}

// NewCA creates a self-signed CA valid from now (minus clock skew) for
// validity.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("tunnel: new CA: validity %v is not positive", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tunnel: new CA: %w", err)
	}
	serial, err := newSerial(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tunnel: new CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("tunnel: new CA: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("tunnel: new CA: %w", err)
	}
	return newCA(pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}), keyPEM)
}

// LoadCA reads a CA certificate and its private key (PKCS #8, SEC 1 EC or
// PKCS #1 RSA, unencrypted) from PEM files. The certificate file may hold
// several certificates, as a bundle of an old and a new CA during a
// rotation: the one of the key is taken. Errors name the file at fault.
func LoadCA(certPEMFile, keyPEMFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certPEMFile)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPEMFile)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load CA: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load CA key %s: %w", keyPEMFile, err)
	}
	ca, err := caOfKey(certPEM, key, keyPEM)
	switch {
	case errors.Is(err, errKeyMismatch):
		return nil, fmt.Errorf("tunnel: load CA: the key %s %w %s", keyPEMFile, err, certPEMFile)
	case err != nil:
		return nil, fmt.Errorf("tunnel: load CA certificate %s: %w", certPEMFile, err)
	}
	return ca, nil
}

// errKeyMismatch: no certificate of the CA file is the key's.
var errKeyMismatch = errors.New("does not match")

// newCA checks that certPEM holds a CA certificate whose public key
// matches keyPEM.
func newCA(certPEM, keyPEM []byte) (*CA, error) {
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	return caOfKey(certPEM, key, keyPEM)
}

// caOfKey finds the certificate of key among the CERTIFICATE blocks of
// certPEM and checks that it is a CA's.
func caOfKey(certPEM []byte, key crypto.Signer, keyPEM []byte) (*CA, error) {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot be compared", key)
	}
	var certs int
	for rest := certPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != pemCertificate {
			continue
		}
		certs++
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		if !pub.Equal(cert.PublicKey) {
			continue
		}
		if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, errors.New("certificate is not a CA")
		}
		return &CA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: block.Bytes}), keyPEM: keyPEM}, nil
	}
	switch certs {
	case 0:
		return nil, errors.New("no CERTIFICATE PEM block")
	case 1:
		return nil, fmt.Errorf("%w the certificate", errKeyMismatch)
	}
	return nil, fmt.Errorf("%w any of the %d certificates of", errKeyMismatch, certs)
}

// CertPEM returns the CA certificate in PEM form: the ca file of peers.
func (ca *CA) CertPEM() []byte { return ca.certPEM }

// KeyPEM returns the CA private key in PEM form.
func (ca *CA) KeyPEM() []byte { return ca.keyPEM }

// Certificate returns the parsed CA certificate. The caller must not
// modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Issue creates a key pair and a certificate signed by the CA. The
// extended key usages are the role's: client authentication for an agent
// (which takes no DNS names or IPs), client and server authentication for
// a gateway and a relay; a NoIdentity certificate is a client, and a server
// too when it has DNS names or IPs. DNS names and IPs a client could not
// match are refused (serverNames).
func (ca *CA) Issue(req IssueRequest) (certPEM, keyPEM []byte, err error) {
	tmpl, err := leafTemplate(req)
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: issue: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: issue: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: issue: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: issue: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}), keyPEM, nil
}

// leafTemplate builds the certificate an IssueRequest describes.
func leafTemplate(req IssueRequest) (*x509.Certificate, error) {
	serial, err := newSerial(rand.Reader)
	if err != nil {
		return nil, err
	}
	notBefore, validity := req.NotBefore, req.Validity
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-ClockSkew)
	}
	switch {
	case validity == 0:
		validity = DefaultLeafValidity
	case validity < 0:
		return nil, fmt.Errorf("validity %v is negative", validity)
	}
	dnsNames, err := serverNames(req.DNSNames)
	if err != nil {
		return nil, err
	}
	ips, err := serverIPs(req.IPs)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Name},
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     append(dnsNames, req.LegacySANs...),
		IPAddresses:  ips,
	}
	server := len(dnsNames) > 0 || len(ips) > 0
	if req.NoIdentity {
		// A certificate of the original system: a client, and a server
		// when it has names.
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if server {
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		}
		return tmpl, nil
	}
	u, err := identityURI(req.Tenant, req.Role, req.Name)
	if err != nil {
		return nil, err
	}
	tmpl.URIs = []*url.URL{u}
	tmpl.Subject.CommonName = lowerASCII(req.Name)
	// An agent only ever dials: it is a client alone, and no server name
	// makes it a server. A gateway dials its relay and listens (its
	// [tunnel] listen, the direct path). A relay only listens, but keeps
	// client authentication: a relay's key presented as a client then
	// reaches the hello and is refused there by its role (wrong_role,
	// logged with its identity) rather than anonymously at the handshake.
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if lowerASCII(req.Role) != RoleAgent {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	} else if server {
		return nil, errors.New("an agent is only ever a client: its certificate takes no DNS names or IPs")
	}
	return tmpl, nil
}

// ValidateIdentity checks that tenant, role and name form an identity
// that IdentityFromCert reads back from an issued certificate exactly as
// given, but for ASCII upper case, which is lowered; the error says what
// is allowed.
func ValidateIdentity(tenant, role, name string) error {
	_, err := identityURI(tenant, role, name)
	return err
}

// serverNames checks DNS names for a certificate (NormalizeDNSName) and
// returns them normalised, each once.
func serverNames(names []string) ([]string, error) {
	var out []string
	for _, raw := range names {
		name, err := NormalizeDNSName(raw)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// NormalizeDNSName checks a server name for a certificate and returns it
// lower case, without a trailing dot. A name no client could match (an
// address, a port, a URL, a character no host name has) is refused: the
// certificate would be issued and every handshake fail.
func NormalizeDNSName(raw string) (string, error) {
	name := strings.TrimSuffix(lowerASCII(raw), ".")
	if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return "", fmt.Errorf("%q is an IP address, not a DNS name", raw)
	}
	if u, err := url.Parse(name); err == nil && u.Scheme != "" && u.Host != "" {
		return "", fmt.Errorf("%q is a URL: a certificate names the host alone (%s)", raw, u.Hostname())
	}
	if host, port, err := net.SplitHostPort(name); err == nil && host != "" && isDigits(port) {
		return "", fmt.Errorf("%q has a port: a certificate names the host alone (%s)", raw, host)
	}
	if !validServerName(name) {
		return "", fmt.Errorf("%q is not a DNS name: labels of a-z, 0-9, '-' and '_' joined by single dots, at most 253 in all; \"*.\" first for a wildcard", raw)
	}
	return name, nil
}

// isDigits reports whether s is one or more ASCII digits.
func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// validServerName reports whether name is a lower-case host name a TLS
// client matches: labels of 1 to 63 characters a-z, 0-9, '-' and '_' (which
// crypto/x509 matches too), at most 253 characters, the first label "*"
// for a wildcard over one more label at least.
func validServerName(name string) bool {
	if len(name) == 0 || len(name) > 253 {
		return false
	}
	rest, wildcard := strings.CutPrefix(name, "*.")
	if wildcard && !strings.Contains(rest, ".") {
		return false // "*.net"
	}
	for label := range strings.SplitSeq(rest, ".") {
		if len(label) == 0 || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

// serverIPs checks addresses for a certificate: no zone, which no
// certificate can carry; IPv4-mapped ones as IPv4; each once.
func serverIPs(ips []netip.Addr) ([]net.IP, error) {
	var out []net.IP
	for _, ip := range ips {
		switch {
		case !ip.IsValid():
			return nil, errors.New("invalid IP address")
		case ip.Zone() != "":
			return nil, fmt.Errorf("IP address %s has a zone: a certificate names the address alone", ip)
		}
		nip := net.IP(ip.Unmap().AsSlice())
		if !slices.ContainsFunc(out, nip.Equal) {
			out = append(out, nip)
		}
	}
	return out, nil
}

// newSerial draws a random serial number from 1 to 2^128-1: positive, as
// RFC 5280 wants, at most 17 octets encoded (it allows 20), and with
// about 128 bits of entropy.
func newSerial(random io.Reader) (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	n, err := rand.Int(random, limit.Sub(limit, big.NewInt(1)))
	if err != nil {
		return nil, err
	}
	return n.Add(n, big.NewInt(1)), nil
}

// encodeKey returns key as a PKCS #8 PEM block.
func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// parseKey decodes the first private key PEM block (PKCS #8, SEC 1 EC or
// PKCS #1 RSA). An encrypted key is refused saying so.
func parseKey(keyPEM []byte) (crypto.Signer, error) {
	for rest := keyPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		switch {
		case block == nil:
			return nil, errors.New("no private key PEM block")
		case block.Type == pemEncryptedKey || strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED"):
			return nil, errors.New("the private key is encrypted: ztgate reads it unencrypted " +
				"(`openssl pkey -in KEY -out PLAIN.key`, and keep that file 0600)")
		case block.Type == pemECKey:
			return x509.ParseECPrivateKey(block.Bytes)
		case block.Type == pemRSAKey:
			return x509.ParsePKCS1PrivateKey(block.Bytes)
		case block.Type == pemPrivateKey:
			key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			signer, ok := key.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("private key of type %T cannot sign", key)
			}
			return signer, nil
		}
	}
}
