package agent

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

// TestSilentRelayBlocksNothingLocal: a relay that vanishes without a word
// (its host crashed, the link was cut: no CONNECTION_CLOSE, no stateless
// reset) is noticed only at the 30 s idle timeout. Meanwhile the packets
// to its services must be dropped (docs/protocol.md: "the data path never
// waits"), and what the agent answers itself — DNS at the gateway address
// — must still be answered at once. The router runs in the TUN reader's
// goroutine and sends to the relay with Session.SendDatagram, which
// blocks once the congestion window and quic-go's send queue are full.
func TestSilentRelayBlocksNothingLocal(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(directoryOf(true)) })
	proxy, err := tunneltest.NewProxy(tunneltest.ProxyConfig{Target: relay.addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	a, dev := startAgent(t, p, proxy.Addr())
	_ = a

	proxy.SetDropRate(1) // the relay is gone, silently

	// Traffic to a service of the relay, as an application keeps sending.
	c, err := dev.DialUDP(innerAddr, netip.AddrPortFrom(upVIP, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := bytes.Repeat([]byte("x"), 1000)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			c.Write(payload)
			time.Sleep(time.Millisecond)
		}
	}()
	defer func() { close(stop); <-done }()
	time.Sleep(2 * time.Second) // the window and the send queue fill

	d, err := dev.DialUDP(innerAddr, netip.AddrPortFrom(a.gatewayAddr(), 53))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 512)
	for i := range 3 {
		start := time.Now()
		d.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := d.Write(dnsQuery(uint16(10+i), "up.ztna.internal")); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Read(buf); err != nil {
			t.Fatalf("DNS query %d at the gateway address unanswered after %v while the relay is silent: %v",
				i, time.Since(start).Round(time.Millisecond), err)
		}
	}
}
