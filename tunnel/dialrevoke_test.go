package tunnel

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
)

// dialerCreds returns an agent's credentials with a certificate of our CA
// (which the listeners of revokeListener trust) and the CA file caFile for
// the server, which the test may rewrite and reload.
func dialerCreds(f *tlsFixture, caFile string) *Credentials {
	certFile, keyFile := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "dialer"})
	return f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile})
}

// dialWith opens a session to ln with cfg, its Hello filled in.
func dialWith(t *testing.T, ln *Listener, cfg DialConfig) *Session {
	t.Helper()
	cfg.Hello = Hello{Role: RoleAgent}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Dial(ctx, ln.Addr().String(), cfg, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { s.Close("test over") })
	return s
}

// dialerRevokedWith waits up to d for the dialer's session s to be closed
// by the dialer itself as revoked for reason.
func dialerRevokedWith(t *testing.T, s *Session, d time.Duration, what, reason string) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(d):
		t.Fatalf("%s: the dialer's session still open after %v, want it closed as revoked: %s", what, d, reason)
	}
	err := context.Cause(s.conn.Context())
	ae, ok := errors.AsType[*quic.ApplicationError](err)
	if !ok || ae.Remote || ae.ErrorCode != closeRefused || ae.ErrorMessage != "revoked: "+reason {
		t.Fatalf("%s: the dialer's session ended with %v, want its own \"revoked: %s\"", what, err, reason)
	}
}

// TestCADropEndsDialedSessions: a dialer whose CA file drops the CA of
// the server it dialed ends its live session at the reload, counted as
// revoked, whichever way the dial checked the server (by name, by name
// and roles, by identity at an address); before, only its next dial was
// refused and the session went on for as long as keepalives kept it up.
// A reload that keeps the server's CA ends nothing.
func TestCADropEndsDialedSessions(t *testing.T) {
	f := newTLSFixture(t)
	ln, _ := revokeListener(t, f, f.caFile)
	caFile := f.write("server-ca.crt", append(f.ca.CertPEM(), f.other.CertPEM()...))
	creds := dialerCreds(f, caFile)
	reg := prometheus.NewRegistry()
	sessions := map[string]*Session{
		"by name":            dialWith(t, ln, DialConfig{Credentials: creds, ServerName: serverName, Registerer: reg}),
		"by name and roles":  dialWith(t, ln, DialConfig{Credentials: creds, ServerName: serverName, ServerRoles: []string{RoleRelay}, Registerer: reg}),
		"by identity at IP":  dialWith(t, ln, DialConfig{Credentials: creds, ExpectIdentity: "ops/relay/relay1", Registerer: reg}),
		"by identity, roles": dialWith(t, ln, DialConfig{Credentials: creds, ExpectIdentity: "ops/relay/relay1", ServerRoles: []string{RoleRelay}, Registerer: reg}),
	}
	m := sessions["by name"].m

	// The server's CA kept (the foreign one dropped, files switched):
	// nothing ends.
	if err := creds.ReloadFiles(Files{Cert: creds.Files().Cert, Key: creds.Files().Key, CA: f.write("ca-kept.crt", f.ca.CertPEM())}); err != nil {
		t.Fatal(err)
	}
	for what, s := range sessions {
		stillOpen(t, s, what+": a reload that keeps the server's CA")
	}

	// The server's CA dropped: every session to it ends.
	replace(t, caFile, f.other.CertPEM())
	if err := creds.ReloadFiles(Files{Cert: creds.Files().Cert, Key: creds.Files().Key, CA: caFile}); err != nil {
		t.Fatal(err)
	}
	for what, s := range sessions {
		dialerRevokedWith(t, s, 5*time.Second, what, ReasonUnknownAuthority)
	}
	wantRevoked(t, m, sideClient, ReasonUnknownAuthority, len(sessions), "")
	wantRevoked(t, ln.m, sideServer, ReasonUnknownAuthority, 0, "the client's certificate is still good")
}

