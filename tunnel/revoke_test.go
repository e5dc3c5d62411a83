package tunnel

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
)

// revokeListener listens with the relay's certificate and the CA file
// caFile (which the test may rewrite and reload), accepting every
// session; it returns the listener and its credentials.
func revokeListener(t *testing.T, f *tlsFixture, caFile string) (*Listener, *Credentials) {
	t.Helper()
	certFile, keyFile := f.relayFiles("relay1")
	return revokeListenerWith(t, f, certFile, keyFile, caFile)
}

// revokeListenerWith is revokeListener with the server certificate in
// certFile and keyFile.
func revokeListenerWith(t *testing.T, f *tlsFixture, certFile, keyFile, caFile string) (*Listener, *Credentials) {
	t.Helper()
	creds := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile})
	reg := prometheus.NewRegistry()
	ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: creds, Registerer: reg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for {
			s, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			_ = s.SendWelcome(Welcome{})
		}
	}()
	return ln, creds
}

// revokeDial opens a session to ln as an agent with a certificate of ca,
// valid for validity from a minute ago (0: the default).
func revokeDial(t *testing.T, f *tlsFixture, ln *Listener, ca *CA, name string, validity time.Duration) *Session {
	t.Helper()
	req := IssueRequest{Tenant: "acme", Role: RoleAgent, Name: name}
	if validity > 0 {
		req.NotBefore, req.Validity = time.Now().Add(-time.Minute), time.Minute+validity
	}
	certFile, keyFile := f.leaf(ca, req)
	creds := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: f.write("trust.crt", append(f.ca.CertPEM(), f.other.CertPEM()...))})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Dial(ctx, ln.Addr().String(), DialConfig{Credentials: creds, ServerName: serverName, Hello: Hello{Role: RoleAgent}}, nil)
	if err != nil {
		t.Fatalf("dial as %s: %v", name, err)
	}
	t.Cleanup(func() { s.Close("test over") })
	return s
}

// revokedWith waits up to d for s to be closed by the server as revoked
// for reason.
func revokedWith(t *testing.T, s *Session, d time.Duration, reason string) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(d):
		t.Fatalf("the agent's session still open after %v, want it closed as revoked: %s", d, reason)
	}
	err := context.Cause(s.conn.Context())
	ae, ok := errors.AsType[*quic.ApplicationError](err)
	if !ok || !ae.Remote || ae.ErrorCode != closeRefused || ae.ErrorMessage != "revoked: "+reason {
		t.Fatalf("the agent's session ended with %v, want the server's \"revoked: %s\"", err, reason)
	}
}

// stillOpen checks that s has not ended, 300 ms on.
func stillOpen(t *testing.T, s *Session, what string) {
	t.Helper()
	select {
	case <-s.Done():
		t.Fatalf("%s: the agent's session ended: %v", what, context.Cause(s.conn.Context()))
	case <-time.After(300 * time.Millisecond):
	}
}

// TestCARotationEndsLiveSessions: rotating the CA a listener trusts cuts
// off the peers of the CA dropped, live sessions included, as the security
// notes say it does; before, only their next handshake was refused and a
// session that stayed up (keepalives) went on for good. A session whose
// certificate the new CA file still trusts goes on.
func TestCARotationEndsLiveSessions(t *testing.T) {
	f := newTLSFixture(t)
	caFile := f.write("ca.crt", f.ca.CertPEM())
	ln, creds := revokeListener(t, f, caFile)
	oldAgent := revokeDial(t, f, ln, f.ca, "old", 0)

	// Both CAs: nothing changes for the live session.
	replace(t, caFile, append(f.ca.CertPEM(), f.other.CertPEM()...))
	if err := creds.Reload(); err != nil {
		t.Fatal(err)
	}
	newAgent := revokeDial(t, f, ln, f.other, "new", 0)
	stillOpen(t, oldAgent, "a bundle of both CAs")

	// The old CA dropped: its agent is cut off, the new one's stays.
	replace(t, caFile, f.other.CertPEM())
	if err := creds.Reload(); err != nil {
		t.Fatal(err)
	}
	revokedWith(t, oldAgent, 5*time.Second, ReasonUnknownAuthority)
	stillOpen(t, newAgent, "the new CA alone")
	wantRevoked(t, ln.m, sideServer, ReasonUnknownAuthority, 1, "")
}

// TestSessionEndsWhenCertificateExpires: a session does not outlive the
// client certificate that admitted it; before, a peer whose certificate
// expired stayed connected for as long as it kept its session up.
func TestSessionEndsWhenCertificateExpires(t *testing.T) {
	f := newTLSFixture(t)
	ln, _ := revokeListener(t, f, f.caFile)
	short := revokeDial(t, f, ln, f.ca, "short", 2*time.Second)
	long := revokeDial(t, f, ln, f.ca, "long", 0)
	revokedWith(t, short, 10*time.Second, ReasonExpired)
	stillOpen(t, long, "another agent's certificate expired")
	wantRevoked(t, ln.m, sideServer, ReasonExpired, 1, "")
}

// wantRevoked checks ztgate_tunnel_sessions_revoked_total{side,reason} of
// m; why, when set, says why that many.
func wantRevoked(t *testing.T, m *metrics, side, reason string, want int, why string) {
	t.Helper()
	if n := testutil.ToFloat64(m.revokedN.WithLabelValues(side, reason)); n != float64(want) {
		if why != "" {
			why = ": " + why
		}
		t.Errorf("ztgate_tunnel_sessions_revoked_total{side=%q,reason=%q} = %v, want %d%s", side, reason, n, want, why)
	}
}
