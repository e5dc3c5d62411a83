package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
)

func TestSessionV2HelloWelcome(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds()))

	if server.Version() != V2 || client.Version() != V2 {
		t.Fatalf("versions %v, %v", server.Version(), client.Version())
	}
	want := Hello{Type: MessageHello, Role: RoleAgent, Name: "laptop", InnerAddr: netip.MustParseAddr("100.64.0.1"), Padding: true}
	if server.Hello() != want || client.Hello() != want {
		t.Errorf("hello: server saw %+v, client sent %+v", server.Hello(), client.Hello())
	}
	if got := server.Peer(); got.String() != "acme/agent/laptop" || got.Legacy {
		t.Errorf("server sees peer %+v", got)
	}
	if got := client.Peer(); got.Role != RoleRelay || got.Name != "relay1" {
		t.Errorf("client sees peer %+v", got)
	}
	w := client.Welcome()
	if w.Session != server.ID() || w.MaxPacket != 1200 || w != server.Welcome() {
		t.Errorf("welcome %+v, server sent %+v (id %d)", w, server.Welcome(), server.ID())
	}
	if !w.Padding || !client.pad.Load() || !server.pad.Load() {
		t.Errorf("padding not agreed: welcome %v, client pads %v, server pads %v", w.Padding, client.pad.Load(), server.pad.Load())
	}
	if w.Observed != server.RemoteAddr() || !w.Observed.Addr().IsLoopback() {
		t.Errorf("observed %v, server sees %v", w.Observed, server.RemoteAddr())
	}
	if client.ID() == server.ID() || client.ID() == 0 || client.ID() >= 1<<53 {
		t.Errorf("ids %d and %d", client.ID(), server.ID())
	}
	if v := testutil.ToFloat64(sf.ln.m.handshakes.WithLabelValues(sideServer, resultOK, reasonNone)); v != 1 {
		t.Errorf("server handshakes ok = %v", v)
	}
	if v := testutil.ToFloat64(sf.ln.m.sessionGauge(sideServer, V2)); v != 1 {
		t.Errorf("server sessions = %v", v)
	}
}

func TestSessionDatagrams(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds()))
	tests := []struct {
		name     string
		from, to *Session
	}{
		{"client to server", client, server},
		{"server to client", server, client},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for i, n := range []int{20, 576, tc.from.MaxDatagram()} {
				p := ip4Packet(n, byte(i))
				if err := tc.from.SendDatagram(p); err != nil {
					t.Fatalf("send %d bytes: %v", n, err)
				}
				// Datagrams may be reordered only by loss; loopback keeps order.
				if got := receive(t, tc.to); !bytes.Equal(got, p) {
					t.Fatalf("received %d bytes, want %d", len(got), n)
				}
			}
		})
	}
}

func TestSessionMaxDatagram(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds()))
	for _, s := range []*Session{client, server} {
		n := s.MaxDatagram()
		// QUIC's minimum packet size bounds it from below, quic-go's
		// largest packet from above.
		if n < 1100 || n > 1452 {
			t.Fatalf("MaxDatagram = %d", n)
		}
		dropped := testutil.ToFloat64(s.m.dropLarge)
		err := s.SendDatagram(ip4Packet(n+1, 0))
		if _, ok := errors.AsType[*quic.DatagramTooLargeError](err); !ok {
			t.Fatalf("sending %d bytes: %v, want DatagramTooLargeError", n+1, err)
		}
		if got := testutil.ToFloat64(s.m.dropLarge); got != dropped+1 {
			t.Errorf("too_large drops %v, want %v", got, dropped+1)
		}
		if s.MaxDatagram() != n {
			t.Errorf("MaxDatagram changed from %d to %d", n, s.MaxDatagram())
		}
	}
}

