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

// Files names the three files of a set of credentials: those of
// CredentialsConfig, which ReloadFiles and Stage may replace while
// sessions run.
type Files struct {
	Cert string // PEM certificate (chain) of this peer
	Key  string // PEM private key of Cert
	CA   string // PEM CA certificate(s) that peers must chain to
}

// files returns the files cfg names.
func (cfg CredentialsConfig) files() Files {
	return Files{Cert: cfg.CertFile, Key: cfg.KeyFile, CA: cfg.CAFile}
}

// Credentials hold this peer's certificate and the CA, reloadable while
// sessions run, from the same files or from others: TLS configurations
// from ServerConfig and ClientConfig read the current ones at every
// handshake. Safe for concurrent use.
type Credentials struct {
	// cfg is fixed by NewCredentials, its file names cleared: the files in
	// use are those of the active state, which a switch replaces whole.
	// Handshakes read cfg without a lock, as nothing writes it after
	// NewCredentials; Insecure and Role therefore change only at a restart.
	cfg    CredentialsConfig
	log    *slog.Logger
	mu     sync.Mutex // serialises Reload and the switches of active
	active atomic.Pointer[credState]

	watchMu  sync.Mutex
	watchers map[*func()]struct{} // guarded by watchMu: called after each switch (onSwitch)
}

// credState is one consistent set of loaded credentials: the files it was
// loaded from, the certificate and the CA. A handshake takes one and uses
// it throughout, so it never sees the certificate of one set with the CA
// of another.
type credState struct {
	files Files
	cert  *tls.Certificate // Leaf is set
	trust *trust
	// own is the ztgate identity cert presents (ownIdentity); a dialed
	// session made with one is ended when a switch changes it.
	own string
	// warnings are what the load found wrong and started with.
	warnings []*CertWarning
}

// ownIdentity describes the identity leaf presents, to tell whether a
// switch of the credentials changed it: "" without a certificate or a
// ztgate identity; for a legacy certificate the rights it names with the
// identity, as they are what a server grants it.
func ownIdentity(leaf *x509.Certificate) string {
	if leaf == nil {
		return ""
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return ""
	}
	if !id.Legacy {
		return id.String()
	}
	services := "*"
	if len(id.Services) > 0 {
		services = strings.Join(id.Services, ",") // sorted and unique
	}
	return id.String() + " (legacy: services " + services + ")"
}

// ownName is an own identity (credState.own) for logs and reasons.
func ownName(own string) string {
	if own == "" {
		return "none"
	}
	return own
}

// NewCredentials loads the files named by cfg.
func NewCredentials(cfg CredentialsConfig, log *slog.Logger) (*Credentials, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	files := cfg.files()
	cfg.CertFile, cfg.KeyFile, cfg.CAFile = "", "", "" // in the state from now on
	c := &Credentials{cfg: cfg, log: log}
	st, err := c.load(files)
	if err != nil {
		return nil, err
	}
	c.active.Store(st)
	return c, nil
}

// Reload re-reads the certificate, key and CA files in use and switches to
// them for new handshakes; a listener's live sessions whose client the new
// credentials refuse are closed (Listener.recheck), and so are dialed
// sessions whose server they refuse (Session.recheckServer). On error the
// current credentials stay in use. An editor or tool replacing the files
// one by one may make a reload fail (key not matching the certificate):
// retry later.
func (c *Credentials) Reload() error {
	c.mu.Lock()
	st, err := c.load(c.active.Load().files)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	c.switchLocked(st)
	c.mu.Unlock()
	c.switched()
	return nil
}

// ReloadFiles loads the files f names (a configuration that names other
// files than those in use) and, once all three are loaded and checked as
// NewCredentials checks them (the key is the certificate's, the
// certificate is of the role, the CA parses), switches new handshakes to
// them at once: a handshake uses the old set or the new one, never a part
// of each. A listener's live sessions whose client the new credentials
// refuse are closed (Listener.recheck), and so are dialed sessions whose
// server they refuse (Session.recheckServer). On error the current credentials
// stay in use and the error is returned. Insecure and Role are fixed at
// NewCredentials.
func (c *Credentials) ReloadFiles(f Files) error {
	c.mu.Lock()
	st, err := c.load(f)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	c.switchLocked(st)
	c.mu.Unlock()
	c.switched()
	return nil
}

// Staged are credentials that Stage loaded and checked, not yet in use.
type Staged struct {
	c  *Credentials
	st *credState
}

