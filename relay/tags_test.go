package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

func TestDrawTagUniqueAndNonZero(t *testing.T) {
	r := &Relay{tags: make(map[uint32]*tag)}
	const n = 20000
	for range n {
		id := r.drawTagLocked()
		if id == 0 {
			t.Fatal("drew tag 0")
		}
		if r.tags[id] != nil {
			t.Fatalf("drew live tag %d", id)
		}
		r.tags[id] = &tag{id: id}
	}
	// Unguessable: ids are not a sequence. Among n random 32-bit values
	// hardly any two are neighbours.
	neighbours := 0
	for id := range r.tags {
		if r.tags[id+1] != nil {
			neighbours++
		}
	}
	if neighbours > 5 {
		t.Errorf("%d tags have a successor in the table: not random", neighbours)
	}
}

func TestChooseGateway(t *testing.T) {
	// def is a definition of web: tenants and ports ("tcp/80"), ICMP.
	def := func(tenants []string, icmp bool, ports ...uint16) tunnel.ServiceInfo {
		d := tunnel.ServiceInfo{Name: "web", Tenants: tenants, ICMP: icmp}
		for _, p := range ports {
			d.Ports = append(d.Ports, tunnel.PortInfo{Protocol: "tcp", Port: p})
		}
		return d
	}
	acme := []string{"acme"}
	gwDef := func(name string, d tunnel.ServiceInfo, healthy bool, flows int64, direct bool) *gateway {
		g := &gateway{name: name, services: map[string]bool{"web": healthy},
			defs: map[string]definition{"web": newDefinition(d)}, tags: map[uint32]*tag{}}
		g.flows.Store(flows)
		if direct {
			g.candidates = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}
		}
		return g
	}
	gw := func(name string, healthy bool, flows int64, direct bool) *gateway {
		return gwDef(name, def(acme, false, 80), healthy, flows, direct)
	}
	a, b, c := gw("a", true, 3, false), gw("b", true, 1, true), gw("c", true, 2, true)
	down, downFew := gw("down", false, 0, true), gw("down-few", false, 1, false)
	globex := gwDef("globex", def([]string{"globex"}, false, 80), true, 0, true)
	everyone := gwDef("everyone", def([]string{"*"}, false, 80), true, 5, false)
	port443 := gwDef("443", def(acme, false, 443), true, 0, false)
	port443down := gwDef("443-down", def(acme, false, 443), false, 0, false)
	icmp := gwDef("icmp", def(acme, true, 80), true, 9, false)
	// A gateway known by a certificate of the original system: its name is
	// its common name, which the agent could not tell from a ztgate
	// gateway's identity on a direct path.
	legacy := gwDef("legacy", def(acme, false, 80), true, 0, true)
	legacy.id = tunnel.Identity{Tenant: tunnel.DefaultTenant, Role: tunnel.RoleGateway, Name: "legacy", Legacy: true}
	tcp80 := flowWants{tenant: "acme", proto: tunnel.ProtoTCP, port: 80}
	tcp443 := flowWants{tenant: "acme", proto: tunnel.ProtoTCP, port: 443}
	ping := flowWants{tenant: "acme", proto: tunnel.ProtoICMP}
	unkeyed := flowWants{tenant: "acme"}
	tests := []struct {
		name     string
		gateways []*gateway
		drained  []string
		wants    flowWants
		hint     *gateway
		direct   bool
		want     *gateway
	}{
		{"none", nil, nil, tcp80, nil, false, nil},
		{"only one", []*gateway{a}, nil, tcp80, nil, false, a},
		{"fewest flows", []*gateway{a, b, c}, nil, tcp80, nil, false, b},
		{"tie: first registered", []*gateway{gw("x", true, 2, false), c}, nil, tcp80, nil, false, nil /* x */},
		{"healthy before fewer flows", []*gateway{down, a}, nil, tcp80, nil, false, a},
		{"none healthy: fewest flows", []*gateway{gw("d4", false, 4, false), downFew}, nil, tcp80, nil, false, downFew},
		{"healthy ones only compete", []*gateway{a, down, c}, nil, tcp80, nil, false, c},
		{"drained takes nothing new", []*gateway{a, b, c}, []string{"b"}, tcp80, nil, false, c},
		{"every one drained", []*gateway{a, b}, []string{"a", "b"}, tcp80, nil, false, nil},
		{"drained even if healthy and alone", []*gateway{a, down}, []string{"a"}, tcp80, nil, false, down},
		{"hint kept while healthy", []*gateway{a, b, c}, nil, tcp80, a, false, a},
		{"hint dropped when down", []*gateway{down, b}, nil, tcp80, down, false, b},
		{"hint dropped when drained", []*gateway{a, b}, []string{"a"}, tcp80, a, false, b},
		{"hint that left", []*gateway{b, c}, nil, tcp80, a, false, b},
		{"direct: only gateways with candidates", []*gateway{a, c}, nil, unkeyed, nil, true, c},
		{"direct: none has candidates", []*gateway{a, downFew}, nil, unkeyed, nil, true, nil},
		{"direct: healthy first", []*gateway{down, c}, nil, unkeyed, nil, true, c},
		{"direct: not by a certificate of the original system", []*gateway{legacy, c}, nil, unkeyed, nil, true, c},
		{"relayed: a certificate of the original system serves", []*gateway{legacy, c}, nil, tcp80, nil, false, legacy},
		{"only gateways that admit the tenant", []*gateway{globex, a}, nil, tcp80, nil, false, a},
		{"a gateway of another tenant never", []*gateway{globex}, nil, tcp80, nil, false, nil},
		{"direct: another tenant's gateway never", []*gateway{globex, downFew}, nil, unkeyed, nil, true, nil},
		{"every tenant's gateway", []*gateway{globex, everyone}, nil, tcp80, nil, false, everyone},
		{"the port's gateway first", []*gateway{a, port443}, nil, tcp443, nil, false, port443},
		{"the port before health", []*gateway{a, port443down}, nil, tcp443, nil, false, port443down},
		{"no gateway serves the port: any", []*gateway{a, b}, nil, tcp443, nil, false, b},
		{"hint dropped when it lacks the port", []*gateway{a, port443}, nil, tcp443, a, false, port443},
		{"unkeyed packets: any port", []*gateway{a, port443}, nil, unkeyed, nil, false, port443},
		{"icmp to a gateway that allows it", []*gateway{a, icmp}, nil, ping, nil, false, icmp},
		{"udp port not served by any", []*gateway{a, icmp}, nil, flowWants{tenant: "acme", proto: tunnel.ProtoUDP, port: 80}, nil, false, a},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &Relay{drained: map[string]bool{}}
			for _, n := range tc.drained {
				r.drained[n] = true
			}
			want := tc.want
			if tc.name == "tie: first registered" {
				want = tc.gateways[0]
			}
			got := r.chooseGatewayLocked(&service{name: "web", gateways: tc.gateways}, tc.wants, tc.hint, tc.direct)
			if got != want {
				t.Errorf("chose %v, want %v", nameOf(got), nameOf(want))
			}
			if !tc.direct || tc.hint != nil {
				return
			}
			// An offer goes to the first of these with room: the same
			// choice while it has.
			all := r.directGatewaysLocked(&service{name: "web", gateways: tc.gateways}, tc.wants.tenant)
			if first := append(all, nil)[0]; first != want {
				t.Errorf("direct gateways %v start with %v, want %v", all, nameOf(first), nameOf(want))
			}
		})
	}
	// Every gateway that may take a direct path, in that order.
	r := &Relay{drained: map[string]bool{}}
	all := r.directGatewaysLocked(&service{name: "web", gateways: []*gateway{down, a, globex, c, legacy, b}}, "acme")
	var names []string
	for _, g := range all {
		names = append(names, g.name)
	}
	if want := []string{"b", "c", "down"}; !slices.Equal(names, want) {
		t.Errorf("direct gateways %v, want %v", names, want)
	}
}

