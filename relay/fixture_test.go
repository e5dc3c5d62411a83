package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Names and timing of the relay tests.
const (
	serverName  = "relay.test"
	testTimeout = 15 * time.Second
)

var innerAddr = netip.MustParseAddr("100.64.0.1")

// pki is a throwaway CA and a directory of certificate files.
type pki struct {
	t     testing.TB
	dir   string
	ca    *tunnel.CA
	other *tunnel.CA
	files int
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	ca, err := tunnel.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := tunnel.NewCA("foreign CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{t: t, dir: t.TempDir(), ca: ca, other: other}
}

// write stores data in a new file.
func (p *pki) write(name string, data []byte) string {
	p.t.Helper()
	p.files++
	path := filepath.Join(p.dir, fmt.Sprintf("%d-%s", p.files, name))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// issue writes a certificate of ca for req and returns its files.
func (p *pki) issue(ca *tunnel.CA, req tunnel.IssueRequest) (certFile, keyFile string) {
	p.t.Helper()
	c, k, err := ca.Issue(req)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.write("leaf.crt", c), p.write("leaf.key", k)
}

// creds issues client credentials of ca for req, trusting our CA.
func (p *pki) creds(ca *tunnel.CA, req tunnel.IssueRequest) *tunnel.Credentials {
	p.t.Helper()
	certFile, keyFile := p.issue(ca, req)
	c, err := tunnel.NewCredentials(tunnel.CredentialsConfig{
		CertFile: certFile, KeyFile: keyFile, CAFile: p.write("ca.crt", p.ca.CertPEM()),
	}, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

// identity issues credentials for ztna://tenant/role/name from our CA.
func (p *pki) identity(tenant, role, name string) *tunnel.Credentials {
	return p.creds(p.ca, tunnel.IssueRequest{Tenant: tenant, Role: role, Name: name})
}

// relayConfig is a relay configuration with a fresh server certificate,
// listening on ephemeral loopback ports, keeping state in stateDir.
func (p *pki) relayConfig(stateDir string) *conf.Relay {
	certFile, keyFile := p.issue(p.ca, tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleRelay, Name: "relay1",
		DNSNames: []string{serverName}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	return &conf.Relay{
		Name: "relay1", Listen: "127.0.0.1:0", StateDir: stateDir,
		Pool: netip.MustParsePrefix("10.100.0.0/24"), Zone: "ztna.internal.", TTL: 30 * time.Second,
		Cert: certFile, Key: keyFile, CA: p.write("ca.crt", p.ca.CertPEM()),
		VIPHoldDown: 30 * time.Second,
		API:         conf.API{Listen: netip.MustParseAddrPort("127.0.0.1:0")},
	}
}

// startRelay starts a relay; it is closed when the test ends.
func startRelay(t testing.TB, cfg *conf.Relay) *Relay {
	t.Helper()
	return startRelayWith(t, cfg, Options{})
}

// startRelayWith is startRelay with options.
func startRelayWith(t testing.TB, cfg *conf.Relay, opts Options) *Relay {
	t.Helper()
	r, err := New(cfg, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// client is a test peer: a session and what it received.
type client struct {
	t    testing.TB
	s    *tunnel.Session
	msgs chan any    // control messages
	dgs  chan []byte // datagrams other than QAD
	wg   sync.WaitGroup
	// silent stops the automatic pong to the relay's pings, as a gateway
	// that hangs.
	silent atomic.Bool
	// qad is the last observed-address datagram received, as it came.
	qad atomic.Pointer[[]byte]
	// id is the relay's id of a ztna-v1 session, which has no welcome to
	// tell it: set by the tests that need it (sid).
	id uint64
}

// dial connects a client; its readers run until the session ends, which
// the test's cleanup forces.
func dial(t testing.TB, addr string, creds *tunnel.Credentials, hello tunnel.Hello, alpn ...string) (*client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s, err := tunnel.Dial(ctx, addr, tunnel.DialConfig{Credentials: creds, ServerName: serverName, ALPN: alpn, Hello: hello}, nil)
	if err != nil {
		return nil, err
	}
	c := &client{t: t, s: s, msgs: make(chan any, 256), dgs: make(chan []byte, 1024)}
	c.wg.Go(c.readDatagrams)
	if s.Version() == tunnel.V2 {
		c.wg.Go(c.readMessages)
	}
	t.Cleanup(c.close)
	return c, nil
}

// mustDial is dial that fails the test on error.
func mustDial(t testing.TB, addr string, creds *tunnel.Credentials, hello tunnel.Hello, alpn ...string) *client {
	t.Helper()
	c, err := dial(t, addr, creds, hello, alpn...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return c
}

func (c *client) close() {
	_ = c.s.Close("test over")
	c.wg.Wait()
}

func (c *client) readDatagrams() {
	for {
		b, err := c.s.ReceiveDatagram(context.Background())
		if err != nil {
			return
		}
		if tunnel.Kind(b) == tunnel.TypeQAD {
			c.qad.Store(&b)
			continue
		}
		select {
		case c.dgs <- b:
		default: // a test that does not read them does not care
		}
	}
}

func (c *client) readMessages() {
	for {
		msg, err := tunnel.DecodeControl(c.s.Next())
		if err != nil {
			if _, ok := tunnel.ReplyFor(err); ok {
				continue
			}
			return
		}
		if ping, ok := msg.(*tunnel.Ping); ok {
			if !c.silent.Load() {
				_ = c.s.Send(&tunnel.Pong{Type: tunnel.MessagePong, Seq: ping.Seq})
			}
			continue
		}
		select {
		case c.msgs <- msg:
		case <-c.s.Done():
			return
		}
	}
}

// next waits for the next control message of type T, skipping others.
func next[T any](c *client) *T {
	c.t.Helper()
	deadline := time.After(testTimeout)
	for {
		select {
		case m := <-c.msgs:
			if v, ok := m.(*T); ok {
				return v
			}
		case <-deadline:
			var zero T
			c.t.Fatalf("no %T message", zero)
			return nil
		}
	}
}

// datagram waits for the next datagram.
func (c *client) datagram() []byte {
	c.t.Helper()
	select {
	case b := <-c.dgs:
		return b
	case <-time.After(testTimeout):
		c.t.Fatal("no datagram")
		return nil
	}
}

// quiet reports whether no datagram arrives within d.
func (c *client) quiet(d time.Duration) bool {
	select {
	case <-c.dgs:
		return false
	case <-time.After(d):
		return true
	}
}

// gatewayHello and agentHello are the hellos of test peers.
func gatewayHello(name string) tunnel.Hello {
	return tunnel.Hello{Role: tunnel.RoleGateway, Name: name}
}
func agentHello(name string) tunnel.Hello {
	return tunnel.Hello{Role: tunnel.RoleAgent, Name: name, InnerAddr: innerAddr}
}

// svc describes a service for a registration.
func svc(name string, tenants ...string) tunnel.ServiceInfo {
	return tunnel.ServiceInfo{Name: name, Tenants: tenants, Healthy: true,
		Ports: []tunnel.PortInfo{{Protocol: "udp", Port: 7}}}
}

// register sends a registration and returns the relay's answer.
func (c *client) register(services ...tunnel.ServiceInfo) *tunnel.Assign {
	c.t.Helper()
	if services == nil {
		services = []tunnel.ServiceInfo{}
	}
	if err := c.s.Send(&tunnel.Register{Type: tunnel.MessageRegister, Services: services}); err != nil {
		c.t.Fatal(err)
	}
	return next[tunnel.Assign](c)
}

// vipOf returns the VIP an assign gave service.
func vipOf(a *tunnel.Assign, service string) netip.Addr {
	for _, v := range a.VIPs {
		if v.Service == service {
			return v.VIP
		}
	}
	return netip.Addr{}
}

// udpPacket builds an IPv4/UDP packet (checksums are not looked at).
func udpPacket(src, dst netip.AddrPort, payload string) []byte {
	p := make([]byte, 28, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(28+len(payload)))
	p[8], p[9] = 64, 17
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	return append(p, payload...)
}

// payload returns a UDP packet's payload.
func payload(p []byte) string {
	if len(p) < 28 {
		return ""
	}
	return string(p[28:])
}

// send routes a packet to service as 0x2F.
func (c *client) send(service string, packet []byte) {
	c.t.Helper()
	b, err := tunnel.AppendRouted(nil, service, packet)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.s.SendDatagram(b); err != nil && !errors.Is(err, context.Canceled) {
		c.t.Fatal(err)
	}
}

// echo makes a fake gateway answer every 0x30 with a 0x31 of the same tag
// and the addresses swapped, until its session ends.
func (c *client) echo() {
	c.wg.Go(func() {
		for {
			var b []byte
			select {
			case b = <-c.dgs:
			case <-c.s.Done():
				return
			}
			tag, _, packet, err := tunnel.ParseTagged(b)
			if err != nil || len(packet) < 20 {
				continue
			}
			reply := append([]byte(nil), packet...)
			copy(reply[12:16], packet[16:20])
			copy(reply[16:20], packet[12:16])
			_ = c.s.SendDatagram(tunnel.AppendTagReturn(nil, tag, reply))
		}
	})
}

// counter reads a relay drop counter.
func dropped(r *Relay, reason dropReason) float64 { return testutil.ToFloat64(r.m.drops[reason]) }

// waitFor polls cond until it holds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
