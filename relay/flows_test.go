package relay

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// tcpPacket builds an IPv4/TCP segment with flags.
func tcpPacket(src, dst netip.AddrPort, flags byte) []byte {
	p := make([]byte, 40)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], 40)
	p[8], p[9] = 64, tunnel.ProtoTCP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	p[32] = 5 << 4
	p[33] = flags
	return p
}

// TCP flags of the test segments.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
	tcpFIN = 0x11
)

var (
	cli = netip.MustParseAddrPort("100.64.0.1:40000")
	vip = netip.MustParseAddrPort("10.100.0.2:80")
)

// testFlowStats returns unregistered collectors.
func testFlowStats() *flowStats {
	return &flowStats{
		live:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "live"}),
		idleEvict: prometheus.NewCounter(prometheus.CounterOpts{Name: "idle"}),
		fullEvict: prometheus.NewCounter(prometheus.CounterOpts{Name: "full"}),
	}
}

func mustFlow(t testing.TB, p []byte) tunnel.Flow {
	t.Helper()
	fp, ok := tunnel.ParseFlow(p)
	if !ok {
		t.Fatal("no flow")
	}
	return fp
}

// TestFlowTableVerdicts walks a flow table through the cases that decide
// whether a packet keeps its gateway, on a fake clock.
func TestFlowTableVerdicts(t *testing.T) {
	g1, g2 := &gateway{name: "g1"}, &gateway{name: "g2"}
	web1 := &tag{id: 1, service: "web", gw: g1}
	web2 := &tag{id: 2, service: "web", gw: g2}
	sec := int64(time.Second)
	type step struct {
		packet  []byte
		service string
		at      int64 // seconds on the fake clock
		insert  *tag  // inserted after the lookup, as the relay does for new flows
		kill    *tag  // killed before the lookup
		verdict flowVerdict
		tag     *tag // expected (a hint for flowNew)
	}
	syn, ack, fin := tcpPacket(cli, vip, tcpSYN), tcpPacket(cli, vip, tcpACK), tcpPacket(cli, vip, tcpFIN)
	udp := udpPacket(cli, netip.AddrPortFrom(vip.Addr(), 53), "q")
	tests := []struct {
		name  string
		steps []step
	}{
		{"tcp: syn new, then known", []step{
			{packet: syn, service: "web", verdict: flowNew, insert: web1},
			{packet: ack, service: "web", at: 1, verdict: flowKnown, tag: web1},
		}},
		{"tcp: retransmitted syn keeps its gateway as hint", []step{
			{packet: syn, service: "web", verdict: flowNew, insert: web1},
			{packet: syn, service: "web", at: 1, verdict: flowNew, tag: web1},
		}},
		{"tcp: mid-flow segment of an unknown flow is an orphan", []step{
			{packet: ack, service: "web", verdict: flowOrphan},
		}},
		{"tcp: gateway gone, segment lost", []step{
			{packet: syn, service: "web", verdict: flowNew, insert: web1},
			{packet: ack, service: "web", at: 1, kill: web1, verdict: flowLost},
		}},
		{"tcp: gateway gone, a new syn starts over", []step{
			{packet: syn, service: "web", verdict: flowNew, insert: web1},
			{packet: syn, service: "web", at: 1, kill: web1, verdict: flowNew, tag: web1},
		}},
		{"tcp: idle expiry", []step{
			{packet: syn, service: "web", verdict: flowNew, insert: web1},
			{packet: ack, service: "web", at: int64(tunnel.FlowTCPIdle/time.Second) + 2, verdict: flowOrphan},
		}},
		{"tcp: after fin, a short expiry", []step{
			{packet: syn, service: "web", verdict: flowNew, insert: web1},
			{packet: fin, service: "web", at: 1, verdict: flowKnown, tag: web1},
			{packet: ack, service: "web", at: int64(tunnel.FlowClosingIdle/time.Second) + 2, verdict: flowOrphan},
		}},
		{"udp: unseen is new, seen is known", []step{
			{packet: udp, service: "web", verdict: flowNew, insert: web2},
			{packet: udp, service: "web", at: 5, verdict: flowKnown, tag: web2},
		}},
		{"udp: gateway gone, new again", []step{
			{packet: udp, service: "web", verdict: flowNew, insert: web2},
			{packet: udp, service: "web", at: 1, kill: web2, verdict: flowNew},
		}},
		{"udp: idle expiry", []step{
			{packet: udp, service: "web", verdict: flowNew, insert: web2},
			{packet: udp, service: "web", at: int64(tunnel.FlowUDPIdle/time.Second) + 1, verdict: flowNew},
		}},
		{"a VIP that changed service is a new flow", []step{
			{packet: udp, service: "web", verdict: flowNew, insert: web2},
			{packet: udp, service: "db", at: 1, verdict: flowNew},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			web1.dead.Store(false)
			web2.dead.Store(false)
			ft := newFlowTable(16, testFlowStats())
			for i, st := range tc.steps {
				if st.kill != nil {
					st.kill.dead.Store(true)
				}
				fp := mustFlow(t, st.packet)
				got, verdict := ft.lookup(fp, []byte(st.service), st.at*sec)
				if verdict != st.verdict || got != st.tag {
					t.Fatalf("step %d: verdict %d tag %v, want %d %v", i, verdict, got, st.verdict, st.tag)
				}
				if st.insert != nil {
					ft.insert(fp, st.insert, st.at*sec)
				}
			}
		})
	}
}

