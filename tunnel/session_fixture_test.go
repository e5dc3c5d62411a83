package tunnel

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
)

// testTimeout bounds every wait of the session tests.
const testTimeout = 15 * time.Second

// sessionFixture is a listener on loopback with our test PKI.
type sessionFixture struct {
	t   *testing.T
	f   *tlsFixture
	reg *prometheus.Registry
	ln  *Listener
}

// newSessionFixture listens on 127.0.0.1 with a relay certificate; cfg's
// Insecure switch and ALPN apply.
func newSessionFixture(t *testing.T, insecure bool, alpn ...string) *sessionFixture {
	t.Helper()
	sf := &sessionFixture{t: t, f: newTLSFixture(t), reg: prometheus.NewRegistry()}
	creds := sf.f.relay(CredentialsConfig{Insecure: insecure})
	ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: creds, ALPN: alpn, Registerer: sf.reg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sf.ln = ln
	return sf
}

// addr is the listener's address.
func (sf *sessionFixture) addr() string { return sf.ln.Addr().String() }

// agentCreds issues an agent certificate of tenant acme from our CA.
func (sf *sessionFixture) agentCreds() *Credentials {
	return sf.f.agentCreds(sf.f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
}

// dialConfig is a client configuration for the fixture's listener.
func (sf *sessionFixture) dialConfig(creds *Credentials, alpn ...string) DialConfig {
	return DialConfig{
		Credentials: creds,
		ServerName:  serverName,
		ALPN:        alpn,
		Hello:       Hello{Role: RoleAgent, Name: "laptop", InnerAddr: netip.MustParseAddr("100.64.0.1")},
		Registerer:  sf.reg,
	}
}

// connect dials the listener and accepts the session; a v2 server answers
// welcome. Both ends are closed when the test ends.
func (sf *sessionFixture) connect(cfg DialConfig) (client, server *Session) {
	sf.t.Helper()
	return sf.connectVia(sf.addr(), cfg)
}

// connectVia is connect with the client dialing addr, e.g. a proxy.
func (sf *sessionFixture) connectVia(addr string, cfg DialConfig) (client, server *Session) {
	sf.t.Helper()
	client, server, err := sf.dialAccept(addr, cfg, testTimeout)
	if err != nil {
		sf.t.Fatal(err)
	}
	return client, server
}

// dialAccept dials addr and accepts the session on the fixture's listener
// (welcomed, for ztna-v2), within d. The sessions it returns, and any it
// got when the other side failed, close at the end of the test.
func (sf *sessionFixture) dialAccept(addr string, cfg DialConfig, d time.Duration) (client, server *Session, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	type dialed struct {
		s   *Session
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		s, err := Dial(ctx, addr, cfg, nil)
		done <- dialed{s, err}
	}()
	server, aerr := sf.ln.Accept(ctx)
	if aerr == nil {
		sf.t.Cleanup(func() { server.Close("test over") })
		if server.Version() == V2 {
			if werr := server.SendWelcome(Welcome{MaxPacket: 1200}); werr != nil {
				aerr = fmt.Errorf("welcome: %w", werr)
			}
		}
	}
	dd := <-done
	if dd.s != nil {
		sf.t.Cleanup(func() { dd.s.Close("test over") })
	}
	switch {
	case aerr != nil:
		return nil, nil, fmt.Errorf("accept: %w", aerr)
	case dd.err != nil:
		return nil, nil, fmt.Errorf("dial: %w", dd.err)
	}
	return dd.s, server, nil
}

// receive returns the next datagram that is not a QAD.
func receive(t *testing.T, s *Session) []byte {
	t.Helper()
	return receiveFirst(t, s, "receive", func(b []byte) bool { return Kind(b) != TypeQAD })
}

// receiveFirst returns the session's next datagram that want takes,
// releasing those before it; what names the wait in a failure.
func receiveFirst(t *testing.T, s *Session, what string, want func([]byte) bool) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for {
		b, err := s.ReceiveDatagram(ctx)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if want(b) {
			return b
		}
		ReleaseDatagram(b)
	}
}

// rawDial makes a QUIC connection with a hand-made TLS configuration, for
// clients our Credentials cannot express (no certificate at all).
func rawDial(t *testing.T, addr string, tlsConf *tls.Config) (*quic.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, tlsConf, quicConfig(false))
	if err == nil {
		t.Cleanup(func() { conn.CloseWithError(0, "") })
	}
	return conn, err
}

// waitCounter waits until a counter reaches want.
func waitCounter(t *testing.T, c prometheus.Collector, want float64) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for testutil.ToFloat64(c) < want {
		if time.Now().After(deadline) {
			t.Fatalf("counter at %v, want %v", testutil.ToFloat64(c), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ip4Packet returns a datagram of n bytes (at least 20) that looks like an
// IPv4 packet of that length.
func ip4Packet(n int, fill byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = fill
	}
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(n))
	return b
}

// equalJSON reports whether a and b encode to the same JSON.
func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(ja) == string(jb)
}
