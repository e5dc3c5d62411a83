package tunnel

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// CredentialsConfig names the files of a peer's TLS credentials.
type CredentialsConfig struct {
	CertFile string // PEM certificate (chain) of this peer
	KeyFile  string // PEM private key of CertFile
	CAFile   string // PEM CA certificate(s) that peers must chain to; may be "" when Insecure
	// Insecure accepts clients with any certificate or none (a development
	// switch the caller logs loudly). Their identities are then unverified.
	// Servers are verified all the same when CAFile is set; a client with
	// neither CertFile nor KeyFile presents no certificate.
	Insecure bool
	// Role, when set, is the role this peer's own certificate must carry
	// (RoleRelay, RoleGateway, RoleAgent): a certificate of another role,
	// or a CA's, is refused at load, as every peer would refuse it at the
	// handshake. One without a ztgate identity is only warned about: the
	// original system's peers may not look.
	Role string
	// Now is the clock for validity checks; nil means time.Now.
	Now func() time.Time
	// OnReject, if set, is called for every refused peer, e.g. to count
	// refusals by reason (QUIC servers never see failed handshakes). It is
	// called from handshakes, possibly concurrently, and must not block.
	// remote is nil when the transport does not tell (always on a client).
	OnReject func(remote net.Addr, err *AuthError)
}

// Credentials hold this peer's certificate and the CA, reloadable while
// sessions run: TLS configurations from ServerConfig and ClientConfig read
// the current ones at every handshake. Safe for concurrent use.
type Credentials struct {
	cfg    CredentialsConfig
	log    *slog.Logger
	mu     sync.Mutex // serialises Reload
	active atomic.Pointer[credState]
}

// credState is one consistent set of loaded credentials.
type credState struct {
	cert  *tls.Certificate // Leaf is set
	trust *trust
}

// NewCredentials loads the files named by cfg.
func NewCredentials(cfg CredentialsConfig, log *slog.Logger) (*Credentials, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Credentials{cfg: cfg, log: log}
	st, err := c.load()
	if err != nil {
		return nil, err
	}
	c.active.Store(st)
	return c, nil
}

// Reload re-reads the certificate, key and CA files and switches to them
// for new handshakes; live sessions are not touched. On error the current
// credentials stay in use. An editor or tool replacing the files one by one
// may make a reload fail (key not matching the certificate): retry later.
func (c *Credentials) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.load()
	if err != nil {
		return err
	}
	c.active.Store(st)
	if leaf := st.cert.Leaf; leaf != nil {
		c.log.Info("tunnel credentials reloaded", "subject", leaf.Subject.String(), "not_after", leaf.NotAfter)
	} else {
		c.log.Info("tunnel credentials reloaded: no certificate (insecure)")
	}
	return nil
}

// Insecure reports whether unauthenticated clients are accepted.
func (c *Credentials) Insecure() bool { return c.cfg.Insecure }

// Certificate returns the current leaf certificate, e.g. to export its
// expiry. The caller must not modify it.
func (c *Credentials) Certificate() *x509.Certificate { return c.active.Load().cert.Leaf }

// load reads and checks the three files. Insecure client credentials may
// have no certificate (neither file set): the client then presents none.
func (c *Credentials) load() (*credState, error) {
	t, err := c.loadTrust()
	if err != nil {
		return nil, err
	}
	if c.cfg.Insecure && c.cfg.CertFile == "" && c.cfg.KeyFile == "" {
		return &credState{cert: &tls.Certificate{}, trust: t}, nil
	}
	pair, err := tls.LoadX509KeyPair(c.cfg.CertFile, c.cfg.KeyFile)
	if err != nil {
		// tls names neither file: "private key does not match public key"
		return nil, fmt.Errorf("tunnel: load credentials: certificate %s, key %s: %w", c.cfg.CertFile, c.cfg.KeyFile, err)
	}
	chain, err := parseChain(pair.Certificate)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load credentials: %s: %w", c.cfg.CertFile, err)
	}
	pair.Leaf = chain[0]
	if err := c.checkRole(chain, t); err != nil {
		return nil, err
	}
	if ae := t.verifyChain(chain, c.now(), x509.ExtKeyUsageAny, ""); ae != nil && len(t.roots) > 0 {
		c.log.Warn("tunnel certificate does not verify against the CA", "cert", c.cfg.CertFile,
			"reason", ae.Reason, "err", ae.Err)
	}
	return &credState{cert: &pair, trust: t}, nil
}