// nameOf names a gateway for messages, "<nil>" for none.
func nameOf(g *gateway) string {
	if g == nil {
		return "<nil>"
	}
	return g.name
}

func TestChooseGatewaySpreadsFlows(t *testing.T) {
	defs := map[string]definition{"web": newDefinition(svc("web", "acme"))}
	a := &gateway{name: "a", services: map[string]bool{"web": true}, defs: defs, tags: map[uint32]*tag{}}
	b := &gateway{name: "b", services: map[string]bool{"web": true}, defs: defs, tags: map[uint32]*tag{}}
	s := &service{name: "web", gateways: []*gateway{a, b}}
	r := &Relay{drained: map[string]bool{}}
	for range 10 {
		r.chooseGatewayLocked(s, flowWants{tenant: "acme"}, nil, false).flows.Add(1)
	}
	if a.flows.Load() != 5 || b.flows.Load() != 5 {
		t.Errorf("flows spread %d/%d", a.flows.Load(), b.flows.Load())
	}
}

// twoGatewaysOfWeb starts a relay and two gateways, gw1 then gw2, that
// both serve web to tenant acme at one VIP.
func twoGatewaysOfWeb(t *testing.T) (p *pki, r *Relay, gw1, gw2 *client, vip netip.Addr) {
	t.Helper()
	p = newPKI(t)
	r = startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw1 = mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	vip = vipOf(gw1.register(svc("web", "acme")), "web")
	gw2 = mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw2"), gatewayHello("gw2"))
	if got := vipOf(gw2.register(svc("web", "acme")), "web"); got != vip {
		t.Fatalf("second gateway got VIP %v, first %v", got, vip)
	}
	return p, r, gw1, gw2, vip
}