// TestDialedSessionEndsWhenServerCertificateExpires: a dialed session does
// not outlive the server certificate its dial verified; before, the
// dialer stayed with an expired server for as long as the session lived.
// A session to another server goes on.
func TestDialedSessionEndsWhenServerCertificateExpires(t *testing.T) {
	f := newTLSFixture(t)
	certFile, keyFile := shortServerCert(f, 2*time.Second)
	short, _ := revokeListenerWith(t, f, certFile, keyFile, f.caFile)
	long, _ := revokeListener(t, f, f.caFile)
	creds := dialerCreds(f, f.caFile)
	reg := prometheus.NewRegistry()
	toShort := dialWith(t, short, DialConfig{Credentials: creds, ServerName: serverName, Registerer: reg})
	toLong := dialWith(t, long, DialConfig{Credentials: creds, ServerName: serverName, Registerer: reg})
	dialerRevokedWith(t, toShort, 10*time.Second, "the short server", ReasonExpired)
	stillOpen(t, toLong, "another server's certificate expired")
	wantRevoked(t, toShort.m, sideClient, ReasonExpired, 1, "")
}

// TestRedialerBacksOffFromARevokedServer: a Redialer whose session ends
// because its CA file dropped the server's CA dials again, is refused at
// the handshake, and waits longer each time rather than spinning.
func TestRedialerBacksOffFromARevokedServer(t *testing.T) {
	f := newTLSFixture(t)
	ln, _ := revokeListener(t, f, f.caFile)
	caFile := f.write("server-ca.crt", f.ca.CertPEM())
	creds := dialerCreds(f, caFile)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const dials = 4 // the session, then refused dials
	var (
		mu       sync.Mutex
		errs     []error
		waits    []time.Duration
		sessions int
	)
	connected := make(chan struct{}, 1)
	r := &Redialer{
		Addr:   ln.Addr().String(),
		Config: DialConfig{Credentials: creds, ServerName: serverName, Hello: Hello{Role: RoleAgent}},
		OnSession: func(ctx context.Context, s *Session) error {
			mu.Lock()
			sessions++
			mu.Unlock()
			select {
			case connected <- struct{}{}:
			default:
			}
			return sessionLife(ctx, s)
		},
		OnDisconnect: func(err error, retryIn time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
			waits = append(waits, retryIn)
			if len(errs) == dials {
				cancel()
			}
		},
		sleep: func(context.Context, time.Duration, <-chan struct{}) bool { return false }, // the waits are checked, not waited
	}
	done := runRedialer(t, ctx, cancel, r)
	select {
	case <-connected:
	case <-time.After(10 * time.Second):
		t.Fatal("the Redialer did not connect")
	}
	replace(t, caFile, f.other.CertPEM())
	if err := creds.Reload(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the Redialer's session to a server its CA file dropped is still open 5 s after the reload")
	}

	mu.Lock()
	defer mu.Unlock()
	if sessions != 1 {
		t.Errorf("%d sessions, want 1: the redials must be refused", sessions)
	}
	if len(errs) != dials {
		t.Fatalf("%d disconnects, want %d", len(errs), dials)
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](errs[0]); !ok || ae.ErrorMessage != "revoked: "+ReasonUnknownAuthority {
		t.Errorf("the session ended with %v, want \"revoked: %s\"", errs[0], ReasonUnknownAuthority)
	}
	for i, err := range errs[1:] {
		if ae, ok := errors.AsType[*AuthError](err); !ok || ae.Reason != ReasonUnknownAuthority {
			t.Errorf("redial %d failed with %v, want the server refused as %s", i+1, err, ReasonUnknownAuthority)
		}
	}
	for i, d := range waits {
		lo, hi := min(RedialMin<<i, RedialMax)*8/10, min(RedialMin<<i, RedialMax)*12/10
		if d < max(lo, RedialMin) || d > min(hi, RedialMax) {
			t.Errorf("wait %d = %v, want in [%v, %v]: the Redialer backs off", i, d, max(lo, RedialMin), hi)
		}
	}
}

// TestDialRefusesServerAfterReloadDuringHello: a reload that drops the
// server's CA between the TLS handshake and the welcome makes the dial
// fail, counted as a refused handshake, not a revoked session; before,
// the dial returned a session with a server its credentials refuse.
func TestDialRefusesServerAfterReloadDuringHello(t *testing.T) {
	f := newTLSFixture(t)
	certFile, keyFile := f.relayFiles("relay1")
	ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: f.caFile})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	caFile := f.write("server-ca.crt", f.ca.CertPEM())
	creds := dialerCreds(f, caFile)
	reg := prometheus.NewRegistry()
	_, finishDial := dialHeldAtWelcome(t, ln, DialConfig{Credentials: creds, ServerName: serverName, Hello: Hello{Role: RoleAgent}, Registerer: reg})
	// TLS handshaken, hello read; the welcome not sent yet.
	replace(t, caFile, f.other.CertPEM())
	if err := creds.Reload(); err != nil {
		t.Fatal(err)
	}
	s, err := finishDial()
	if err == nil {
		s.Close("test over")
		t.Fatal("the dial returned a session with a server its credentials, reloaded during the hello, refuse")
	}
	if ae, ok := errors.AsType[*AuthError](err); !ok || ae.Reason != ReasonUnknownAuthority || !errors.Is(err, errRefusedAfterHello) {
		t.Fatalf("dial: %v, want the server refused after the hello as %s", err, ReasonUnknownAuthority)
	}
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(m.handshakes.WithLabelValues(sideClient, resultRefused, ReasonUnknownAuthority)); n != 1 {
		t.Errorf("ztgate_tunnel_handshakes_total{side=\"client\",result=\"refused\",reason=%q} = %v, want 1", ReasonUnknownAuthority, n)
	}
	wantRevoked(t, m, sideClient, ReasonUnknownAuthority, 0, "the dial was refused, not a session revoked")
}

