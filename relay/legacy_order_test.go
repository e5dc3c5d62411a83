package relay

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// TestV1RegistrationBeforeGateway: the original relay answers an agent's
// 0x10 with ACK whenever the certificate permits the service, whether or
// not a connector serves it yet (original-system.md §3: only the SAN check
// can deny; 0x2F without a connector is dropped until one registers). An
// original agent treats NACK as terminal: it drops the pending entry and
// never registers that service again on this connection. So a v1 agent
// that registers while the service's gateway is not (yet) connected — the
// usual order after a relay restart, or during a gateway restart — must be
// ACKed, and its packets must flow once the gateway registers, without
// registering again.
func TestV1RegistrationBeforeGateway(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()

	creds := p.creds(p.ca, tunnel.IssueRequest{Name: "mac", NoIdentity: true,
		LegacySANs: []string{"agent.echo-service.ztna"}})
	a := mustDial(t, addr, creds, tunnel.Hello{}, tunnel.ALPNV1)

	// No gateway serves echo-service yet.
	if err := a.s.SendDatagram([]byte("\x10\x0cecho-service")); err != nil {
		t.Fatal(err)
	}
	want := []byte("\x12\x00\x0cecho-service")
	if got := a.datagram(); !bytes.Equal(got, want) {
		t.Errorf("registration before the gateway answered % x, want ACK % x (an original agent never retries after a NACK)", got, want)
	}

	// The gateway comes up; the agent does not register again, as the
	// original agent would not.
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	assign := gw.register(svc("echo-service", "default"))
	gw.echo()
	vip := vipOf(assign, "echo-service")
	src := netip.MustParseAddrPort("100.64.0.1:5000")
	dst := netip.AddrPortFrom(vip, 9999)
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.send("echo-service", udpPacket(src, dst, "hello"))
		select {
		case got := <-a.dgs:
			if tunnel.Kind(got) == tunnel.TypeIP && payload(got) == "hello" {
				return
			}
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no echo once the gateway registered: the agent's packets are dropped (not_registered %v)",
				dropped(r, dropNotRegistered))
		}
	}
}