// TestTagRouting checks the return path: a 0x31 reaches only the agent of
// its tag, a tag of another gateway or a dead tag is dropped, an agent's
// end closes its tags at the gateway, a gateway's end moves the agent's
// next packet to another gateway.
func TestTagRouting(t *testing.T) {
	p, r, gw1, gw2, vip := twoGatewaysOfWeb(t)
	addr := r.Addr().String()
	a1 := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	a2 := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a2"), agentHello("a2"))
	src, dst := netip.AddrPortFrom(innerAddr, 4000), netip.AddrPortFrom(vip, 7)

	// Each agent's first packet draws a tag; the tags spread over both gateways.
	a1.send("web", udpPacket(src, dst, "a1-0"))
	open1 := next[tunnel.TagOpen](gw1)
	in1 := gw1.datagram()
	a2.send("web", udpPacket(src, dst, "a2-0"))
	open2 := next[tunnel.TagOpen](gw2)
	in2 := gw2.datagram()
	if tag, service, packet, err := tunnel.ParseTagged(in1); err != nil || tag != open1.Tag || string(service) != "web" || payload(packet) != "a1-0" {
		t.Fatalf("gw1 got %x (tag_open %+v)", in1, open1)
	}
	if tag, _, _, _ := tunnel.ParseTagged(in2); tag != open2.Tag || open2.Identity != "acme/agent/a2" {
		t.Fatalf("gw2 got tag %d, tag_open %+v", tag, open2)
	}

	reply := func(text string) []byte { return udpPacket(dst, src, text) }
	tests := []struct {
		name   string
		from   *client
		tag    uint32
		packet []byte
		to     *client // nil: dropped for reason
		reason dropReason
	}{
		{"own tag", gw1, open1.Tag, reply("a1-reply"), a1, 0},
		{"another gateway's tag", gw1, open2.Tag, reply("stolen"), nil, dropForeignTag},
		{"unknown tag", gw1, open1.Tag ^ 0x5a5a5a5a, reply("guess"), nil, dropUnknownTag},
		{"not an IP packet", gw1, open1.Tag, []byte{0x01, 1, 2, 3, 4, 5, 6}, nil, dropNotIP},
		{"not for the agent's address", gw1, open1.Tag, udpPacket(dst, netip.MustParseAddrPort("100.64.0.9:4000"), "x"), nil, dropWrongDestination},
		{"not from the service's VIP", gw1, open1.Tag, udpPacket(netip.MustParseAddrPort("10.100.0.250:7"), src, "forged"), nil, dropWrongSource},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := dropped(r, tc.reason)
			if err := tc.from.s.SendDatagram(tunnel.AppendTagReturn(nil, tc.tag, tc.packet)); err != nil {
				t.Fatal(err)
			}
			if tc.to != nil {
				if got := tc.to.datagram(); payload(got) != payload(tc.packet) {
					t.Fatalf("agent got %q", payload(got))
				}
				return
			}
			waitFor(t, tc.reason.String()+" drop", func() bool { return dropped(r, tc.reason) > before })
			if !a1.quiet(100*time.Millisecond) || !a2.quiet(10*time.Millisecond) {
				t.Error("an agent received a dropped packet")
			}
		})
	}

	t.Run("agent ends: tag_close, dead tag dropped", func(t *testing.T) {
		a1.close()
		if tc := next[tunnel.TagClose](gw1); len(tc.Tags) != 1 || tc.Tags[0] != open1.Tag {
			t.Fatalf("tag_close %+v, want [%d]", tc, open1.Tag)
		}
		before := dropped(r, dropUnknownTag)
		_ = gw1.s.SendDatagram(tunnel.AppendTagReturn(nil, open1.Tag, reply("late")))
		waitFor(t, "dead tag drop", func() bool { return dropped(r, dropUnknownTag) > before })
	})

	t.Run("gateway ends: next packet goes to another gateway", func(t *testing.T) {
		gw2.close()
		waitFor(t, "gw2 gone", func() bool {
			r.mu.RLock()
			defer r.mu.RUnlock()
			return len(r.gateways) == 1
		})
		a2.send("web", udpPacket(src, dst, "a2-1"))
		open := next[tunnel.TagOpen](gw1)
		if open.Identity != "acme/agent/a2" || open.Tag == open2.Tag {
			t.Fatalf("tag_open %+v after gw2 left (old tag %d)", open, open2.Tag)
		}
		if _, _, packet, _ := tunnel.ParseTagged(gw1.datagram()); payload(packet) != "a2-1" {
			t.Fatalf("gw1 got %q", payload(packet))
		}
	})
}