// Stage loads and checks the files f names as ReloadFiles does, without
// using them: Use switches to them, so that a caller can switch them
// together with other settings that may still fail, or drop them. Use the
// result at once or not at all: a Staged used after a later reload would
// bring back the older contents.
func (c *Credentials) Stage(f Files) (*Staged, error) {
	st, err := c.load(f)
	if err != nil {
		return nil, err
	}
	return &Staged{c: c, st: st}, nil
}

// Use switches new handshakes to the staged credentials.
func (s *Staged) Use() {
	s.c.mu.Lock()
	s.c.switchLocked(s.st)
	s.c.mu.Unlock()
	s.c.switched()
}

// onSwitch calls f after every switch of the credentials (Reload,
// ReloadFiles, Staged.Use), outside their lock, until stop is called. A
// listener rechecks its live sessions with it, a dialed session its
// server.
func (c *Credentials) onSwitch(f func()) (stop func()) {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if c.watchers == nil {
		c.watchers = make(map[*func()]struct{})
	}
	c.watchers[&f] = struct{}{}
	return func() {
		c.watchMu.Lock()
		delete(c.watchers, &f)
		c.watchMu.Unlock()
	}
}

// switched calls the onSwitch functions.
func (c *Credentials) switched() {
	c.watchMu.Lock()
	fs := make([]func(), 0, len(c.watchers))
	for f := range c.watchers {
		fs = append(fs, *f)
	}
	c.watchMu.Unlock()
	for _, f := range fs {
		f()
	}
}

// switchLocked makes st the credentials of new handshakes and logs it. The
// caller holds mu.
func (c *Credentials) switchLocked(st *credState) {
	old := c.active.Swap(st)
	var attrs []any
	if leaf := st.cert.Leaf; leaf != nil {
		attrs = append(attrs, "subject", leaf.Subject.String(), "not_after", leaf.NotAfter)
	}
	if old.files != st.files {
		attrs = append(attrs, "cert", st.files.Cert, "key", st.files.Key, "ca", st.files.CA)
	}
	if old.own != st.own {
		// Dialed sessions made with the old identity end (recheckServer).
		attrs = append(attrs, "identity", ownName(st.own), "previous_identity", ownName(old.own))
	}
	if st.cert.Leaf == nil {
		c.log.Info("tunnel credentials reloaded: no certificate (insecure)", attrs...)
		return
	}
	c.log.Info("tunnel credentials reloaded", attrs...)
}

// Insecure reports whether unauthenticated clients are accepted.
func (c *Credentials) Insecure() bool { return c.cfg.Insecure }

// Certificate returns the current leaf certificate, e.g. to export its
// expiry. The caller must not modify it.
func (c *Credentials) Certificate() *x509.Certificate { return c.active.Load().cert.Leaf }

// Files returns the files the current credentials were loaded from.
func (c *Credentials) Files() Files { return c.active.Load().files }

// load reads and checks the three files f names. Insecure client
// credentials may have no certificate (neither file set): the client then
// presents none.
func (c *Credentials) load(f Files) (*credState, error) {
	t, err := c.loadTrust(f.CA)
	if err != nil {
		return nil, err
	}
	if c.cfg.Insecure && f.Cert == "" && f.Key == "" {
		var warnings []*CertWarning
		if w := t.peerWarning(f.CA); w != nil {
			w.log(c.log)
			warnings = append(warnings, w)
		}
		return &credState{files: f, cert: &tls.Certificate{}, trust: t, warnings: warnings}, nil
	}
	pair, err := loadKeyPair(f)
	if err != nil {
		// tls names neither file: "private key does not match public key"
		return nil, fmt.Errorf("tunnel: load credentials: certificate %s, key %s: %w", f.Cert, f.Key, err)
	}
	return c.checked(f, pair, t)
}

// checked checks a key pair loaded from f with the CA file's trust t: its
// chain parses, its leaf is of the role and not a CA's; one that does not
// verify against t is only warned about.
func (c *Credentials) checked(f Files, pair tls.Certificate, t *trust) (*credState, error) {
	chain, err := parseChain(pair.Certificate)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load credentials: %s: %w", f.Cert, err)
	}
	pair.Leaf = chain[0]
	var warnings []*CertWarning
	w, err := c.checkRole(f.Cert, chain, t)
	if err != nil {
		return nil, err
	}
	if w != nil {
		warnings = append(warnings, w)
	}
	if w := t.peerWarning(f.CA); w != nil {
		// It says why the certificate does not verify.
		warnings = append(warnings, w)
	} else if ae := t.verifyChain(chain, c.now(), x509.ExtKeyUsageAny, ""); ae != nil && len(t.roots) > 0 {
		warnings = append(warnings, &CertWarning{Msg: CertNotVerified, Cert: f.Cert, Reason: ae.Reason, Err: ae.Err})
	}
	for _, w := range warnings {
		w.log(c.log)
	}
	return &credState{files: f, cert: &pair, trust: t, own: ownIdentity(pair.Leaf), warnings: warnings}, nil
}