func TestSessionControlMessages(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds()))
	tests := []struct {
		name     string
		from, to *Session
		msg      any
	}{
		{"register", client, server, &Register{Type: MessageRegister, Services: []ServiceInfo{{Name: "web", Tenants: []string{"*"}}}}},
		{"directory", server, client, &Directory{Type: MessageDirectory, Zone: "ztna.internal.", Services: []DirectoryService{{Name: "web"}}}},
		{"tag_close", server, client, &TagClose{Type: MessageTagClose, Tags: []uint32{7}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.from.Send(tc.msg); err != nil {
				t.Fatal(err)
			}
			got, err := DecodeControl(tc.to.Next())
			if err != nil {
				t.Fatal(err)
			}
			if !equalJSON(t, got, tc.msg) {
				t.Errorf("got %+v, want %+v", got, tc.msg)
			}
		})
	}
	t.Run("not a message", func(t *testing.T) {
		if err := client.Send(struct{ X int }{1}); !errors.Is(err, ErrMissingType) {
			t.Fatalf("send without type: %v", err)
		}
		// The stream is intact: the next message goes through.
		if err := client.Send(&Health{Type: MessageHealth, Services: map[string]bool{"web": true}}); err != nil {
			t.Fatal(err)
		}
		if typ, _, err := server.Next(); err != nil || typ != MessageHealth {
			t.Fatalf("next: %q, %v", typ, err)
		}
	})
}

func TestSessionV1(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds(), ALPNV1))
	if client.Version() != V1 || server.Version() != V1 {
		t.Fatalf("versions %v, %v", client.Version(), server.Version())
	}
	if server.Hello() != (Hello{}) {
		t.Errorf("v1 hello %+v", server.Hello())
	}
	if err := client.Send(&Health{Type: MessageHealth}); !errors.Is(err, ErrNoControlStream) {
		t.Errorf("send on v1: %v", err)
	}
	if _, _, err := server.Next(); !errors.Is(err, ErrNoControlStream) {
		t.Errorf("next on v1: %v", err)
	}
	reg, _ := AppendRegistration(nil, TypeAgentRegistration, "echo-service")
	routed, _ := AppendRouted(nil, "echo-service", ip4Packet(40, 1))
	tests := []struct {
		name string
		b    []byte
		typ  DatagramType
	}{
		{"registration 0x10", reg, TypeAgentRegistration},
		{"routed 0x2F", routed, TypeRouted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := client.SendDatagram(tc.b); err != nil {
				t.Fatal(err)
			}
			got := receive(t, server)
			d, err := Parse(server.Version(), got)
			if err != nil || d.Type != tc.typ || string(d.Service) != "echo-service" {
				t.Fatalf("parsed %+v, %v", d, err)
			}
		})
	}
}

func TestSessionQAD(t *testing.T) {
	for _, alpn := range []string{ALPNV1, ALPNV2} {
		t.Run(alpn, func(t *testing.T) {
			sf := newSessionFixture(t, false)
			client, server := sf.connect(sf.dialConfig(sf.agentCreds(), alpn))
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			b, err := client.ReceiveDatagram(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseQAD(b)
			if err != nil {
				t.Fatalf("first datagram %x: %v", b, err)
			}
			if got != server.RemoteAddr() {
				t.Errorf("QAD says %v, server sees %v", got, server.RemoteAddr())
			}
		})
	}
}

func TestSessionRefusals(t *testing.T) {
	sf := newSessionFixture(t, false)
	f := sf.f
	otherCA := f.agentCreds(f.other, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "intruder"})
	sanless := f.agentCreds(f.ca, IssueRequest{Name: "legacy-agent", NoIdentity: true})
	tests := []struct {
		name   string
		dial   func() error
		reason string
	}{
		{"no certificate", func() error {
			conn, err := rawDial(t, sf.addr(), &tls.Config{
				MinVersion: tls.VersionTLS13, RootCAs: rootPool(f.ca), ServerName: serverName, NextProtos: []string{ALPNV2},
			})
			if err == nil {
				<-conn.Context().Done()
				err = context.Cause(conn.Context())
			}
			return err
		}, ReasonNoCertificate},
		{"other CA", func() error {
			_, err := Dial(context.Background(), sf.addr(), sf.dialConfig(otherCA), nil)
			return err
		}, ReasonUnknownAuthority},
		{"SAN-less", func() error {
			_, err := Dial(context.Background(), sf.addr(), sf.dialConfig(sanless, ALPNV2), nil)
			return err
		}, ReasonNoIdentity},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			counter := sf.ln.m.handshakes.WithLabelValues(sideServer, resultRefused, tc.reason)
			before := testutil.ToFloat64(counter)
			if err := tc.dial(); err == nil {
				t.Fatal("client was not refused")
			}
			waitCounter(t, counter, before+1)
		})
	}
	n, err := testutil.GatherAndCount(sf.reg, "ztgate_tunnel_handshakes_total")
	if err != nil || n < len(tests) {
		t.Errorf("registry has %d handshake series, %v", n, err)
	}
}

