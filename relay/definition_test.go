package relay

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/tunnel"
)

func TestSameDefinition(t *testing.T) {
	tcp := func(port uint16) tunnel.PortInfo { return tunnel.PortInfo{Protocol: "tcp", Port: port} }
	base := tunnel.ServiceInfo{Name: "web", Tenants: []string{"acme", "globex"}, Ports: []tunnel.PortInfo{tcp(80), tcp(443)}}
	with := func(f func(*tunnel.ServiceInfo)) tunnel.ServiceInfo {
		d := base
		d.Tenants = append([]string(nil), base.Tenants...)
		d.Ports = append([]tunnel.PortInfo(nil), base.Ports...)
		f(&d)
		return d
	}
	tests := []struct {
		name  string
		other tunnel.ServiceInfo
		same  bool
	}{
		{"identical", with(func(*tunnel.ServiceInfo) {}), true},
		{"health differs", with(func(d *tunnel.ServiceInfo) { d.Healthy = true }), true},
		{"tenants in another order", with(func(d *tunnel.ServiceInfo) { d.Tenants = []string{"globex", "acme"} }), true},
		{"ports in another order", with(func(d *tunnel.ServiceInfo) { d.Ports = []tunnel.PortInfo{tcp(443), tcp(80)} }), true},
		{"a tenant added", with(func(d *tunnel.ServiceInfo) { d.Tenants = append(d.Tenants, "initech") }), false},
		{"a tenant removed", with(func(d *tunnel.ServiceInfo) { d.Tenants = d.Tenants[:1] }), false},
		{"a tenant replaced", with(func(d *tunnel.ServiceInfo) { d.Tenants[1] = "*" }), false},
		{"a port changed", with(func(d *tunnel.ServiceInfo) { d.Ports[0] = tcp(8080) }), false},
		{"a port's protocol changed", with(func(d *tunnel.ServiceInfo) { d.Ports[0].Protocol = "udp" }), false},
		{"a port renamed", with(func(d *tunnel.ServiceInfo) { d.Ports[0].Name = "http" }), false},
		{"a port removed", with(func(d *tunnel.ServiceInfo) { d.Ports = d.Ports[:1] }), false},
		{"icmp allowed", with(func(d *tunnel.ServiceInfo) { d.ICMP = true }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := sameDefinition(base, tc.other); got != tc.same {
				t.Errorf("sameDefinition = %v, want %v", got, tc.same)
			}
			if got := sameDefinition(tc.other, base); got != tc.same {
				t.Errorf("sameDefinition, reversed = %v, want %v", got, tc.same)
			}
		})
	}
}