// What loading credentials warns about, and starts with all the same
// (CertWarning.Msg).
const (
	// CertNotVerified: the certificate does not verify against the
	// credentials' own CA file; peers that trust only that CA refuse it.
	CertNotVerified = "tunnel certificate does not verify against the CA"
	// CertNoIdentity: the certificate carries no ztgate identity; ztgate
	// peers refuse it.
	CertNoIdentity = "tunnel certificate carries no ztgate identity: ztgate peers will refuse it"
	// CertCAIsPeer: the CA file holds a ztgate peer's certificate and no
	// CA's (ca = relay1.crt for ca.crt): peers are verified against that
	// one certificate, and every other is refused.
	CertCAIsPeer = "tunnel CA file holds a peer's certificate, not a CA's"
)

// CertWarning is a problem of the credentials' own certificate that the
// load logs and starts with (Credentials.Warnings), for `ztgate check` to
// tell without starting.
type CertWarning struct {
	Msg    string   // CertNotVerified, CertNoIdentity or CertCAIsPeer
	Cert   string   // the certificate file
	Reason string   // CertNotVerified: why it does not verify (an AuthError reason)
	Role   string   // CertNoIdentity: the role the credentials are for
	Err    error    // CertNotVerified: the verification's error
	CA     string   // CertCAIsPeer: the CA file
	Peers  []string // CertCAIsPeer: the identities of the certificates it holds
}

func (w *CertWarning) Error() string {
	switch {
	case w.Msg == CertCAIsPeer:
		return fmt.Sprintf("%s: %s holds %s", w.Msg, w.CA, strings.Join(w.Peers, ", "))
	case w.Err != nil:
		return fmt.Sprintf("%s: %s (%s): %v", w.Msg, w.Cert, w.Reason, w.Err)
	default:
		return fmt.Sprintf("%s: %s", w.Msg, w.Cert)
	}
}

// log logs w as the load always did.
func (w *CertWarning) log(l *slog.Logger) {
	switch w.Msg {
	case CertNoIdentity:
		l.Warn(w.Msg, "cert", w.Cert, "want_role", w.Role)
		return
	case CertCAIsPeer:
		l.Warn(w.Msg, "ca", w.CA, "holds", w.Peers)
		return
	}
	l.Warn(w.Msg, "cert", w.Cert, "reason", w.Reason, "err", w.Err)
}

// Warnings returns what the load of the credentials in use warned about.
func (c *Credentials) Warnings() []*CertWarning {
	return slices.Clone(c.active.Load().warnings)
}

// checkRole checks that chain's leaf, this peer's certificate (loaded
// from certFile), is one of cfg.Role, and not a CA's of t (one of its
// CAs, or one they signed).
// Another certificate that says CA:TRUE (a self-signed one, as `openssl
// req -x509` makes them) is judged by its identity: without one it is only
// warned about (the warning returned), as insecure peers without a CA take it.
func (c *Credentials) checkRole(certFile string, chain []*x509.Certificate, t *trust) (*CertWarning, error) {
	if c.cfg.Role == "" {
		return nil, nil
	}
	leaf := chain[0]
	issue := fmt.Sprintf("issue one with `ztgate pki issue -role %s`", c.cfg.Role)
	budget := maxSignatureChecks
	if leaf.IsCA && t.signaturePath(chain[:1], chain[1:], &budget) != nil {
		return nil, fmt.Errorf("tunnel: load credentials: %s is a CA's certificate, not %s's: %s", certFile, aRole(c.cfg.Role), issue)
	}
	id, err := IdentityFromCert(leaf)
	switch {
	case errors.Is(err, ErrNoIdentity):
		return &CertWarning{Msg: CertNoIdentity, Cert: certFile, Role: c.cfg.Role}, nil
	case err != nil:
		return nil, fmt.Errorf("tunnel: load credentials: %s: %w", certFile, err)
	case id.Role != c.cfg.Role:
		return nil, fmt.Errorf("tunnel: load credentials: %s is the certificate of %s, not of %s: %s", certFile, id, aRole(c.cfg.Role), issue)
	}
	return nil, nil
}

// aRole is role with its article: "a relay", "an agent".
func aRole(role string) string {
	if role == RoleAgent {
		return "an " + role
	}
	return "a " + role
}

