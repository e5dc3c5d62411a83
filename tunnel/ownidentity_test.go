package tunnel

import (
	"context"
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// ownIdentityRig is a listener that welcomes every session and hands it
// over, and a dialer's credentials loaded from files the test rewrites.
type ownIdentityRig struct {
	f                 *tlsFixture
	ln                *Listener
	accepted          chan *Session
	certFile, keyFile string
	creds             *Credentials
}

func newOwnIdentityRig(t *testing.T, id IssueRequest) *ownIdentityRig {
	t.Helper()
	f := newTLSFixture(t)
	r := &ownIdentityRig{f: f, accepted: make(chan *Session, 8)}
	ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: f.relay(CredentialsConfig{})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r.ln = ln
	go func() {
		for {
			s, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			_ = s.SendWelcome(Welcome{})
			r.accepted <- s
		}
	}()
	r.certFile, r.keyFile = f.leaf(f.ca, id)
	r.creds = f.creds(CredentialsConfig{CertFile: r.certFile, KeyFile: r.keyFile, CAFile: f.caFile, Role: RoleAgent})
	return r
}

// switchTo rewrites the dialer's files with a new certificate for id and
// reloads them.
func (r *ownIdentityRig) switchTo(t *testing.T, id IssueRequest) {
	t.Helper()
	certPEM, keyPEM, err := r.f.ca.Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	replace(t, r.keyFile, keyPEM)
	replace(t, r.certFile, certPEM)
	if err := r.creds.Reload(); err != nil {
		t.Fatal(err)
	}
}

// nextAccepted returns the listener's next session.
func (r *ownIdentityRig) nextAccepted(t *testing.T, what string) *Session {
	t.Helper()
	select {
	case s := <-r.accepted:
		t.Cleanup(func() { s.Close("test over") })
		return s
	case <-time.After(testTimeout):
		t.Fatalf("%s: the listener accepted no session", what)
		return nil
	}
}

// TestOwnIdentityChangeRedials: a dialer whose reloaded certificate
// carries another identity (another tenant) ends its live session made
// with the old one, "own identity changed: <old> -> <new>" on both ends,
// and its Redialer dials again at once, without a backoff wait: the
// listener then sees the new identity. Before, the session went on as the
// old tenant's until it happened to end.
func TestOwnIdentityChangeRedials(t *testing.T) {
	oldID := IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "alice"}
	newID := IssueRequest{Tenant: "globex", Role: RoleAgent, Name: "alice"}
	r := newOwnIdentityRig(t, oldID)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sessions := make(chan *Session, 4)
	type disconnect struct {
		err  error
		wait time.Duration
	}
	var (
		mu          sync.Mutex
		disconnects []disconnect
		sleeps      int
	)
	red := &Redialer{
		Addr:   r.ln.Addr().String(),
		Config: DialConfig{Credentials: r.creds, ServerName: serverName, ServerRoles: []string{RoleRelay}, Hello: Hello{Role: RoleAgent}},
		OnSession: func(ctx context.Context, s *Session) error {
			sessions <- s
			return sessionLife(ctx, s)
		},
		OnDisconnect: func(err error, retryIn time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			disconnects = append(disconnects, disconnect{err, retryIn})
		},
		sleep: func(context.Context, time.Duration, <-chan struct{}) bool {
			mu.Lock()
			defer mu.Unlock()
			sleeps++
			return false
		},
	}
	runRedialer(t, ctx, cancel, red)

	first := waitEvent(t, sessions)
	server1 := r.nextAccepted(t, "first dial")
	if got := server1.Peer().String(); got != "acme/agent/alice" {
		t.Fatalf("the listener saw %s, want acme/agent/alice", got)
	}

	r.switchTo(t, newID)
	const reason = "own identity changed: acme/agent/alice -> globex/agent/alice"
	select {
	case <-first.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the session dialed as acme/agent/alice is still open 5 s after the switch to globex/agent/alice")
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](first.Err()); !ok || ae.Remote || ae.ErrorMessage != reason {
		t.Fatalf("the dialer's session ended with %v, want its own %q", first.Err(), reason)
	}
	if first.Revoked() {
		t.Error("a session ended for its own new identity reports Revoked: its server is still trusted")
	}
	select {
	case <-server1.Done():
		if ae, ok := errors.AsType[*quic.ApplicationError](server1.Err()); !ok || !ae.Remote || ae.ErrorMessage != reason {
			t.Errorf("the listener's end ended with %v, want the dialer's %q", server1.Err(), reason)
		}
	case <-time.After(5 * time.Second):
		t.Error("the listener's end of the old session is still open")
	}

	second := waitEvent(t, sessions)
	server2 := r.nextAccepted(t, "redial")
	if got := server2.Peer().String(); got != "globex/agent/alice" {
		t.Errorf("the redial presented %s, want globex/agent/alice", got)
	}
	select {
	case <-second.Done():
		t.Fatalf("the redialed session ended: %v", second.Err())
	default:
	}
	mu.Lock()
	defer mu.Unlock()
	if sleeps != 0 {
		t.Errorf("the Redialer waited %d times before the redial, want it to redial at once", sleeps)
	}
	if len(disconnects) != 1 {
		t.Fatalf("%d disconnects, want 1: %v", len(disconnects), disconnects)
	}
	var changed *OwnIdentityChangedError
	if d := disconnects[0]; !errors.Is(d.err, ErrOwnIdentityChanged) || !errors.As(d.err, &changed) || changed.Error() != reason || d.wait != 0 {
		t.Errorf("OnDisconnect(%v, %v), want (%q, 0)", d.err, d.wait, reason)
	}
}