// checkRole checks that chain's leaf, this peer's certificate, is one of
// cfg.Role, and not a CA's of t (one of its CAs, or one they signed).
// Another certificate that says CA:TRUE (a self-signed one, as `openssl
// req -x509` makes them) is judged by its identity: without one it is only
// warned about, as insecure peers without a CA take it.
func (c *Credentials) checkRole(chain []*x509.Certificate, t *trust) error {
	if c.cfg.Role == "" {
		return nil
	}
	leaf := chain[0]
	issue := fmt.Sprintf("issue one with `ztgate pki issue -role %s`", c.cfg.Role)
	budget := maxSignatureChecks
	if leaf.IsCA && t.signaturePath(chain[:1], chain[1:], &budget) != nil {
		return fmt.Errorf("tunnel: load credentials: %s is a CA's certificate, not %s's: %s", c.cfg.CertFile, aRole(c.cfg.Role), issue)
	}
	id, err := IdentityFromCert(leaf)
	switch {
	case errors.Is(err, ErrNoIdentity):
		c.log.Warn("tunnel certificate carries no ztgate identity: ztgate peers will refuse it", "cert", c.cfg.CertFile, "want_role", c.cfg.Role)
	case err != nil:
		return fmt.Errorf("tunnel: load credentials: %s: %w", c.cfg.CertFile, err)
	case id.Role != c.cfg.Role:
		return fmt.Errorf("tunnel: load credentials: %s is the certificate of %s, not of %s: %s", c.cfg.CertFile, id, aRole(c.cfg.Role), issue)
	}
	return nil
}

// aRole is role with its article: "a relay", "an agent".
func aRole(role string) string {
	if role == RoleAgent {
		return "an " + role
	}
	return "a " + role
}

// loadTrust reads the CA file. Insecure credentials may have none: then
// no client identity verifies, and servers are not verified at all.
func (c *Credentials) loadTrust() (*trust, error) {
	if c.cfg.CAFile == "" && c.cfg.Insecure {
		return &trust{pool: x509.NewCertPool()}, nil
	}
	caPEM, err := os.ReadFile(c.cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load credentials: %w", err)
	}
	t, err := parseTrust(caPEM)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load credentials: CA file %s: %w", c.cfg.CAFile, err)
	}
	return t, nil
}

// parseChain parses the DER certificates of a key pair, leaf first.
func parseChain(ders [][]byte) ([]*x509.Certificate, error) {
	chain := make([]*x509.Certificate, 0, len(ders))
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		chain = append(chain, c)
	}
	return chain, nil
}

// now returns the current time of the configured clock.
func (c *Credentials) now() time.Time {
	if c.cfg.Now != nil {
		return c.cfg.Now()
	}
	return time.Now()
}

// refuse reports ae to OnReject and returns it as an error (nil if nil).
func (c *Credentials) refuse(remote net.Addr, ae *AuthError) error {
	if ae == nil {
		return nil
	}
	if c.cfg.OnReject != nil {
		c.cfg.OnReject(remote, ae)
	}
	return ae
}

// ServerConfig returns a TLS 1.3 server configuration offering alpn. Each
// handshake uses the credentials current at its start. Clients must present
// a certificate that chains to the CA, is within its validity and carries a
// ztgate identity (IdentityFromCert), unless the credentials are Insecure.
// A refusal fails the handshake with an *AuthError.
func (c *Credentials) ServerConfig(alpn ...string) *tls.Config {
	alpn = append([]string(nil), alpn...)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: alpn,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.active.Load().cert, nil
		},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			return c.serverConfigFor(c.active.Load(), remoteAddr(hello), alpn), nil
		},
	}
}

// serverConfigFor builds the configuration of one server handshake from
// one snapshot of the credentials.
func (c *Credentials) serverConfigFor(st *credState, remote net.Addr, alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   alpn,
		Certificates: []tls.Certificate{*st.cert},
		// Request, not require: VerifyConnection then sees a missing
		// certificate and can report it as no_certificate.
		ClientAuth: tls.RequestClientCert,
		ClientCAs:  st.trust.pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return c.refuse(remote, c.verifyClient(st, cs))
		},
	}
}

// verifyClient applies the server's policy to a client's certificates. It
// also runs on resumed sessions, so a reloaded CA applies to them too.
func (c *Credentials) verifyClient(st *credState, cs tls.ConnectionState) *AuthError {
	if c.cfg.Insecure {
		return nil
	}
	if len(cs.PeerCertificates) == 0 {
		return &AuthError{Reason: ReasonNoCertificate}
	}
	if ae := st.trust.verifyChain(cs.PeerCertificates, c.now(), x509.ExtKeyUsageClientAuth, ""); ae != nil {
		return ae
	}
	if _, err := IdentityFromCert(cs.PeerCertificates[0]); err != nil {
		return &AuthError{Reason: ReasonNoIdentity, Err: err}
	}
	return nil
}