func TestServiceView(t *testing.T) {
	gw := func(healthy bool, tenants []string, icmp bool, ports ...tunnel.PortInfo) *gateway {
		return &gateway{services: map[string]bool{"web": healthy},
			defs: map[string]definition{"web": newDefinition(tunnel.ServiceInfo{Name: "web", Tenants: tenants, ICMP: icmp, Ports: ports})}}
	}
	udp7, tcp443 := tunnel.PortInfo{Protocol: "udp", Port: 7}, tunnel.PortInfo{Protocol: "tcp", Port: 443}
	acmeDown := gw(false, []string{"acme"}, false, udp7)
	globex := gw(true, []string{"globex"}, true, tcp443)
	everyone := gw(false, []string{"*"}, false, udp7, tcp443)
	tests := []struct {
		name     string
		gateways []*gateway
		tenant   string
		want     string // admitted, then the view
	}{
		{"one gateway", []*gateway{acmeDown}, "acme", "true {[acme] [udp/7] false false}"},
		{"one gateway, another tenant", []*gateway{acmeDown}, "globex", "false {[] [] false false}"},
		{"only the tenant's gateways count", []*gateway{acmeDown, globex}, "acme", "true {[acme] [udp/7] false false}"},
		{"the other tenant's", []*gateway{acmeDown, globex}, "globex", "true {[globex] [tcp/443] true true}"},
		{"every tenant: union, each port once", []*gateway{acmeDown, everyone}, "acme", "true {[acme *] [udp/7 tcp/443] false false}"},
		{"no gateway", nil, "acme", "false {[] [] false false}"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &service{name: "web", gateways: tc.gateways}
			v := s.viewForLocked(tc.tenant)
			got := fmt.Sprintf("%v {%v %v %v %v}", s.admitsLocked(tc.tenant), v.tenants, portList(v.ports), v.icmp, v.healthy)
			if got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
	if s := (&service{name: "web", gateways: []*gateway{acmeDown, everyone}}); !s.disputedLocked() {
		t.Error("gateways with different definitions are not disputed")
	}
	if s := (&service{name: "web", gateways: []*gateway{acmeDown, gw(true, []string{"acme"}, false, udp7)}}); s.disputedLocked() {
		t.Error("gateways that differ only in health are disputed")
	}
}

// TestHugeDefinitionIsQuick: a register may hold a service of some
// 60,000 tenants and 10,000 ports within tunnel.MaxMessageSize. Comparing
// such a definition with the last one (a gateway registering again) and
// merging it into an agent's directory must take time in proportion to
// its size: both ran under the registry's lock, so a quadratic pass held
// up every agent's new flows (and this gateway's assign) for minutes.
func TestHugeDefinitionIsQuick(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	big := svc("big")
	for i := range 60000 {
		big.Tenants = append(big.Tenants, fmt.Sprintf("t%d", i))
	}
	for i := range 10000 {
		big.Ports = append(big.Ports, tunnel.PortInfo{Protocol: "tcp", Port: uint16(1000 + i)})
	}
	start := time.Now()
	if a := gw.register(big); len(a.VIPs) != 1 {
		t.Fatalf("assign %+v", a.VIPs)
	}
	// The first register compares nothing: what takes longer than it
	// (and a margin for a loaded machine) is the quadratic pass, which
	// took seconds for the directory and minutes for the second register.
	bound := 2*time.Since(start) + 3*time.Second
	start = time.Now()
	ag := mustDial(t, addr, p.identity("t59999", tunnel.RoleAgent, "a1"), agentHello("a1"))
	if d := next[tunnel.Directory](ag); len(d.Services) != 1 || len(d.Services[0].Ports) != 10001 {
		t.Fatalf("directory of %d services", len(d.Services))
	}
	if took := time.Since(start); took > bound {
		t.Errorf("the agent's directory took %v", took)
	}
	start = time.Now()
	gw.register(big)
	if took := time.Since(start); took > bound {
		t.Errorf("registering the same definition again took %v", took)
	}
}

// TestRevokedTagsClosedQuickly: when a gateway changes a service's
// definition, its tags of agents whose tenant it no longer admits are
// closed, under the registry's lock. Each tag looked for its agent's
// tenant through the whole list: 20,000 tags against a definition of
// 60,000 tenants took seconds.
func TestRevokedTagsClosedQuickly(t *testing.T) {
	r := &Relay{tags: make(map[uint32]*tag), m: newMetrics(prometheus.NewRegistry())}
	g := newGateway(peer{}, "gw1")
	def := tunnel.ServiceInfo{Name: "web"}
	for i := range 60000 {
		def.Tenants = append(def.Tenants, fmt.Sprintf("t%05d", i))
	}
	g.defs["web"] = newDefinition(def)
	kept := &agent{peer: peer{id: tunnel.Identity{Tenant: "t59999"}}, tags: make(map[uint32]*tag)}
	revoked := &agent{peer: peer{id: tunnel.Identity{Tenant: "x00000"}}, tags: make(map[uint32]*tag)}
	for id := range uint32(20000) {
		a := kept
		if id%2 == 1 {
			a = revoked
		}
		tg := &tag{id: id + 1, service: "web", agent: a, gw: g}
		r.tags[tg.id], g.tags[tg.id], a.tags[tg.id] = tg, tg, tg
	}
	closed := make(tagsByGateway)
	start := time.Now()
	r.closeRevokedLocked(g, "web", closed)
	if took := time.Since(start); took > time.Second {
		t.Errorf("closing the revoked tags took %v", took)
	}
	if len(closed[g]) != 10000 || len(revoked.tags) != 0 || len(kept.tags) != 10000 {
		t.Errorf("closed %d tags; the revoked agent keeps %d, the admitted one %d", len(closed[g]), len(revoked.tags), len(kept.tags))
	}
}

// TestDefinitionAdmits: a gateway's definition admits the tenants it
// lists, and every tenant when it lists "*", by the set built when it is
// registered; the gateway, the service and the agent's directory answer
// by it.
func TestDefinitionAdmits(t *testing.T) {
	tests := []struct {
		name    string
		tenants []string
		tenant  string
		want    bool
	}{
		{"star admits a tenant", []string{"*"}, "acme", true},
		{"star admits another", []string{"*"}, "globex", true},
		{"star among others admits one not listed", []string{"acme", "*"}, "initech", true},
		{"listed", []string{"acme", "globex"}, "globex", true},
		{"listed first", []string{"acme", "globex"}, "acme", true},
		{"listed twice", []string{"acme", "acme"}, "acme", true},
		{"absent", []string{"acme", "globex"}, "initech", false},
		{"exact: no prefix", []string{"acme"}, "acm", false},
		{"exact: case matters", []string{"acme"}, "ACME", false},
		{"empty list", nil, "acme", false},
		{"empty list, empty tenant", []string{}, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			def := newDefinition(tunnel.ServiceInfo{Name: "web", Tenants: tc.tenants})
			g := &gateway{services: map[string]bool{"web": true}, defs: map[string]definition{"web": def}}
			s := &service{name: "web", gateways: []*gateway{g}}
			got := map[string]bool{
				"definition": def.admits(tc.tenant),
				"gateway":    g.admits("web", tc.tenant),
				"service":    s.admitsLocked(tc.tenant),
				"directory":  len(s.viewForLocked(tc.tenant).tenants) > 0,
			}
			for by, admitted := range got {
				if admitted != tc.want {
					t.Errorf("%s: admits %q = %v, want %v", by, tc.tenant, admitted, tc.want)
				}
			}
			if g.admits("other", tc.tenant) {
				t.Errorf("a service the gateway does not serve admits %q", tc.tenant)
			}
		})
	}
}

// BenchmarkNewFlowTenantCheck is what the relay checks per new flow of an
// agent against a service's definitions: that a gateway admits the
// agent's tenant (agent.may) and which gateway takes the flow
// (chooseGatewayLocked: tenant, then the flow's port). The tenant and the
// port are the last ones listed, the worst case of a scan; per flow the
// cost stays the same from 1 to 60,000 tenants (and 10,000 ports), where
// a scan of the lists grew with them.
func BenchmarkNewFlowTenantCheck(b *testing.B) {
	for _, n := range []int{1, 100, 10000, 60000} {
		b.Run(fmt.Sprintf("tenants=%d", n), func(b *testing.B) {
			info := tunnel.ServiceInfo{Name: "web"}
			for i := range n {
				info.Tenants = append(info.Tenants, fmt.Sprintf("t%05d", i))
			}
			for i := range min(n, 10000) {
				info.Ports = append(info.Ports, tunnel.PortInfo{Protocol: "tcp", Port: uint16(1000 + i)})
			}
			last := info.Ports[len(info.Ports)-1].Port
			var gws []*gateway
			for _, name := range []string{"gw1", "gw2"} {
				g := newGateway(peer{}, name)
				g.services["web"], g.defs["web"] = true, newDefinition(info)
				gws = append(gws, g)
			}
			svc := &service{name: "web", gateways: gws}
			r := &Relay{drained: map[string]bool{}}
			w := flowWants{tenant: info.Tenants[n-1], proto: tunnel.ProtoTCP, port: last}
			b.ReportAllocs()
			for b.Loop() {
				if !svc.admitsLocked(w.tenant) || r.chooseGatewayLocked(svc, w, nil, false) == nil {
					b.Fatal("the listed tenant was not admitted")
				}
			}
		})
	}
}
