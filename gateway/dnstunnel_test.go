package gateway

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// lanSpy is the LAN device, counting the packets the gateway sends it for
// a tunnel ingress's synthetic address.
type lanSpy struct {
	*netstacktest.Client
	synth atomic.Int64
}

func (d *lanSpy) WritePackets(pkts [][]byte) error {
	for _, p := range pkts {
		if _, dst, ok := netstack.IPv4Addrs(p); ok && synthPrefix.Contains(dst) {
			d.synth.Add(1)
		}
	}
	return d.Client.WritePackets(pkts)
}

// TestDirectAgentDNSAnswered: an agent on a direct session may send DNS
// queries to the gateway address (rawService lets them in: "DNS of the
// tenant's view"); the answer must come back over its session, and never
// leave by the LAN device towards a synthetic 169.254.x.x address.
func TestDirectAgentDNSAnswered(t *testing.T) {
	port := startHold(t)
	toml, ca, dir := directConfig(t, port)
	var spy *lanSpy
	h := newHarness(t, toml, func(o *Options) {
		o.HandshakeTimeout = 200 * time.Millisecond
		spy = &lanSpy{Client: o.Device.(*netstacktest.Client)}
		o.Device = spy
	})
	creds := agentCreds(t, ca, dir, tunnel.IssueRequest{Name: "laptop", Tenant: "acme", Role: tunnel.RoleAgent})
	s := h.dialDirectAgent(t, creds)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dnsAddr := netip.AddrPortFrom(h.gw.cfg.TUN.GatewayAddr(), 53)
	from := netip.AddrPortFrom(agentInner, 40000)
	if err := s.SendDatagram(netstacktest.UDPDatagram(from, dnsAddr, dnsQueryFor(1, "web.ztna.internal", 1))); err != nil {
		t.Fatal(err)
	}
	for {
		b, err := s.ReceiveDatagram(ctx)
		if err != nil {
			t.Fatalf("no DNS answer over the session (%v); %d packets for synthetic addresses went out by the LAN device",
				err, spy.synth.Load())
		}
		if src, _, ok := netstack.IPv4Addrs(b); ok && tunnel.Kind(b) == tunnel.TypeIP && src == dnsAddr.Addr() {
			break
		}
	}
	if n := spy.synth.Load(); n != 0 {
		t.Errorf("%d packets for synthetic addresses went out by the LAN device", n)
	}
}

// TestLANDNSWithTunnel: with a [tunnel] listener configured, a LAN client
// of acme still gets answers from the DNS at 10.100.0.1.
func TestLANDNSWithTunnel(t *testing.T) {
	port := startHold(t)
	toml, _, _ := directConfig(t, port)
	h := newHarness(t, toml)
	c, err := h.client.DialUDP(acmeClient, netip.AddrPortFrom(h.gw.cfg.TUN.GatewayAddr(), 53))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(dnsQueryFor(7, "web.ztna.internal", 1)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil || n < 12 || buf[3]&0xF != 0 {
		t.Fatalf("no answer from 10.100.0.1:53 to a LAN client: % x, %v", buf[:n], err)
	}
}

// dialDirectAgent opens a direct session to the gateway's [tunnel] listen
// as the agent "laptop" with creds, within 5 s; the test's end closes it.
func (h *harness) dialDirectAgent(t *testing.T, creds *tunnel.Credentials) *tunnel.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := tunnel.Dial(ctx, h.gw.direct.Addr().String(), tunnel.DialConfig{
		Credentials: creds, ServerName: "127.0.0.1", ALPN: []string{tunnel.ALPNV2},
		Hello: tunnel.Hello{Role: tunnel.RoleAgent, Name: "laptop", InnerAddr: agentInner},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close("done") })
	return s
}
