package tunnel

import (
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

// TestSendDatagramSilentPeer: a peer that vanishes without a word (a
// crashed host, a cut link: no CONNECTION_CLOSE, no stateless reset) is
// noticed only at the idle timeout (30 s). Until then the data path keeps
// calling SendDatagram; the docs promise that packets for a dead session
// are dropped and counted and that the data path never waits. Once the
// congestion window and quic-go's send queue of 32 are full, each call
// must still return at once (dropping), not block the caller (the agent's
// TUN reader, which also carries direct paths and local DNS).
func TestSendDatagramSilentPeer(t *testing.T) {
	sf := newSessionFixture(t, false)
	p, err := tunneltest.NewProxy(tunneltest.ProxyConfig{Target: sf.addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	client, _ := sf.connectVia(p.Addr(), sf.dialConfig(sf.agentCreds()))
	if err := client.SendDatagram(ip4Packet(1000, 1)); err != nil {
		t.Fatal(err)
	}
	p.SetDropRate(1) // the server is gone, silently

	pkt := ip4Packet(1000, 2)
	const sends = 300
	var worst time.Duration
	start := time.Now()
	for i := range sends {
		t0 := time.Now()
		err := client.SendDatagram(pkt)
		d := time.Since(t0)
		worst = max(worst, d)
		if d > time.Second {
			t.Fatalf("SendDatagram %d to a silent peer blocked %v (err %v; %v since the peer went silent)",
				i, d.Round(time.Millisecond), err, time.Since(start).Round(time.Millisecond))
		}
	}
	t.Logf("%d sends, worst %v", sends, worst)
}