// TestFlowTableCounts checks the counts the gateways are chosen by and the
// metrics of the relay's use of tunnel.FlowTable.
func TestFlowTableCounts(t *testing.T) {
	g := &gateway{name: "g1"}
	tg := &tag{id: 1, service: "web", gw: g}
	stats := testFlowStats()
	const max = 8
	ft := newFlowTable(max, stats)
	sec := int64(time.Second)
	for i := range max {
		ft.insert(mustFlow(t, udpPacket(netip.AddrPortFrom(cli.Addr(), uint16(1000+i)), vip, "")), tg, int64(i)*sec)
	}
	if g.flows.Load() != max || testutil.ToFloat64(stats.live) != max {
		t.Fatalf("gateway counts %d flows, gauge %v", g.flows.Load(), testutil.ToFloat64(stats.live))
	}
	// Full: the next new flow evicts one entry.
	ft.insert(mustFlow(t, udpPacket(netip.AddrPortFrom(cli.Addr(), 2000), vip, "")), tg, 10*sec)
	if ft.len() != max || testutil.ToFloat64(stats.fullEvict) != 1 || g.flows.Load() != max {
		t.Fatalf("after an insert into a full table: %d entries, %v evicted, %d counted",
			ft.len(), testutil.ToFloat64(stats.fullEvict), g.flows.Load())
	}
	// Replacing an entry does not count twice.
	ft.insert(mustFlow(t, udpPacket(netip.AddrPortFrom(cli.Addr(), 2000), vip, "")), tg, 11*sec)
	if ft.len() != max || g.flows.Load() != max || testutil.ToFloat64(stats.live) != max {
		t.Fatalf("after a replacement: %d entries, %d counted", ft.len(), g.flows.Load())
	}
	// Everything but the last one expires; a sweep removes it.
	ft.sweep(11*sec + int64(tunnel.FlowUDPIdle) - 1)
	if ft.len() != 1 || testutil.ToFloat64(stats.idleEvict) != max-1 || g.flows.Load() != 1 {
		t.Fatalf("after the sweep: %d entries, %v idle evictions, %d counted", ft.len(), testutil.ToFloat64(stats.idleEvict), g.flows.Load())
	}
	ft.clear()
	if ft.len() != 0 || g.flows.Load() != 0 || testutil.ToFloat64(stats.live) != 0 {
		t.Fatalf("after clear: %d entries, %d counted, gauge %v", ft.len(), g.flows.Load(), testutil.ToFloat64(stats.live))
	}
}

// TestDeadTagsFlowsNotCounted: the entries of a tag stop counting towards
// its gateway's flows when the tag dies (its gateway stopped serving the
// service), not when they expire, which takes an hour for TCP; the
// gateway is chosen by that count.
func TestDeadTagsFlowsNotCounted(t *testing.T) {
	g := &gateway{name: "g1", tags: map[uint32]*tag{}}
	r := &Relay{tags: map[uint32]*tag{}, m: newMetrics(prometheus.NewRegistry())}
	a := &agent{tags: map[uint32]*tag{}}
	live := &tag{id: 1, service: "web", gw: g, agent: a}
	dying := &tag{id: 2, service: "ssh", gw: g, agent: a}
	for _, tg := range []*tag{live, dying} {
		r.tags[tg.id], g.tags[tg.id], a.tags[tg.id] = tg, tg, tg
	}
	ft := newFlowTable(maxAgentFlows, testFlowStats())
	for i := range 6 {
		tg := live
		if i%2 == 1 {
			tg = dying
		}
		ft.insert(mustFlow(t, tcpPacket(netip.AddrPortFrom(cli.Addr(), uint16(1000+i)), vip, tcpSYN)), tg, 0)
	}
	if n := g.flows.Load(); n != 6 {
		t.Fatalf("gateway counts %d flows, want 6", n)
	}
	r.killTagLocked(dying)
	if n := g.flows.Load(); n != 3 {
		t.Fatalf("after the tag died the gateway counts %d flows, want 3", n)
	}
	r.killTagLocked(dying) // twice: nothing more
	// The dead tag's entries leave the table without counting again.
	ft.sweep(int64(tunnel.FlowTCPIdle) + 1)
	if n := g.flows.Load(); n != 0 || ft.len() != 0 {
		t.Fatalf("after the sweep: %d counted, %d entries", n, ft.len())
	}
}

// BenchmarkFlowLookup is the relay's per-packet cost of a known flow: the
// 5-tuple, the table lookup and the refresh. It must not allocate.
func BenchmarkFlowLookup(b *testing.B) {
	g := &gateway{name: "g1"}
	tg := &tag{id: 1, service: "web", gw: g}
	ft := newFlowTable(maxAgentFlows, testFlowStats())
	for i := range 4096 {
		ft.insert(mustFlow(b, tcpPacket(netip.AddrPortFrom(cli.Addr(), uint16(1000+i)), vip, tcpSYN)), tg, 0)
	}
	pkt := tcpPacket(netip.AddrPortFrom(cli.Addr(), 3000), vip, tcpACK)
	service := []byte("web")
	b.ReportAllocs()
	now := int64(0)
	for b.Loop() {
		now++
		fp, _ := tunnel.ParseFlow(pkt)
		if _, v := ft.lookup(fp, service, now); v != flowKnown {
			b.Fatal("not known")
		}
	}
}