// TestOwnIdentityRenewalKeepsDialedSession: a renewal, a new certificate
// and key of the same identity, keeps the dialer's live session: only a
// switch to another identity ends it.
func TestOwnIdentityRenewalKeepsDialedSession(t *testing.T) {
	id := IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "alice"}
	r := newOwnIdentityRig(t, id)
	s := dialWith(t, r.ln, DialConfig{Credentials: r.creds, ServerName: serverName, ServerRoles: []string{RoleRelay}})
	server := r.nextAccepted(t, "dial")
	before := r.creds.Certificate()

	r.switchTo(t, id)
	if r.creds.Certificate() == before || r.creds.Certificate().SerialNumber.Cmp(before.SerialNumber) == 0 {
		t.Fatal("the reload did not switch to the renewed certificate")
	}
	if err := exchangeDatagram(s, server, 1); err != nil {
		t.Fatalf("after the renewal, dialer to listener: %v", err)
	}
	if err := exchangeDatagram(server, s, 2); err != nil {
		t.Fatalf("after the renewal, listener to dialer: %v", err)
	}
	select {
	case <-s.Done():
		t.Fatalf("a renewal of the same identity ended the session: %v", s.Err())
	default:
	}
}

// TestDialEndsOnOwnIdentityChangeDuringHello: a switch to another own
// identity between the TLS handshake (which presented the old one) and
// the welcome makes Dial end the session and return
// ErrOwnIdentityChanged, for a Redialer to dial again at once; before,
// it returned a session of the old identity that no recheck would end.
func TestDialEndsOnOwnIdentityChangeDuringHello(t *testing.T) {
	f := newTLSFixture(t)
	ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: f.relay(CredentialsConfig{})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	certFile, keyFile := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "alice"})
	creds := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: f.caFile})
	server, finishDial := dialHeldAtWelcome(t, ln, DialConfig{Credentials: creds, ServerName: serverName, Hello: Hello{Role: RoleAgent}})
	// TLS handshaken as acme/agent/alice; the welcome not sent yet.
	certPEM, keyPEM, err := f.ca.Issue(IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	replace(t, keyFile, keyPEM)
	replace(t, certFile, certPEM)
	if err := creds.Reload(); err != nil {
		t.Fatal(err)
	}
	s, err := finishDial()
	if err == nil {
		s.Close("test over")
		t.Fatal("the dial returned a session of an own identity the credentials no longer present")
	}
	const reason = "own identity changed: acme/agent/alice -> acme/agent/bob"
	var changed *OwnIdentityChangedError
	if !errors.Is(err, ErrOwnIdentityChanged) || !errors.As(err, &changed) || changed.Error() != reason {
		t.Fatalf("dial: %v, want %q", err, reason)
	}
	select {
	case <-server.Done():
		if ae, ok := errors.AsType[*quic.ApplicationError](server.Err()); !ok || ae.ErrorMessage != reason {
			t.Errorf("the listener's end ended with %v, want %q", server.Err(), reason)
		}
	case <-time.After(5 * time.Second):
		t.Error("the listener's end is still open")
	}
}

// TestOwnIdentityKey: what a switch compares of the own certificate is its
// identity, and for a certificate of the original system the services it
// grants too (its rights; a legacy identity's name is only its common
// name), whatever their order; none without a ztgate identity.
func TestOwnIdentityKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b *x509.Certificate
		same bool
	}{
		{"renewal", certWith("x", []string{"ztna://acme/agent/alice"}), certWith("y", []string{"ztna://acme/agent/alice"}), true},
		{"another tenant", certWith("alice", []string{"ztna://acme/agent/alice"}), certWith("alice", []string{"ztna://globex/agent/alice"}), false},
		{"another name", certWith("", []string{"ztna://acme/agent/alice"}), certWith("", []string{"ztna://acme/agent/bob"}), false},
		{"legacy, services reordered", certWith("laptop", nil, "agent.web.ztna", "agent.mail.ztna"), certWith("laptop", nil, "agent.mail.ztna", "agent.web.ztna"), true},
		{"legacy, a service more", certWith("laptop", nil, "agent.web.ztna"), certWith("laptop", nil, "agent.web.ztna", "agent.mail.ztna"), false},
		{"legacy to a ztgate identity", certWith("laptop", nil, "agent.web.ztna"), certWith("", []string{"ztna://default/agent/laptop"}), false},
		{"no identity either", certWith("a", nil), certWith("b", nil), true},
		{"an identity to none", certWith("", []string{"ztna://acme/agent/alice"}), nil, false},
	} {
		a, b := ownIdentity(tc.a), ownIdentity(tc.b)
		if (a == b) != tc.same {
			t.Errorf("%s: %q and %q, want same=%v", tc.name, a, b, tc.same)
		}
	}
	if got := ownName(ownIdentity(nil)); got != "none" {
		t.Errorf("no certificate is named %q, want none", got)
	}
}
