package gateway

import (
	"fmt"
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
	addr, sessions := fakeRelay(t, dir, ca)
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
`, dir, addr, filepath.Join(dir, "gw.crt"), filepath.Join(dir, "gw.key"), filepath.Join(dir, "ca.crt"))))
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
	var s *tunnel.Session
	select {
	case s = <-sessions:
	case <-time.After(10 * time.Second):
		gw.Close()
		t.Fatal("the gateway did not connect to the relay")
	}
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
