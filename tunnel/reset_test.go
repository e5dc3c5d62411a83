package tunnel

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestStatelessResetKey: the key follows the certificate's private key,
// so a restarted listener with the same files has the same one.
func TestStatelessResetKey(t *testing.T) {
	f := newTLSFixture(t)
	certFile, keyFile := f.relayFiles("relay1")
	load := func(cert, key string) [32]byte {
		k := f.creds(CredentialsConfig{CertFile: cert, KeyFile: key, CAFile: f.caFile}).statelessResetKey()
		if k == nil {
			t.Fatal("no stateless reset key")
		}
		return *k
	}
	other, otherKey := f.relayFiles("relay2")
	cases := []struct {
		name       string
		cert, key  string
		sameAsBase bool
	}{
		{"same files, another process", certFile, keyFile, true},
		{"another key", other, otherKey, false},
	}
	base := load(certFile, keyFile)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := load(tc.cert, tc.key) == base; got != tc.sameAsBase {
				t.Fatalf("same key: %v, want %v", got, tc.sameAsBase)
			}
		})
	}
}

// TestCrashedListenerResets crashes a listener (its socket closes without
// a word to its peers) and starts another on the same port with the same
// credentials, as a restarted relay: the client learns at its next data
// packet that its session is gone, long before its idle timeout. (quic-go
// answers only packets over 42 bytes with a stateless reset, so that a
// reset never triggers another: a bare keepalive does not qualify, a
// packet carrying an IP packet does.)
func TestCrashedListenerResets(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, _ := sf.connect(sf.dialConfig(sf.agentCreds()))
	addr := sf.addr()
	sf.ln.udp.Close() // the crash: no CONNECTION_CLOSE leaves
	restarted := restartExpectingReset(t, client, addr, ListenConfig{Credentials: sf.ln.creds})
	// And it can connect to the new listener.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	go func() {
		if s, err := restarted.Accept(ctx); err == nil {
			s.SendWelcome(Welcome{MaxPacket: 1200})
			<-ctx.Done()
			s.Close("test over")
		}
	}()
	s, err := Dial(ctx, addr, sf.dialConfig(sf.agentCreds()), nil)
	if err != nil {
		t.Fatalf("redial: %v", err)
	}
	s.Close("test over")
}

// TestCrashedListenerResetsAfterKeyRotation: a listener whose reset key is
// kept in its state directory (ResetKeyFile) crashes after its
// certificate's key was rotated (a SIGHUP to new files), and comes back
// with the new files: its peers still learn at their next packet that
// their sessions are gone. With the key derived from the certificate's
// key, the new process's resets did not match the tokens the peers had,
// and they waited for their idle timeout (IdleTimeout, 30 s).
func TestCrashedListenerResetsAfterKeyRotation(t *testing.T) {
	sf := newSessionFixture(t, false)
	keyFile := ResetKeyFile(t.TempDir())
	ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: sf.ln.creds, ResetKeyFile: keyFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sf.ln.Close()
	sf.ln = ln
	client, _ := sf.connect(sf.dialConfig(sf.agentCreds()))
	addr := sf.addr()
	ln.udp.Close() // the crash: no CONNECTION_CLOSE leaves
	rotated := sf.f.relay(CredentialsConfig{})
	if *rotated.statelessResetKey() == *sf.ln.creds.statelessResetKey() {
		t.Fatal("the rotated certificate has the same key")
	}
	restartExpectingReset(t, client, addr, ListenConfig{Credentials: rotated, ResetKeyFile: keyFile})
}

// restartExpectingReset listens on addr again with cfg, a restarted
// process after a crash, and fails t unless client's next packet, which
// reaches the new process, ends its session with a stateless reset long
// before its idle timeout. The listener closes when the test ends.
func restartExpectingReset(t *testing.T, client *Session, addr string, cfg ListenConfig) *Listener {
	t.Helper()
	restarted, err := Listen(addr, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restarted.Close() })
	start := time.Now()
	client.SendDatagram(ip4Packet(60, 0))
	select {
	case <-client.Done():
		t.Logf("the client saw its session end %v after the restart: %v", time.Since(start).Round(time.Millisecond), client.Err())
	case <-time.After(IdleTimeout / 2):
		t.Fatal("the client still believes in its session: the restarted listener's resets do not match its tokens")
	}
	return restarted
}

// TestLoadResetKey: the key file is made at the first start (owner-only),
// read as it is after, and made anew when it is not a key.
func TestLoadResetKey(t *testing.T) {
	file := ResetKeyFile(filepath.Join(t.TempDir(), "state"))
	first, err := loadResetKey(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	again, err := loadResetKey(file)
	if err != nil || *again != *first {
		t.Fatalf("read again: %v, same key %v", err, err == nil && *again == *first)
	}
	if err := os.WriteFile(file, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if anew, err := loadResetKey(file); err != nil || *anew == *first {
		t.Fatalf("a file that is not a key: %v, key kept %v", err, err == nil && *anew == *first)
	}
	if b, _ := os.ReadFile(file); len(b) != 32 {
		t.Errorf("the key file holds %d bytes after it was made anew", len(b))
	}
}
