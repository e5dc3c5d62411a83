package gateway

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// TestRelaySessionEndsOnOwnIdentityChange: the gateway's certificate
// replaced by one of another identity (SIGHUP) ends its session to the
// relay ("own identity changed: <old> -> <new>"), and the gateway is back
// on the relay as the new identity, registering its services again, as
// after any disconnect.
func TestRelaySessionEndsOnOwnIdentityChange(t *testing.T) {
	pki := t.TempDir()
	_, ca := writePKI(t, pki)
	addr, sessions := fakeRelay(t, pki, ca)
	section := fmt.Sprintf("[tunnel]\nrelay = %q\ncert = %q\nkey = %q\nca = %q\n",
		addr, filepath.Join(pki, "gw.crt"), filepath.Join(pki, "gw.key"), filepath.Join(pki, "ca.crt"))
	h := newFileHarnessLog(t, quietGateway+twoTenants+section, slog.New(slog.DiscardHandler))
	session := func() *tunnel.Session {
		t.Helper()
		select {
		case s := <-sessions:
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("the gateway did not connect to its relay")
			return nil
		}
	}
	first := session()
	if got := first.Peer().String(); got != "infra/gateway/gw1" {
		t.Fatalf("the gateway connected as %s", got)
	}

	crt, key, err := ca.Issue(tunnel.IssueRequest{Tenant: "infra", Role: tunnel.RoleGateway, Name: "gw2",
		IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"gw.crt": crt, "gw.key": key} {
		if err := os.WriteFile(filepath.Join(pki, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.gw.ReloadCredentials(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.Done():
		want := "own identity changed: infra/gateway/gw1 -> infra/gateway/gw2"
		if err := first.Err(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("the relay session ended with %v, want %q", err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the relay session of the old identity is still up")
	}
	second := session()
	if got := second.Peer().String(); got != "infra/gateway/gw2" {
		t.Fatalf("the gateway reconnected as %s", got)
	}
	msg, err := tunnel.DecodeControl(second.Next())
	if _, ok := msg.(*tunnel.Register); err != nil || !ok {
		t.Fatalf("the gateway's first message on the new session: %T, %v; want its registration", msg, err)
	}
}