// TestInsecureDialerWatchesExpiryOnceItHasACA: a dialer with insecure
// credentials and no CA verifies no server; once a reload gives it a CA,
// a live session is judged as a new dial would be, the end of its
// server's certificate included. Before, the expiry was watched only when
// the credentials of the dial verified servers, and a session dialed
// without a CA outlived the server certificate the CA later vouched for.
func TestInsecureDialerWatchesExpiryOnceItHasACA(t *testing.T) {
	f := newTLSFixture(t)
	certFile, keyFile := shortServerCert(f, 3*time.Second)
	ln, _ := revokeListenerWith(t, f, certFile, keyFile, f.caFile)
	dialerCert, dialerKey := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "dialer"})
	creds := f.creds(CredentialsConfig{CertFile: dialerCert, KeyFile: dialerKey, Insecure: true})
	s := dialWith(t, ln, DialConfig{Credentials: creds, ServerName: serverName, Registerer: prometheus.NewRegistry()})
	if err := creds.ReloadFiles(Files{Cert: dialerCert, Key: dialerKey, CA: f.caFile}); err != nil {
		t.Fatal(err)
	}
	stillOpen(t, s, "a CA that trusts the server")
	dialerRevokedWith(t, s, 10*time.Second, "the server's certificate expired", ReasonExpired)
}

// sessionLife waits, as a Redialer's OnSession, for s to end (its error)
// or ctx to be done (nil).
func sessionLife(ctx context.Context, s *Session) error {
	select {
	case <-s.Done():
		return s.Err()
	case <-ctx.Done():
		return nil
	}
}

// runRedialer runs r until ctx is done; done is closed when Run
// returns. The test's end cancels it and waits for Run to return.
func runRedialer(t *testing.T, ctx context.Context, cancel context.CancelFunc, r *Redialer) (done <-chan struct{}) {
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		_ = r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-ended
	})
	return ended
}

// dialHeldAtWelcome dials ln with cfg and holds the listener's welcome:
// it returns, once the listener accepted the session (TLS handshaken,
// hello read), the listener's end, and finish, which sends the welcome
// and returns what the dial returned. The test's end closes the
// listener's end.
func dialHeldAtWelcome(t *testing.T, ln *Listener, cfg DialConfig) (server *Session, finish func() (*Session, error)) {
	t.Helper()
	accepted, welcome := make(chan *Session, 1), make(chan struct{})
	sendWelcome := sync.OnceFunc(func() { close(welcome) })
	t.Cleanup(sendWelcome)
	go func() {
		s, err := ln.Accept(context.Background())
		if err != nil {
			close(accepted)
			return
		}
		accepted <- s
		<-welcome
		_ = s.SendWelcome(Welcome{})
	}()
	type result struct {
		s   *Session
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := Dial(ctx, ln.Addr().String(), cfg, nil)
		done <- result{s, err}
	}()
	select {
	case server = <-accepted:
		if server == nil {
			t.Fatal("accept failed")
		}
		t.Cleanup(func() { server.Close("test over") })
	case <-time.After(10 * time.Second):
		t.Fatal("no session accepted")
	}
	return server, func() (*Session, error) {
		sendWelcome()
		res := <-done
		return res.s, res.err
	}
}

// shortServerCert issues a relay's certificate for serverName that has
// validFor left to live.
func shortServerCert(f *tlsFixture, validFor time.Duration) (certFile, keyFile string) {
	return f.leaf(f.ca, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "short",
		DNSNames: []string{serverName}, NotBefore: time.Now().Add(-time.Minute), Validity: time.Minute + validFor})
}
