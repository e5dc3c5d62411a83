package agent

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds every wait of the agent tests.
const testTimeout = 10 * time.Second

var (
	innerAddr = netip.MustParseAddr("100.64.0.1")
	webVIP    = netip.MustParseAddr("10.100.0.10")
	upVIP     = netip.MustParseAddr("10.100.0.11")
)

// pki is a throwaway CA and its files.
type pki struct {
	t      *testing.T
	dir    string
	ca     *tunnel.CA
	caFile string
	n      int
}

func newPKI(t *testing.T) *pki {
	ca, err := tunnel.NewCA("agent test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{t: t, dir: t.TempDir(), ca: ca}
	p.caFile = p.write("ca.crt", ca.CertPEM())
	return p
}

func (p *pki) write(name string, data []byte) string {
	p.n++
	path := filepath.Join(p.dir, string(rune('a'+p.n))+"-"+name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// issue writes a certificate and key for req.
func (p *pki) issue(req tunnel.IssueRequest) (cert, key string) {
	c, k, err := p.ca.Issue(req)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.write("leaf.crt", c), p.write("leaf.key", k)
}

// creds loads credentials for req.
func (p *pki) creds(req tunnel.IssueRequest) *tunnel.Credentials {
	cert, key := p.issue(req)
	c, err := tunnel.NewCredentials(tunnel.CredentialsConfig{CertFile: cert, KeyFile: key, CAFile: p.caFile}, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

// server stands in for a relay or a gateway: it welcomes every session,
// answers pings (unless silent), and hands the test what it receives.
type server struct {
	t      *testing.T
	ln     *tunnel.Listener
	onOpen func(s *tunnel.Session) // after the welcome
	msgs   chan any
	dgs    chan []byte
	silent atomic.Bool
	mu     sync.Mutex
	last   *tunnel.Session // guarded by mu
	wg     sync.WaitGroup
}

// startServer listens on loopback with credentials for req.
func startServer(t *testing.T, p *pki, req tunnel.IssueRequest, onOpen func(*tunnel.Session)) *server {
	ln, err := tunnel.Listen("127.0.0.1:0", tunnel.ListenConfig{Credentials: p.creds(req)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sv := &server{t: t, ln: ln, onOpen: onOpen, msgs: make(chan any, 256), dgs: make(chan []byte, 1024)}
	ctx, cancel := context.WithCancel(context.Background())
	sv.wg.Go(func() {
		for {
			s, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			sv.serve(s)
		}
	})
	t.Cleanup(func() {
		cancel()
		ln.Close()
		sv.wg.Wait()
	})
	return sv
}

func (sv *server) addr() string { return sv.ln.Addr().String() }

// serve welcomes a session and reads it until it ends.
func (sv *server) serve(s *tunnel.Session) {
	if err := s.SendWelcome(tunnel.Welcome{MaxPacket: 1200}); err != nil {
		return
	}
	sv.mu.Lock()
	sv.last = s
	sv.mu.Unlock()
	if sv.onOpen != nil {
		sv.onOpen(s)
	}
	sv.wg.Go(func() {
		for {
			b, err := s.ReceiveDatagram(context.Background())
			if err != nil {
				return
			}
			if tunnel.Kind(b) != tunnel.TypeQAD {
				select {
				case sv.dgs <- b:
				default:
				}
			}
		}
	})
	sv.wg.Go(func() {
		for {
			msg, err := tunnel.DecodeControl(s.Next())
			if err != nil {
				if _, ok := tunnel.ReplyFor(err); ok {
					continue
				}
				return
			}
			if ping, ok := msg.(*tunnel.Ping); ok {
				if !sv.silent.Load() {
					_ = s.Send(&tunnel.Pong{Type: tunnel.MessagePong, Seq: ping.Seq})
				}
				continue
			}
			select {
			case sv.msgs <- msg:
			default:
			}
		}
	})
}

// session returns the last session the server accepted.
func (sv *server) session() *tunnel.Session {
	sv.t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		sv.mu.Lock()
		s := sv.last
		sv.mu.Unlock()
		if s != nil {
			return s
		}
		if time.Now().After(deadline) {
			sv.t.Fatal("no session")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// next waits for the next message of type T, skipping others.
func next[T any](t *testing.T, sv *server) *T {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		select {
		case m := <-sv.msgs:
			if v, ok := m.(*T); ok {
				return v
			}
		case <-deadline:
			var zero T
			t.Fatalf("no %T", zero)
			return nil
		}
	}
}

// await reports whether a 0x2F datagram that match accepts (its service
// and packet) reached sv within d.
func (sv *server) await(d time.Duration, match func(service string, pkt []byte) bool) bool {
	deadline := time.After(d)
	for {
		select {
		case b := <-sv.dgs:
			if svc, pkt, err := tunnel.ParseRouted(b); err == nil && match(string(svc), pkt) {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// routed reports whether a routed UDP packet with payload text reached sv
// within d.
func (sv *server) routed(text string, d time.Duration) bool {
	return sv.await(d, func(_ string, pkt []byte) bool { return packetText(pkt) == text })
}

// quietFor reports whether no 0x2F datagram for service reached sv in d.
func (sv *server) quietFor(service string, d time.Duration) bool {
	return !sv.await(d, func(svc string, _ []byte) bool { return svc == service })
}

// udpFlow opens a UDP flow from the agent's client stack to dst and sends
// text on it; the connection is closed when the test ends.
func udpFlow(t *testing.T, dev *netstacktest.Client, dst netip.AddrPort, text string) net.Conn {
	t.Helper()
	c, err := dev.DialUDP(innerAddr, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(text)); err != nil {
		t.Fatal(err)
	}
	return c
}

// packetText is a UDP packet's payload.
func packetText(p []byte) string {
	if len(p) < 28 || p[9] != tunnel.ProtoUDP {
		return ""
	}
	return string(p[28:])
}

// directoryOf is a relay directory with the web service (down unless
// webUp) and the up service.
func directoryOf(webUp bool) *tunnel.Directory {
	ports := []tunnel.PortInfo{{Protocol: "tcp", Port: 80}, {Protocol: "udp", Port: 7}}
	return &tunnel.Directory{
		Type: tunnel.MessageDirectory, Zone: "ztna.internal.", TTL: 30, Pool: netip.MustParsePrefix("10.100.0.0/24"),
		Services: []tunnel.DirectoryService{
			{Name: "web", VIP: webVIP, Ports: ports, ICMP: true, Healthy: webUp},
			{Name: "up", VIP: upVIP, Ports: ports, ICMP: true, Healthy: true},
		},
	}
}

// startAgent runs an agent against the relay at addr with a client stack
// as its TUN device.
func startAgent(t *testing.T, p *pki, relayAddr string) (*Agent, *netstacktest.Client) {
	return startAgentWith(t, p, relayAddr, nil)
}

// startAgentWith is startAgent with the configuration changed by edit.
func startAgentWith(t *testing.T, p *pki, relayAddr string, edit func(*conf.Agent)) (*Agent, *netstacktest.Client) {
	cfg := agentConfig(p, relayAddr)
	if edit != nil {
		edit(cfg)
	}
	return runAgent(t, cfg, nil)
}

// agentConfig is the configuration of the test agent laptop (tenant acme)
// dialling relayAddr.
func agentConfig(p *pki, relayAddr string) *conf.Agent {
	cert, key := p.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"})
	return &conf.Agent{
		Name:   "laptop",
		Tunnel: conf.Tunnel{Server: relayAddr, ServerName: "relay.test", Cert: cert, Key: key, CA: p.caFile},
		TUN: conf.TUN{Name: "test", MTU: 1280, Pool: netip.MustParsePrefix("10.100.0.0/24"), Address: innerAddr,
			Enabled: true},
		DNS: conf.DNS{Zone: "ztna.internal.", TTL: 30 * time.Second},
	}
}

// runAgent starts an agent on cfg, logging to log (nil: nowhere), with a
// client stack as its TUN device, and returns it once it has its
// directory; the test's end closes it.
func runAgent(t *testing.T, cfg *conf.Agent, log *slog.Logger) (*Agent, *netstacktest.Client) {
	t.Helper()
	return runAgentOpts(t, cfg, log, Options{})
}

// runAgentOpts is runAgent with opts, its Device set to the client stack.
func runAgentOpts(t *testing.T, cfg *conf.Agent, log *slog.Logger, opts Options) (*Agent, *netstacktest.Client) {
	t.Helper()
	dev, err := netstacktest.NewClient(1280, innerAddr)
	if err != nil {
		t.Fatal(err)
	}
	opts.Device = dev
	a, err := New(cfg, opts, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	waitFor(t, "directory", func() bool { return len(a.dir.Load().byName) > 0 })
	return a, dev
}

// relayReq and gatewayReq are the fake servers' certificates.
var (
	relayReq = tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleRelay, Name: "relay1",
		DNSNames: []string{"relay.test"}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	gatewayReq = tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleGateway, Name: "gw1"}
)

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// udpReply builds the IPv4/UDP packet a gateway sends back to the agent,
// with a valid header checksum (the client stack checks it; UDP checksum
// 0 means none).
func udpReply(src netip.AddrPort, dst netip.AddrPort, payload string) []byte {
	p := make([]byte, 28, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(28+len(payload)))
	p[8], p[9] = 64, tunnel.ProtoUDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	sum := uint32(0)
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	return append(p, payload...)
}
