package tunnel

// Reasons a peer's certificate is refused: the label values of a refusal
// counter, fixed so that the metric's cardinality stays bounded.
const (
	ReasonNoCertificate    = "no_certificate"    // the client sent none
	ReasonUnknownAuthority = "unknown_authority" // it does not chain to the CA
	ReasonExpired          = "expired"           // past NotAfter (itself or a CA)
	ReasonNotYetValid      = "not_yet_valid"     // before NotBefore (itself or a CA)
	ReasonNoIdentity       = "no_identity"       // no usable ztgate identity (see IdentityFromCert)
	ReasonBadCertificate   = "bad_certificate"   // anything else: key usage, server name, ...
	ReasonWrongRole        = "wrong_role"        // a server whose identity has another role than the client needs
)

// AuthReasons returns every refusal reason, e.g. to initialise counters.
func AuthReasons() []string {
	return []string{
		ReasonNoCertificate, ReasonUnknownAuthority, ReasonExpired,
		ReasonNotYetValid, ReasonNoIdentity, ReasonBadCertificate, ReasonWrongRole,
	}
}

// AuthError is a refused TLS peer. A server's handshake returns it from
// VerifyConnection (crypto/tls passes it through unwrapped; with QUIC the
// server never sees failed handshakes, hence CredentialsConfig.OnReject).
type AuthError struct {
	Reason string // one of the Reason* constants
	Err    error  // the detail, e.g. an x509 verification error
}

// Error implements error.
func (e *AuthError) Error() string {
	if e.Err == nil {
		return "tunnel: peer certificate refused: " + e.Reason
	}
	return "tunnel: peer certificate refused: " + e.Reason + ": " + e.Err.Error()
}

// Unwrap returns the detail.
func (e *AuthError) Unwrap() error { return e.Err }
