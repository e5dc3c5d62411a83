package gateway

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// TestClosedIngressKeepsNoFlow: an ingress (a relay tag, a direct session)
// closes while one of its packets is opening a UDP flow, as when a
// tag_close is handled while the tag's datagram is delivered. No flow may
// outlive its ingress: closeIngress closes the flows it finds, and a flow
// added after that search must see that its ingress is gone.
func TestClosedIngressKeepsNoFlow(t *testing.T) {
	h := newTunnelHarness(t, "")
	dst, src := udpEchoVIP, agentSrc
	const rounds = 1000
	for i := range rounds {
		in := &ingress{
			peer: peer{tenant: "acme", identity: fmt.Sprintf("acme/agent/a%d", i)},
			out:  testOutbox(t, func([]byte) error { return nil }),
		}
		in.pinInner(agentInner)
		if err := h.gw.ingresses.add(in); err != nil {
			t.Fatal(err)
		}
		pkt := netstacktest.UDPDatagram(src, dst, []byte("x"))
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { <-start; h.gw.deliverTunnel(in, "", pkt, h.gw.tunLink) })
		wg.Go(func() { <-start; h.gw.closeIngress(in, "tag_closed") })
		close(start)
		wg.Wait()
	}
	time.Sleep(200 * time.Millisecond) // closed flows leave the table
	stale := h.gw.flows.list(func(f *flow) bool {
		if _, closed := f.closed(); closed {
			return false
		}
		in := h.gw.ingresses.lookup(f.client.Addr())
		return in == nil || in.closed.Load()
	})
	if len(stale) > 0 {
		t.Errorf("%d of %d flows outlive their closed ingress (first: %s, identity %s)",
			len(stale), rounds, stale[0].client, stale[0].peer.identity)
	}
}
