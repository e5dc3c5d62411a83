package tunnel

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/testlog"
)

// TestInsecureClientUnverifiedServerHasNoPeer: Session.Peer is documented
// as zero when the peer has no identity that verifies; an insecure client
// without a CA verifies no server at all, so a server certificate from any
// CA claiming to be a relay must not become the session's Peer (the agent
// shows it in its status, whose comment says "none from an unverified
// server", and offers direct paths only to a Peer of role relay).
func TestInsecureClientUnverifiedServerHasNoPeer(t *testing.T) {
	f := newTLSFixture(t)
	cert, key := f.leaf(f.other, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "impostor",
		DNSNames: []string{serverName}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: f.creds(CredentialsConfig{
		CertFile: cert, KeyFile: key, CAFile: f.caFile, Insecure: true})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		_ = s.SendWelcome(Welcome{})
	}()
	client := f.creds(CredentialsConfig{Insecure: true})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	logs := &lockedBuffer{} // the session's goroutines log to it too
	s, err := Dial(ctx, ln.Addr().String(), DialConfig{Credentials: client, ServerName: serverName}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close("done")
	if p := s.Peer(); p.Tenant != "" {
		t.Errorf("an unverified server's claimed identity became the session's Peer: %s", p)
	}
	// Each connection says so, as the listener's side does for its clients.
	if !strings.Contains(logs.String(), "INSECURE: tunnel server not verified") {
		t.Errorf("the dial of an unverified server does not log INSECURE:\n%s", logs.String())
	}
}

// lockedBuffer is a log's destination that goroutines share.
type lockedBuffer = testlog.Buffer