func TestAgentChecks(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	vip := vipOf(gw.register(svc("web", "acme"), svc("db", "finance")), "web")
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	dst := netip.AddrPortFrom(vip, 7)
	own := netip.AddrPortFrom(innerAddr, 1000)
	routed := func(service string, packet []byte) []byte {
		b, _ := tunnel.AppendRouted(nil, service, packet)
		return b
	}
	tests := []struct {
		name     string
		datagram []byte
		reason   dropReason
	}{
		{"spoofed source", routed("web", udpPacket(netip.MustParseAddrPort("100.64.0.2:1000"), dst, "x")), dropSpoofed},
		{"unknown service", routed("nope", udpPacket(own, dst, "x")), dropUnknownService},
		{"another tenant's service", routed("db", udpPacket(own, dst, "x")), dropNotAuthorized},
		{"not an IP packet", routed("web", []byte{0x45, 0}), dropMalformed},
		{"raw IP", udpPacket(own, dst, "x"), dropRawFromAgent},
		{"registration on v2", []byte{0x10, 3, 'w', 'e', 'b'}, dropUnexpected},
		{"tag return from an agent", tunnel.AppendTagReturn(nil, 1, udpPacket(own, dst, "x")), dropUnexpected},
		{"truncated", []byte{0x2F, 9, 'w'}, dropMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := dropped(r, tc.reason)
			if err := a.s.SendDatagram(tc.datagram); err != nil {
				t.Fatal(err)
			}
			waitFor(t, tc.reason.String(), func() bool { return dropped(r, tc.reason) > before })
		})
	}
	if !gw.quiet(100 * time.Millisecond) {
		t.Error("the gateway received a packet that should have been dropped")
	}
}

func TestDropReasonNames(t *testing.T) {
	seen := map[string]bool{}
	for i := range numDropReasons {
		name := i.String()
		if name == "" || seen[name] {
			t.Errorf("reason %d named %q", i, name)
		}
		seen[name] = true
	}
}

// TestTagDrawExhausted checks that a packet whose tag cannot be drawn is
// dropped as tags_exhausted, not as a service without gateways.
func TestTagDrawExhausted(t *testing.T) {
	fx := setupRoute(t)
	fx.r.mu.Lock()
	fx.r.tagRand = func(b []byte) (int, error) { clear(b); return len(b), nil } // only 0: never a tag
	fx.r.mu.Unlock()
	before := dropped(fx.r, dropTagsExhausted)
	dg, _ := tunnel.AppendRouted(nil, "echo", udpPacket(netip.AddrPortFrom(innerAddr, 4000), netip.MustParseAddrPort("10.100.0.2:7"), "x"))
	fx.r.fromAgent(fx.v2, dg)
	if got := dropped(fx.r, dropTagsExhausted) - before; got != 1 {
		t.Errorf("tags_exhausted counted %v drops, want 1", got)
	}
	if fx.v2.current["echo"] != nil {
		t.Error("a tag was drawn from a source that yields none")
	}
}

