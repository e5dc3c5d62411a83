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
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"
)

// Defaults of the certificate authority.
const (
	// DefaultLeafValidity is the lifetime of an issued certificate whose
	// IssueRequest.Validity is zero.
	DefaultLeafValidity = 90 * 24 * time.Hour
	// clockSkew backdates certificates so that peers with a slightly slow
	// clock accept them at once.
	clockSkew = 5 * time.Minute
)

// PEM block types.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
	pemECKey       = "EC PRIVATE KEY"
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
	// DNSNames and IPs are the server names of a relay or gateway listener.
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
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("tunnel: new CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
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

// LoadCA reads a CA certificate and its private key (PKCS #8 or SEC 1 EC)
// from PEM files.
func LoadCA(certPEMFile, keyPEMFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certPEMFile)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPEMFile)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load CA: %w", err)
	}
	ca, err := newCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load CA %s: %w", certPEMFile, err)
	}
	return ca, nil
}

// newCA checks that certPEM is a CA certificate whose public key matches
// keyPEM.
func newCA(certPEM, keyPEM []byte) (*CA, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != pemCertificate {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("certificate is not a CA")
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("private key does not match the certificate")
	}
	return &CA{cert: cert, key: key, certPEM: certPEM, keyPEM: keyPEM}, nil
}

// CertPEM returns the CA certificate in PEM form: the ca file of peers.
func (ca *CA) CertPEM() []byte { return ca.certPEM }

// KeyPEM returns the CA private key in PEM form.
func (ca *CA) KeyPEM() []byte { return ca.keyPEM }

// Certificate returns the parsed CA certificate. The caller must not
// modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Issue creates a key pair and a certificate signed by the CA. Every leaf
// is a client certificate; a relay or gateway, or any request with DNS
// names or IPs, also gets server authentication.
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
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notBefore, validity := req.NotBefore, req.Validity
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-clockSkew)
	}
	switch {
	case validity == 0:
		validity = DefaultLeafValidity
	case validity < 0:
		return nil, fmt.Errorf("validity %v is negative", validity)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Name},
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     append(append([]string(nil), req.DNSNames...), req.LegacySANs...),
	}
	for _, ip := range req.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.Unmap().AsSlice()))
	}
	if !req.NoIdentity {
		u, err := identityURI(req.Tenant, req.Role, req.Name)
		if err != nil {
			return nil, err
		}
		tmpl.URIs = []*url.URL{u}
		tmpl.Subject.CommonName = strings.ToLower(req.Name)
	}
	role := strings.ToLower(req.Role)
	if role == RoleGateway || role == RoleRelay || len(req.DNSNames) > 0 || len(req.IPs) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	return tmpl, nil
}

// identityURI builds ztna://tenant/role/name after validating the parts.
func identityURI(tenant, role, name string) (*url.URL, error) {
	tenant, role, name = strings.ToLower(tenant), strings.ToLower(role), strings.ToLower(name)
	switch {
	case !validLabel(tenant):
		return nil, fmt.Errorf("invalid tenant %q", tenant)
	case !validRole(role):
		return nil, fmt.Errorf("invalid role %q", role)
	case !validName(name):
		return nil, fmt.Errorf("invalid name %q", name)
	}
	return &url.URL{Scheme: IdentityScheme, Host: tenant, Path: "/" + role + "/" + name}, nil
}

// newSerial draws a random 128-bit serial number.
func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// encodeKey returns key as a PKCS #8 PEM block.
func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// parseKey decodes the first private key PEM block (PKCS #8 or SEC 1 EC).
func parseKey(keyPEM []byte) (crypto.Signer, error) {
	for rest := keyPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		switch {
		case block == nil:
			return nil, errors.New("no private key PEM block")
		case block.Type == pemECKey:
			return x509.ParseECPrivateKey(block.Bytes)
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
