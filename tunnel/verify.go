package tunnel

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Bounds of the path search that classifies a failed verification, so that
// a peer sending many certificates cannot make the server work hard.
const (
	maxPathDepth       = 4
	maxSignatureChecks = 32
)

// trust is one loaded CA file: the pool for crypto/x509 and the
// certificates themselves for classifying failures.
type trust struct {
	pool  *x509.CertPool
	roots []*x509.Certificate
}

// parseTrust parses every CERTIFICATE block of a CA file; one bad block,
// or one cut short, is an error rather than silently skipped.
func parseTrust(caPEM []byte) (*trust, error) {
	if err := pemWhole(caPEM); err != nil {
		return nil, err
	}
	t := &trust{pool: x509.NewCertPool()}
	for rest := caPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != pemCertificate {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		t.pool.AddCert(cert)
		t.roots = append(t.roots, cert)
	}
	if len(t.roots) == 0 {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return t, nil
}

// peerWarning warns about a CA file (caFile, parsed into t) that holds no
// CA's certificate but ztgate peers' (CertCAIsPeer); nil when it holds a
// CA's, or no certificate with a ztgate identity.
func (t *trust) peerWarning(caFile string) *CertWarning {
	var peers []string
	for _, c := range t.roots {
		if c.IsCA {
			return nil
		}
		if id, err := IdentityFromCert(c); err == nil {
			peers = append(peers, id.String())
		}
	}
	if len(peers) == 0 {
		return nil
	}
	return &CertWarning{Msg: CertCAIsPeer, CA: caFile, Peers: peers}
}

// pemWhole checks that every PEM block data begins is whole: pem.Decode
// skips a block cut short (a file read while a tool writes it in place, a
// bundle or chain whose last certificate has not landed yet) and what
// follows it up to the next whole block, so the blocks it did return
// would load without the lost ones, and peers of a CA dropped that way
// would be refused with no word of why. A block cut within its first line
// leaves a line of a PEM marker's dashes (one or more) after the last
// whole block; text there that is no marker (a bundle's comments) is
// fine.
func pemWhole(data []byte) error {
	begun := bytes.Count(data, []byte("-----BEGIN"))
	whole := 0
	rest := data
	for {
		block, after := pem.Decode(rest)
		if block == nil {
			break
		}
		whole++
		rest = after
	}
	cut := false
	for line := range bytes.Lines(rest) {
		cut = cut || bytes.HasPrefix(bytes.TrimSpace(line), []byte("-"))
	}
	if whole < begun || cut {
		return fmt.Errorf("PEM block %d cut short or malformed (still being written?)", whole+1)
	}
	return nil
}

// verifyChain checks that certs[0] chains to the trusted roots through
// certs[1:] at now, for usage and, when dnsName is not empty, for that
// server name. A failure is classified by looking for a chain of
// signatures alone: none means unknown_authority whatever the dates (a
// foreign certificate's dates are irrelevant); otherwise a certificate of
// that chain outside its validity means expired or not_yet_valid; anything
// else is bad_certificate.
func (t *trust) verifyChain(certs []*x509.Certificate, now time.Time, usage x509.ExtKeyUsage, dnsName string) *AuthError {
	opts := x509.VerifyOptions{
		Roots:         t.pool,
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		DNSName:       dnsName,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := certs[0].Verify(opts)
	if err == nil {
		return nil
	}
	budget := maxSignatureChecks
	path := t.signaturePath(certs[:1], certs[1:], &budget)
	if path == nil {
		return &AuthError{Reason: ReasonUnknownAuthority, Err: err}
	}
	for _, c := range path {
		switch {
		case now.Before(c.NotBefore):
			return &AuthError{Reason: ReasonNotYetValid, Err: err}
		case now.After(c.NotAfter):
			return &AuthError{Reason: ReasonExpired, Err: err}
		}
	}
	var he x509.HostnameError
	if errors.As(err, &he) {
		// The commonest mistake of a first setup: the relay's certificate
		// issued for another name than its clients dial.
		flag := "-dns"
		if _, perr := netip.ParseAddr(he.Host); perr == nil {
			flag = "-ip"
		}
		err = fmt.Errorf("%w: dial a name the certificate holds (server_name), or issue it for this one (ztgate pki issue %s %s)", err, flag, he.Host)
	}
	return &AuthError{Reason: ReasonBadCertificate, Err: err}
}

// signaturePath extends path (leaf first) through intermediates to a root
// by signatures only, ignoring dates, and returns it with the root last;
// nil when there is none within the bounds.
func (t *trust) signaturePath(path, intermediates []*x509.Certificate, budget *int) []*x509.Certificate {
	last := path[len(path)-1]
	for _, r := range t.roots {
		if !spend(budget) {
			return nil
		}
		if last.CheckSignatureFrom(r) == nil {
			return append(slices.Clip(path), r)
		}
	}
	if len(path) >= maxPathDepth {
		return nil
	}
	for _, ic := range intermediates {
		if slices.Contains(path, ic) {
			continue
		}
		if !spend(budget) {
			return nil
		}
		if last.CheckSignatureFrom(ic) == nil {
			if p := t.signaturePath(append(slices.Clip(path), ic), intermediates, budget); p != nil {
				return p
			}
		}
	}
	return nil
}

// spend takes one signature check from budget and reports whether it was
// available.
func spend(budget *int) bool {
	*budget--
	return *budget >= 0
}
