package tunnel

import (
	"context"
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
	restarted, err := Listen(addr, ListenConfig{Credentials: sf.ln.creds}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer restarted.Close()
	start := time.Now()
	// The client's next packet reaches the new process.
	client.SendDatagram(ip4Packet(60, 0))
	select {
	case <-client.Done():
		t.Logf("the client saw its session end %v after the restart: %v", time.Since(start).Round(time.Millisecond), client.Err())
	case <-time.After(IdleTimeout / 2):
		t.Fatal("the client still believes in its session")
	}
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