func TestSessionRefuse(t *testing.T) {
	sf := newSessionFixture(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := Dial(ctx, sf.addr(), sf.dialConfig(sf.agentCreds()), nil)
		errc <- err
	}()
	server, err := sf.ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Refuse("wrong_role", "an agent certificate cannot be a gateway"); err != nil {
		t.Fatal(err)
	}
	err = <-errc
	re, ok := errors.AsType[*RefusedError](err)
	if !ok || re.Code != "wrong_role" || re.Message != "an agent certificate cannot be a gateway" {
		t.Fatalf("dial: %v", err)
	}
	<-server.Done()
	if server.Err() == nil {
		t.Error("no error after refusal")
	}
}

func TestSessionBadHello(t *testing.T) {
	sf := newSessionFixture(t, false)
	creds := sf.agentCreds()
	conn, err := rawDial(t, sf.addr(), creds.ClientConfig(serverName, ALPNV2))
	if err != nil {
		t.Fatal(err)
	}
	str, err := conn.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteMessage(str, &Register{Type: MessageRegister}); err != nil {
		t.Fatal(err)
	}
	msg, err := DecodeControl(NewReader(str).Next())
	if em, ok := msg.(*ErrorMessage); err != nil || !ok || em.Code != CodeBadMessage {
		t.Fatalf("answer %+v, %v", msg, err)
	}
	waitCounter(t, sf.ln.m.handshakes.WithLabelValues(sideServer, resultRefused, reasonBadHello), 1)
}

func TestSessionInsecure(t *testing.T) {
	sf := newSessionFixture(t, true)
	f := sf.f
	tests := []struct {
		name  string
		creds *Credentials
		peer  string
	}{
		{"our CA", sf.agentCreds(), "acme/agent/laptop"},
		{"other CA claims a tenant", f.agentCreds(f.other, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "intruder"}), ""},
		{"SAN-less", f.agentCreds(f.ca, IssueRequest{Name: "dev", NoIdentity: true}), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, server := sf.connect(sf.dialConfig(tc.creds))
			got := server.Peer()
			if (tc.peer == "" && got.Tenant != "") || (tc.peer != "" && got.String() != tc.peer) {
				t.Errorf("peer %+v, want %q", got, tc.peer)
			}
		})
	}
	// An insecure client with no file at all (an agent's
	// insecure_allow_unauthenticated alone): no certificate, the server
	// not verified; it reloads too.
	t.Run("no certificate, no CA", func(t *testing.T) {
		creds, err := NewCredentials(CredentialsConfig{Insecure: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if creds.Certificate() != nil {
			t.Error("a certificate from no file")
		}
		if err := creds.Reload(); err != nil {
			t.Fatal(err)
		}
		_, server := sf.connect(sf.dialConfig(creds))
		if got := server.Peer(); got.Tenant != "" {
			t.Errorf("peer %+v, want none", got)
		}
	})
}

func TestSessionCloseAndListenerClose(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds()))
	if client.Err() != nil {
		t.Fatalf("live session has error %v", client.Err())
	}
	if err := sf.ln.Close(); err != nil {
		t.Fatal(err)
	}
	<-client.Done()
	<-server.Done()
	ae, ok := errors.AsType[*quic.ApplicationError](client.Err())
	if !ok || !ae.Remote || ae.ErrorMessage != "server shutting down" {
		t.Errorf("client ended with %v", client.Err())
	}
	if err := client.Close("again"); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("close after end: %v", err)
	}
	if _, err := sf.ln.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("accept after close: %v", err)
	}
	if err := client.SendDatagram([]byte{0x45}); err == nil {
		t.Error("send on a closed session succeeded")
	}
	if v := testutil.ToFloat64(client.m.dropClosed); v < 1 {
		t.Errorf("closed drops = %v", v)
	}
}

