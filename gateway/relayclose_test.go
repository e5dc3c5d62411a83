package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// TestCloseWithLiveRelaySession checks that a gateway attached to a relay
// that is still up closes at once: the relay session's control loop reads
// until the session ends, so Close must end it (before, Close waited until
// the relay went away, and `ztgate gateway` gave up after its 5 s grace).
func TestCloseWithLiveRelaySession(t *testing.T) {
	dir := t.TempDir()
	_, ca := writePKI(t, dir)
	relayCrt, relayKey, err := ca.Issue(tunnel.IssueRequest{Tenant: "infra", Role: tunnel.RoleRelay, Name: "relay1",
		IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"relay.crt": relayCrt, "relay.key": relayKey} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	creds, err := tunnel.NewCredentials(tunnel.CredentialsConfig{CertFile: filepath.Join(dir, "relay.crt"),
		KeyFile: filepath.Join(dir, "relay.key"), CAFile: filepath.Join(dir, "ca.crt")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tunnel.Listen("127.0.0.1:0", tunnel.ListenConfig{Credentials: creds}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sessions := make(chan *tunnel.Session, 1)
	go func() {
		s, err := ln.Accept(ctx)
		if err != nil {
			close(sessions)
			return
		}
		s.SendWelcome(tunnel.Welcome{MaxPacket: 1200})
		sessions <- s
	}()

	cfg, err := conf.ParseGateway("test.toml", []byte(fmt.Sprintf(`
[gateway]
name = "gw1"
state_dir = %q
[api]
listen = "off"
[tunnel]
relay = %q
cert = %q
key = %q
ca = %q
`, dir, ln.Addr().String(), filepath.Join(dir, "gw.crt"), filepath.Join(dir, "gw.key"), filepath.Join(dir, "ca.crt"))))
	if err != nil {
		t.Fatal(err)
	}
	gw, err := New(cfg, Options{Pinger: fakePinger{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	s, ok := <-sessions
	if !ok {
		gw.Close()
		t.Fatal("the gateway did not connect to the relay")
	}
	defer s.Close("test over")
	if _, err := tunnel.DecodeControl(s.Next()); err != nil { // the register
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	start := time.Now()
	go func() { closed <- gw.Close() }()
	select {
	case <-closed:
		if d := time.Since(start); d > time.Second {
			t.Errorf("Close took %v", d)
		}
	case <-time.After(5 * time.Second):
		s.Close("test gives up") // lets Close return, so that nothing leaks
		<-closed
		t.Fatal("Close did not return within 5 s while the relay session was up")
	}
}
