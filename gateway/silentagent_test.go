package gateway

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

// TestSilentAgentHoldsUpNoOther: one agent on the direct path vanishes
// without a word (lid closed, Wi-Fi gone: no CONNECTION_CLOSE) while its
// backend still sends to it. The gateway notices at the idle timeout
// (30 s); until then its packets to that agent must be dropped, and every
// other agent served. The tunnel link has one writer goroutine for every
// session (tunnelOutput), and Session.SendDatagram blocks once the silent
// session's congestion window and quic-go's send queue are full: every
// other agent — and the relay's — then waits too.
func TestSilentAgentHoldsUpNoOther(t *testing.T) {
	// The backend: echoes, and answers "flood" with a stream of 1,000-byte
	// datagrams, as a download would.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	flooded := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 2048)
		big := make([]byte, 1000)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "flood" {
				flooded <- struct{}{}
				go func() {
					for range 600 {
						pc.WriteTo(big, from)
						time.Sleep(2 * time.Millisecond)
					}
				}()
				continue
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	port := pc.LocalAddr().(*net.UDPAddr).Port

	dir := t.TempDir()
	section, ca := writePKI(t, dir)
	toml := section + quietGateway + acmeTenant + `[[service]]
name = "echo"
tenants = ["*"]
vip = "10.100.0.20"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "udp"
  port = 7
  target = ` + strconv.Itoa(port) + `
  [service.health]
  type = "none"
`
	h := newHarness(t, toml)
	addr := h.gw.direct.Addr().String()
	vip := netip.MustParseAddrPort("10.100.0.20:7")

	proxy, err := tunneltest.NewProxy(tunneltest.ProxyConfig{Target: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func(via, name string) *tunnel.Session {
		creds := agentCreds(t, ca, dir, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: name})
		s, err := tunnel.Dial(ctx, via, tunnel.DialConfig{
			Credentials: creds, ServerName: "127.0.0.1",
			Hello: tunnel.Hello{Role: tunnel.RoleAgent, Name: name, InnerAddr: agentInner},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close("test over") })
		return s
	}
	send := func(s *tunnel.Session, srcPort uint16, text string) {
		pkt := netstacktest.UDPDatagram(netip.AddrPortFrom(agentInner, srcPort), vip, []byte(text))
		b, err := tunnel.AppendRouted(nil, "echo", pkt)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SendDatagram(b); err != nil {
			t.Fatal(err)
		}
	}
	// awaitText waits up to d for a UDP payload text on s.
	awaitText := func(s *tunnel.Session, text string, d time.Duration) bool {
		rctx, rcancel := context.WithTimeout(ctx, d)
		defer rcancel()
		for {
			b, err := s.ReceiveDatagram(rctx)
			if err != nil {
				return false
			}
			if tunnel.Kind(b) == tunnel.TypeIP && len(b) >= 28 && string(b[28:]) == text {
				return true
			}
		}
	}

	silent := dial(proxy.Addr(), "laptop")
	other := dial(addr, "desktop")
	send(other, 41000, "hello")
	if !awaitText(other, "hello", 10*time.Second) {
		t.Fatal("no echo before the other agent went silent")
	}

	send(silent, 40000, "flood")
	select {
	case <-flooded:
	case <-time.After(10 * time.Second):
		t.Fatal("the flood never reached the backend")
	}
	proxy.SetDropRate(1) // the laptop is gone, silently; its download goes on
	time.Sleep(2 * time.Second)

	for i := range 3 {
		text := "ping" + strconv.Itoa(i)
		start := time.Now()
		send(other, 41000, text)
		if !awaitText(other, text, 2*time.Second) {
			t.Fatalf("echo %d to the other agent not delivered within %v while one agent is silent",
				i, time.Since(start).Round(time.Millisecond))
		}
	}
}
