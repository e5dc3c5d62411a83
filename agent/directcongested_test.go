package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

// TestDirectFlowNotOnRelayWhileCongested: a flow started on a live direct
// path must keep it (docs/direct-path.md, "Flows when the path
// changes"): the gateway binds a flow to its ingress, and a segment of a
// TCP flow that arrives through the relay is answered with a RST. When
// the direct session's DATAGRAM queue is full (a burst, a stalled
// window; ztgate's quic-go returns ErrDatagramQueueFull after 5 ms), the
// router must drop the packet as the relay path does, not send it on
// the relay while the path is alive.
func TestDirectFlowNotOnRelayWhileCongested(t *testing.T) {
	f := newDirectFixture(t)
	proxy, err := tunneltest.NewProxy(tunneltest.ProxyConfig{Target: f.gw.addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	f.flow("one")
	if !f.relay.routed("one", testTimeout) {
		t.Fatal("the first flow did not take the relay")
	}
	f.answer("ops/gateway/gw1", proxy.Addr())
	if res := next[tunnel.Result](t, f.relay); !res.Success {
		t.Fatalf("result %+v", res)
	}
	c := f.flow("two")
	if !f.gw.routed("two", testTimeout) {
		t.Fatal("a new flow did not take the direct path")
	}
	p := f.a.direct.route("web")
	if p == nil {
		t.Fatal("no direct route")
	}

	// The path stalls (the gateway's host is busy, the link lossy): the
	// window fills, then the send queue. Well within the liveness check's
	// 600 ms, the flow goes on sending.
	proxy.SetDropRate(1)
	payload := strings.Repeat("x", 1000)
	start := time.Now()
	for i := 0; time.Since(start) < 300*time.Millisecond; i++ {
		c.Write([]byte(fmt.Sprintf("two-%06d-%s", i, payload)))
	}
	if p.dead.Load() {
		t.Skip("the path was declared dead during the burst; too slow a machine to tell")
	}
	onRelay := 0
	for {
		ok := f.relay.await(200*time.Millisecond, func(_ string, pkt []byte) bool {
			return strings.HasPrefix(packetText(pkt), "two-")
		})
		if !ok {
			break
		}
		onRelay++
	}
	if onRelay > 0 {
		t.Errorf("%d packets of a flow on a live direct path went out on the relay (the gateway would RST its TCP flow)", onRelay)
	}
}