// TestForgetDeadRoutes: an agent's routes by (service, gateway) and its
// current tag by service drop their dead tags once they have grown, so
// that a long session through services that come and go stays bounded;
// live tags stay.
func TestForgetDeadRoutes(t *testing.T) {
	cases := []struct {
		name      string
		live      int
		dead      int
		wantCount int // entries left in each map
	}{
		{"small maps are left alone", 10, 20, 30},
		{"grown maps lose their dead tags", 10, 60, 10},
		{"live tags stay however many", 70, 0, 70},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := newAgent(peer{}, netip.Addr{}, &flowStats{})
			for i := range tc.live + tc.dead {
				tg := &tag{id: uint32(i + 1)}
				tg.dead.Store(i >= tc.live)
				name := fmt.Sprintf("svc-%d", i)
				a.byRoute[route{service: name}] = tg
				a.current[name] = tg
			}
			a.forgetDeadRoutes()
			if len(a.byRoute) != tc.wantCount || len(a.current) != tc.wantCount {
				t.Fatalf("%d routes and %d current tags left, want %d", len(a.byRoute), len(a.current), tc.wantCount)
			}
			live := 0
			for _, tg := range a.current {
				if !tg.dead.Load() {
					live++
				}
			}
			if live != tc.live {
				t.Fatalf("%d live current tags left, want %d", live, tc.live)
			}
		})
	}
}

// icmpUnreachable is the port unreachable src sends about q, a packet it
// received.
func icmpUnreachable(src, dst netip.Addr, q []byte) []byte {
	p := make([]byte, 28, 28+len(q))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(28+len(q)))
	p[8], p[9] = 64, tunnel.ProtoICMP
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	p[20], p[21] = 3, 3
	return append(p, q...)
}