// TestSessionPost: posted messages arrive in order and their writer goes
// once they are written, an invalid one is an error at once, a burst to a
// peer that reads is not taken for a stall, and a peer that stops reading
// its control stream never holds up the poster: Post returns at once, and
// once PostQueueBytes wait it closes the session with ErrPostBackedUp.
func TestSessionPost(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds()))
	for i := range 20 {
		if err := server.Post(&TagClose{Type: MessageTagClose, Tags: []uint32{uint32(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		got, err := DecodeControl(client.Next())
		if tc, ok := got.(*TagClose); err != nil || !ok || len(tc.Tags) != 1 || tc.Tags[0] != uint32(i) {
			t.Fatalf("message %d: %+v, %v", i, got, err)
		}
	}
	// The writer goroutine is gone once nothing waits.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		server.postMu.Lock()
		writing := server.postWriting
		server.postMu.Unlock()
		if !writing {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer of posts still runs with nothing to write")
		}
	}
	if err := server.Post(struct{ X int }{1}); !errors.Is(err, ErrMissingType) {
		t.Fatalf("post without type: %v", err)
	}
	big := &Directory{Type: MessageDirectory, Zone: strings.Repeat("x", MaxMessageSize)}
	if err := server.Post(big); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("post of an oversized message: %v", err)
	}

	t.Run("a burst to a peer that reads", func(t *testing.T) {
		const n = 20000 // tag_opens of a relay restart, say: about 1 MB
		read := make(chan int)
		go func() {
			for i := range n {
				if _, _, err := client.Next(); err != nil {
					read <- i
					return
				}
			}
			read <- n
		}()
		for i := range n {
			if err := server.Post(&TagOpen{Type: MessageTagOpen, Tag: uint32(i), Service: "web", Tenant: "acme",
				Identity: "acme/agent/laptop-with-a-long-name"}); err != nil {
				t.Fatalf("post %d: %v", i, err)
			}
		}
		if got := <-read; got != n {
			t.Fatalf("the peer read %d of %d messages", got, n)
		}
	})

	t.Run("a peer that does not read", func(t *testing.T) {
		// client reads nothing from here on: its stream's window fills,
		// then the queue.
		msg := &Directory{Type: MessageDirectory, Zone: strings.Repeat("z", 60<<10)}
		start := time.Now()
		var err error
		for i := 0; err == nil; i++ {
			if i > 2*PostQueueBytes/(60<<10) {
				t.Fatal("Post never found the queue full")
			}
			err = server.Post(msg)
		}
		if !errors.Is(err, ErrPostBackedUp) {
			t.Fatalf("post: %v, want ErrPostBackedUp", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("posting took %v: Post waited for the peer", d)
		}
		select {
		case <-server.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the session is still open")
		}
		if err := server.Post(&TagClose{Type: MessageTagClose}); err == nil {
			t.Error("post on a closed session succeeded")
		}
	})
}
