package relay

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/ztgate/ztgate/tunnel"
)

// TestV1Agent drives the relay with the original system's datagrams:
// registrations answered byte-exact, routed packets only for registered
// services, replies as raw IP.
func TestV1Agent(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	assign := gw.register(svc("echo-service", "default"), svc("web", "default"), svc("secret", "finance"))
	gw.echo()
	creds := p.creds(p.ca, tunnel.IssueRequest{Name: "mac", NoIdentity: true,
		LegacySANs: []string{"agent.echo-service.ztna", "agent.secret.ztna"}})
	a := mustDial(t, addr, creds, tunnel.Hello{}, tunnel.ALPNV1)
	if a.s.Version() != tunnel.V1 {
		t.Fatalf("version %v", a.s.Version())
	}

	registrations := []struct {
		name    string
		request []byte
		answer  []byte
	}{
		{"permitted", []byte("\x10\x0cecho-service"), []byte("\x12\x00\x0cecho-service")},
		{"no rights", []byte("\x10\x03web"), []byte("\x13\x02\x03web")},
		{"another tenant's service: its certificate names it", []byte("\x10\x06secret"), []byte("\x12\x00\x06secret")},
		{"unknown service", []byte("\x10\x04nope"), []byte("\x13\x02\x04nope")},
		{"invalid UTF-8", []byte("\x10\x02\xff\xfe"), []byte("\x13\x01\x00")},
		{"connector registration", []byte("\x11\x0cecho-service"), []byte("\x13\x02\x0cecho-service")},
	}
	for _, tc := range registrations {
		t.Run(tc.name, func(t *testing.T) {
			if err := a.s.SendDatagram(tc.request); err != nil {
				t.Fatal(err)
			}
			if got := a.datagram(); !bytes.Equal(got, tc.answer) {
				t.Errorf("answer % x, want % x", got, tc.answer)
			}
		})
	}

	vip := vipOf(assign, "echo-service")
	src := netip.MustParseAddrPort("100.64.0.1:5000")
	dst := netip.AddrPortFrom(vip, 9999)
	t.Run("another tenant's service: registered, its packets refused", func(t *testing.T) {
		before := dropped(r, dropNotAuthorized)
		a.send("secret", udpPacket(src, netip.AddrPortFrom(vipOf(assign, "secret"), 9999), "x"))
		waitFor(t, "not_authorized drop", func() bool { return dropped(r, dropNotAuthorized) > before })
	})
	t.Run("unregistered service dropped", func(t *testing.T) {
		before := dropped(r, dropNotRegistered)
		a.send("web", udpPacket(src, dst, "x"))
		waitFor(t, "not_registered drop", func() bool { return dropped(r, dropNotRegistered) > before })
	})
	t.Run("registered service echoed as raw IP", func(t *testing.T) {
		a.send("echo-service", udpPacket(src, dst, "hello"))
		got := a.datagram()
		if tunnel.Kind(got) != tunnel.TypeIP || payload(got) != "hello" {
			t.Fatalf("got % x", got)
		}
		if s, d, _ := ipAddrs(got); s != vip || d != src.Addr() {
			t.Errorf("reply from %v to %v", s, d)
		}
	})
	t.Run("first source pins the inner address", func(t *testing.T) {
		before := dropped(r, dropSpoofed)
		a.send("echo-service", udpPacket(netip.MustParseAddrPort("100.64.0.2:5000"), dst, "spoof"))
		waitFor(t, "spoofed drop", func() bool { return dropped(r, dropSpoofed) > before })
	})
}