// TestICMPErrorFollowsItsFlow: an agent's ICMP error about a packet of one
// of its flows (its port unreachable for a backend's datagram that came
// after its socket closed) reaches the gateway of that flow, under its
// tag, where the gateway hands it to the flow it quotes. Before, it was a
// flow of its own, sent to the least loaded gateway of the service: the
// other one.
func TestICMPErrorFollowsItsFlow(t *testing.T) {
	p, r, gw1, gw2, vip := twoGatewaysOfWeb(t)
	a := mustDial(t, r.Addr().String(), p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	src, dst := netip.AddrPortFrom(innerAddr, 4000), netip.AddrPortFrom(vip, 53)

	// The first flow goes to the first gateway (both have none).
	a.send("web", udpPacket(src, dst, "query"))
	first, other := gw1, gw2
	open := next[tunnel.TagOpen](first)
	if _, _, packet, _ := tunnel.ParseTagged(first.datagram()); payload(packet) != "query" {
		t.Fatalf("gw1 got %q", payload(packet))
	}

	unreachable := icmpUnreachable(innerAddr, vip, udpPacket(dst, src, "late answer"))
	a.send("web", unreachable)
	tag, service, packet, err := tunnel.ParseTagged(first.datagram())
	if err != nil || tag != open.Tag || string(service) != "web" || string(packet) != string(unreachable) {
		t.Fatalf("the flow's gateway got tag %d (%v), want the error under the flow's tag %d", tag, err, open.Tag)
	}
	if !other.quiet(200 * time.Millisecond) {
		t.Error("the other gateway got the agent's error")
	}

	// An error about a packet of no flow the relay knows takes the
	// service's current tag and opens no flow.
	stray := icmpUnreachable(innerAddr, vip, udpPacket(dst, netip.AddrPortFrom(innerAddr, 4999), "unknown"))
	a.send("web", stray)
	if tag, _, packet, _ := tunnel.ParseTagged(first.datagram()); tag != open.Tag || string(packet) != string(stray) {
		t.Fatalf("a stray error went under tag %d, want the current one %d", tag, open.Tag)
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for ag := range r.agents {
		if n := ag.flows.len(); n != 1 {
			t.Errorf("the agent has %d flows at the relay, want 1: an ICMP error opened one", n)
		}
	}
}

// TestSendDrop: a datagram the next hop's outbox refused is counted as
// outbox_budget when the outboxes' shared budget refused it, else as
// send_failed.
func TestSendDrop(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{tunnel.ErrOutboxBudget, "outbox_budget"},
		{fmt.Errorf("agent: %w", tunnel.ErrOutboxBudget), "outbox_budget"},
		{tunnel.ErrOutboxFull, "send_failed"},
		{tunnel.ErrOutboxClosed, "send_failed"},
		{errors.New("other"), "send_failed"},
	} {
		if got := sendDrop(tc.err).String(); got != tc.want {
			t.Errorf("sendDrop(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

// TestFragmentsFollowTheirFlow: every fragment of a datagram of a flow
// goes to the flow's gateway, under its tag, so that the gateway can put
// the datagram together again. Before, fragments took the service's
// current tag, that of its latest new flow, which here is on the other
// gateway.
func TestFragmentsFollowTheirFlow(t *testing.T) {
	p, r, gw1, gw2, vip := twoGatewaysOfWeb(t)
	a := mustDial(t, r.Addr().String(), p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	src, dst := netip.AddrPortFrom(innerAddr, 4000), netip.AddrPortFrom(vip, 53)

	// The first flow goes to the first gateway, the second to the other.
	a.send("web", udpPacket(src, dst, "query"))
	open := next[tunnel.TagOpen](gw1)
	gw1.datagram()
	a.send("web", udpPacket(netip.AddrPortFrom(innerAddr, 4001), dst, "other flow"))
	next[tunnel.TagOpen](gw2)
	gw2.datagram()

	fragment := func(offset uint16, more bool, payload string) []byte {
		q := udpPacket(src, dst, payload)
		binary.BigEndian.PutUint16(q[4:], 99)
		if more {
			offset |= 0x2000
		}
		binary.BigEndian.PutUint16(q[6:], offset)
		return q
	}
	for i, q := range [][]byte{fragment(0, true, "first piece"), fragment(8, true, "middle piece"), fragment(16, false, "last piece")} {
		a.send("web", q)
		tag, _, packet, err := tunnel.ParseTagged(gw1.datagram())
		if err != nil || tag != open.Tag || string(packet) != string(q) {
			t.Fatalf("fragment %d: the flow's gateway got tag %d (%v), want the fragment under the flow's tag %d", i, tag, err, open.Tag)
		}
	}
	if !gw2.quiet(200 * time.Millisecond) {
		t.Error("the other gateway got a fragment of the flow")
	}
}

// TestDeadTagNumberQuarantined: the number of a tag that died is not drawn
// again for tagQuarantine, so that no packet of its flows still on the way
// (a gateway's reply, an agent's packet the gateway would hold) is taken
// for the new tag's; after it, the number may come back.
func TestDeadTagNumberQuarantined(t *testing.T) {
	fx := setupRoute(t)
	const first, second = 0x0A0A0A0A, 0x0B0B0B0B
	var draws []uint32
	fx.r.mu.Lock()
	fx.r.tagRand = func(b []byte) (int, error) {
		binary.BigEndian.PutUint32(b, draws[0])
		if len(draws) > 1 {
			draws = draws[1:]
		}
		return len(b), nil
	}
	fx.r.mu.Unlock()
	packet := udpPacket(netip.AddrPortFrom(innerAddr, 4000), netip.MustParseAddrPort("10.100.0.2:7"), "x")
	drawn := func(seq ...uint32) uint32 {
		t.Helper()
		fx.r.mu.Lock()
		draws = seq
		if old := fx.v2.current["echo"]; old != nil {
			fx.r.killTagLocked(old)
		}
		fx.r.mu.Unlock()
		dg, _ := tunnel.AppendRouted(nil, "echo", packet)
		fx.r.fromAgent(fx.v2, dg)
		fx.r.mu.RLock()
		defer fx.r.mu.RUnlock()
		if tg := fx.v2.current["echo"]; tg != nil && !tg.dead.Load() {
			return tg.id
		}
		return 0
	}
	if id := drawn(first); id != first {
		t.Fatalf("drew %08x, want %08x", id, first)
	}
	if id := drawn(first, first, second); id != second {
		t.Fatalf("drew %08x after %08x died, want %08x: a dead tag's number came back at once", id, uint32(first), uint32(second))
	}
	fx.r.mu.Lock()
	fx.r.recentTags[first] = time.Now().Add(-2 * tagQuarantine)
	fx.r.mu.Unlock()
	if id := drawn(first); id != first {
		t.Fatalf("drew %08x, want %08x once its quarantine is over", id, uint32(first))
	}
}