// ClientConfig returns a TLS 1.3 client configuration for a server named
// serverName (a DNS name or IP literal) offering alpn. The server must
// present a certificate for that name chaining to the current CA; an empty
// serverName fails every handshake. The current certificate is presented.
func (c *Credentials) ClientConfig(serverName string, alpn ...string) *tls.Config {
	return c.clientConfig(serverName, "", nil, alpn)
}

// clientConfig is ClientConfig, or with identity set, a configuration for a
// server known by its ztgate identity rather than a name (a gateway
// reached at an address from an answer): its certificate must chain to the
// CA, be fit for server authentication and carry exactly that identity;
// serverName then only goes into the SNI, when it is a name.
func (c *Credentials) clientConfig(serverName, identity string, roles, alpn []string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: append([]string(nil), alpn...),
		ServerName: serverName,
		// The built-in verification would pin the CA of this moment;
		// VerifyConnection verifies against the current one instead.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if identity != "" {
				return c.refuse(nil, c.verifyServerIdentity(identity, cs))
			}
			if ae := c.verifyServer(serverName, cs); ae != nil || len(roles) == 0 || c.skipsServers() {
				return c.refuse(nil, ae)
			}
			return c.refuse(nil, serverRole(cs, roles))
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.active.Load().cert, nil
		},
	}
}

// skipsServers reports whether servers go unverified: insecure
// credentials without a CA.
func (c *Credentials) skipsServers() bool { return c.cfg.Insecure && c.cfg.CAFile == "" }

// serverRole checks that a verified server's identity has one of roles.
func serverRole(cs tls.ConnectionState, roles []string) *AuthError {
	id, err := IdentityFromCert(cs.PeerCertificates[0])
	switch {
	case err != nil:
		return &AuthError{Reason: ReasonWrongRole, Err: fmt.Errorf("the server has no ztgate identity (want a %s): %w", strings.Join(roles, " or "), err)}
	case !slices.Contains(roles, id.Role):
		return &AuthError{Reason: ReasonWrongRole, Err: fmt.Errorf("the server is %s, not a %s", id, strings.Join(roles, " or "))}
	}
	return nil
}

// verifyServer checks a server's certificates against the current CA;
// insecure credentials without a CA take any server.
func (c *Credentials) verifyServer(serverName string, cs tls.ConnectionState) *AuthError {
	switch {
	case c.skipsServers():
		return nil
	case serverName == "":
		return &AuthError{Reason: ReasonBadCertificate, Err: errors.New("no server name to verify")}
	case len(cs.PeerCertificates) == 0:
		return &AuthError{Reason: ReasonNoCertificate}
	}
	return c.active.Load().trust.verifyChain(cs.PeerCertificates, c.now(), x509.ExtKeyUsageServerAuth, serverName)
}

// verifyServerIdentity checks that a server's certificates chain to the
// current CA for server authentication and carry the ztgate identity want
// (Identity.String()). A certificate of the original system does not
// vouch for an identity: it names itself by its common name, which a
// ztgate gateway's identity may share (default/gateway/<name>).
func (c *Credentials) verifyServerIdentity(want string, cs tls.ConnectionState) *AuthError {
	if len(cs.PeerCertificates) == 0 {
		return &AuthError{Reason: ReasonNoCertificate}
	}
	if ae := c.active.Load().trust.verifyChain(cs.PeerCertificates, c.now(), x509.ExtKeyUsageServerAuth, ""); ae != nil {
		return ae
	}
	id, err := IdentityFromCert(cs.PeerCertificates[0])
	switch {
	case err != nil:
		return &AuthError{Reason: ReasonNoIdentity, Err: err}
	case id.Legacy:
		return &AuthError{Reason: ReasonBadCertificate, Err: fmt.Errorf("server is %s by a certificate of the original system (common name), expected a ztgate identity", id)}
	case id.String() != want:
		return &AuthError{Reason: ReasonBadCertificate, Err: fmt.Errorf("server is %s, expected %s", id, want)}
	}
	return nil
}

// remoteAddr returns the peer address of a handshake, if known.
func remoteAddr(hello *tls.ClientHelloInfo) net.Addr {
	if hello == nil || hello.Conn == nil {
		return nil
	}
	return hello.Conn.RemoteAddr()
}