// loadTrust reads the CA file caFile. Insecure credentials may have none:
// then no client identity verifies, and servers are not verified at all.
func (c *Credentials) loadTrust(caFile string) (*trust, error) {
	if caFile == "" && c.cfg.Insecure {
		return &trust{pool: x509.NewCertPool()}, nil
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load credentials: %w", err)
	}
	t, err := parseTrust(caPEM)
	if err != nil {
		return nil, fmt.Errorf("tunnel: load credentials: CA file %s: %w", caFile, err)
	}
	return t, nil
}

// loadKeyPair is tls.LoadX509KeyPair, refusing too a certificate file
// whose chain has a block cut short (which tls skips).
func loadKeyPair(f Files) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return keyPair(certPEM, keyPEM)
}

// keyPair is tls.X509KeyPair, refusing too a certificate chain with a
// block cut short.
func keyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	if err := pemWhole(certPEM); err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate file: %w", err)
	}
	return tls.X509KeyPair(certPEM, keyPEM)
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
// The configuration may serve many handshakes; each callback reads the
// credentials current when it runs, so a switch in the middle of one
// handshake (between verifying the server and presenting the certificate)
// gives it a part of each set. Dial takes one set for the whole handshake.
func (c *Credentials) ClientConfig(serverName string, alpn ...string) *tls.Config {
	return c.clientConfig(nil, serverName, "", nil, alpn)
}

// clientConfig is ClientConfig, or with identity set, a configuration for a
// server known by its ztgate identity rather than a name (a gateway
// reached at an address from an answer): its certificate must chain to the
// CA, be fit for server authentication and carry exactly that identity;
// serverName then only goes into the SNI, when it is a name. With st set
// the configuration is for one handshake, which uses st throughout; nil,
// each callback uses the credentials current when it runs.
func (c *Credentials) clientConfig(st *credState, serverName, identity string, roles, alpn []string) *tls.Config {
	state := func() *credState {
		if st != nil {
			return st
		}
		return c.active.Load()
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: append([]string(nil), alpn...),
		ServerName: serverName,
		// The built-in verification would pin the CA of this moment;
		// VerifyConnection verifies against the current one instead.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return c.refuse(nil, c.checkServer(state(), serverName, identity, roles, cs))
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return state().cert, nil
		},
	}
}

// checkServer applies the client's policy to a server's certificates with
// st: those of a server known by its ztgate identity must carry it
// (verifyServerIdentity); otherwise they must be for serverName and, when
// roles are set, carry one of them. Dial's handshake uses it, and so does
// the recheck of a dialed session (Session.recheckServer), so that a live
// session is judged as its next handshake would be.
func (c *Credentials) checkServer(st *credState, serverName, identity string, roles []string, cs tls.ConnectionState) *AuthError {
	if identity != "" {
		return c.verifyServerIdentity(st, identity, cs)
	}
	if ae := c.verifyServer(st, serverName, cs); ae != nil || len(roles) == 0 || c.skipsServers(st) {
		return ae
	}
	return serverRole(cs, roles)
}

// skipsServers reports whether servers go unverified with st: insecure
// credentials without a CA.
func (c *Credentials) skipsServers(st *credState) bool { return c.cfg.Insecure && st.files.CA == "" }

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

// verifyServer checks a server's certificates against the CA of st;
// insecure credentials without a CA take any server.
func (c *Credentials) verifyServer(st *credState, serverName string, cs tls.ConnectionState) *AuthError {
	switch {
	case c.skipsServers(st):
		return nil
	case serverName == "":
		return &AuthError{Reason: ReasonBadCertificate, Err: errors.New("no server name to verify")}
	case len(cs.PeerCertificates) == 0:
		return &AuthError{Reason: ReasonNoCertificate}
	}
	return st.trust.verifyChain(cs.PeerCertificates, c.now(), x509.ExtKeyUsageServerAuth, serverName)
}

// verifyServerIdentity checks that a server's certificates chain to the
// CA of st for server authentication and carry the ztgate identity want
// (Identity.String()). A certificate of the original system does not
// vouch for an identity: it names itself by its common name, which a
// ztgate gateway's identity may share (default/gateway/<name>).
func (c *Credentials) verifyServerIdentity(st *credState, want string, cs tls.ConnectionState) *AuthError {
	if len(cs.PeerCertificates) == 0 {
		return &AuthError{Reason: ReasonNoCertificate}
	}
	if ae := st.trust.verifyChain(cs.PeerCertificates, c.now(), x509.ExtKeyUsageServerAuth, ""); ae != nil {
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
