package relay

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// The relay's packet path in both directions, without the network in
// front of it: what the relay itself costs per packet (the one allocation
// left is quic-go's copy in SendDatagram).
func BenchmarkRoute(b *testing.B) {
	fx := setupRoute(b)
	src := netip.AddrPortFrom(innerAddr, 4000)
	fx.r.mu.RLock()
	dst := netip.AddrPortFrom(fx.r.services["echo"].vip, 7) // the gateway's packets come from it
	fx.r.mu.RUnlock()
	up, _ := tunnel.AppendRouted(nil, "echo", udpPacket(src, dst, string(make([]byte, 1200))))
	fx.r.fromAgent(fx.v2, up) // draws the tag
	t := fx.v2.current["echo"]
	if t == nil {
		b.Fatal("no tag")
	}
	down := tunnel.AppendTagReturn(nil, t.id, udpPacket(dst, src, string(make([]byte, 1200))))
	// A known flow: the flow table's lookup, no gateway choice.
	b.Run("agent_to_gateway", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(up)))
		for b.Loop() {
			fx.r.fromAgent(fx.v2, up)
		}
	})
	// New flows: a UDP source port each time, so every packet chooses a
	// gateway and inserts an entry (the table stays at its bound).
	b.Run("new_flows", func(b *testing.B) {
		dg, _ := tunnel.AppendRouted(nil, "echo", udpPacket(src, dst, string(make([]byte, 100))))
		sport := dg[2+len("echo")+20:]
		b.ReportAllocs()
		port := uint16(0)
		for b.Loop() {
			port++
			binary.BigEndian.PutUint16(sport, port)
			fx.r.fromAgent(fx.v2, dg)
		}
	})
	b.Run("gateway_to_agent", func(b *testing.B) {
		before := testutil.ToFloat64(fx.r.m.toAgent)
		b.ReportAllocs()
		b.SetBytes(int64(len(down)))
		for b.Loop() {
			fx.r.fromGateway(fx.gw, down, false)
		}
		if testutil.ToFloat64(fx.r.m.toAgent) == before {
			b.Fatal("nothing was forwarded to the agent")
		}
	})
	b.Run("dropped", func(b *testing.B) {
		foreign := tunnel.AppendTagReturn(nil, t.id^1, down[5:])
		b.ReportAllocs()
		for b.Loop() {
			fx.r.fromGateway(fx.gw, foreign, false)
		}
	})
}
