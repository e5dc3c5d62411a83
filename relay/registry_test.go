package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testlog"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

func TestRegistrationAuthorisation(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	legacy := p.creds(p.ca, tunnel.IssueRequest{Name: "connector-1", NoIdentity: true, LegacySANs: []string{"connector.web.ztna"}})
	tests := []struct {
		name     string
		creds    *tunnel.Credentials
		services []tunnel.ServiceInfo
		accepted []string
		rejected map[string]string // service → result label
	}{
		{"URI gateway may publish anything", p.identity("ops", tunnel.RoleGateway, "gw1"),
			[]tunnel.ServiceInfo{svc("web", "acme"), svc("db", "*")}, []string{"db", "web"}, nil},
		{"legacy gateway only its services", legacy,
			[]tunnel.ServiceInfo{svc("web", "default"), svc("mail", "default")}, []string{"web"}, map[string]string{"mail": regNotPermitted}},
		{"invalid registrations", p.identity("ops", tunnel.RoleGateway, "gw2"), []tunnel.ServiceInfo{
			svc("Upper", "acme"), svc("ok", "acme"), svc("ok", "acme"), svc("notenant"),
			{Name: "badport", Tenants: []string{"acme"}, Ports: []tunnel.PortInfo{{Protocol: "sctp", Port: 1}}},
			{Name: "badtenant", Tenants: []string{"Not A Label"}},
			{Name: "badportname", Tenants: []string{"acme"}, Ports: []tunnel.PortInfo{{Name: strings.Repeat("a", 40000), Protocol: "tcp", Port: 1}}},
		}, []string{"ok"}, map[string]string{"Upper": regInvalid, "notenant": regInvalid, "badport": regInvalid, "badtenant": regInvalid,
			"badportname": regInvalid}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gw := mustDial(t, addr, tc.creds, gatewayHello(tc.name))
			a := gw.register(tc.services...)
			var got []string
			for _, v := range a.VIPs {
				if !v.VIP.IsValid() || !r.cfg.Pool.Contains(v.VIP) {
					t.Errorf("%s: VIP %v", v.Service, v.VIP)
				}
				got = append(got, v.Service)
			}
			if !slices.Equal(got, tc.accepted) {
				t.Errorf("accepted %v, want %v", got, tc.accepted)
			}
			rejected := map[string]bool{}
			for _, rj := range a.Rejected {
				rejected[rj.Service] = true
				if rj.Reason == "" {
					t.Errorf("rejection of %s has no reason", rj.Service)
				}
			}
			for name, result := range tc.rejected {
				if !rejected[name] {
					t.Errorf("%s not rejected (%+v)", name, a.Rejected)
				}
				if testutil.ToFloat64(r.m.registrations.WithLabelValues(roleGateway, result)) == 0 {
					t.Errorf("no %s registration counted", result)
				}
			}
		})
	}
}

func TestAdmission(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	agentID := p.identity("acme", tunnel.RoleAgent, "a1")
	gatewayID := p.identity("ops", tunnel.RoleGateway, "gw1")
	tests := []struct {
		name   string
		creds  *tunnel.Credentials
		hello  tunnel.Hello
		alpn   []string
		reason string // "" = admitted
	}{
		{"agent", agentID, agentHello("a1"), nil, ""},
		{"gateway", gatewayID, gatewayHello("gw1"), nil, ""},
		{"agent claiming gateway", agentID, gatewayHello("x"), nil, refuseWrongRole},
		{"gateway claiming agent", gatewayID, agentHello("x"), nil, refuseWrongRole},
		{"relay identity", p.identity("ops", tunnel.RoleRelay, "r2"), tunnel.Hello{Role: tunnel.RoleRelay}, nil, refuseWrongRole},
		{"agent without inner address", agentID, tunnel.Hello{Role: tunnel.RoleAgent}, nil, refuseBadHello},
		{"v1 gateway", gatewayID, tunnel.Hello{}, []string{tunnel.ALPNV1}, refuseVersion},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			counter := r.m.refusals.WithLabelValues(tc.reason)
			before := testutil.ToFloat64(counter)
			c, err := dial(t, addr, tc.creds, tc.hello, tc.alpn...)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if c != nil { // v1: no hello, the refusal closes the connection
				<-c.s.Done()
				err = c.s.Err()
			}
			if err == nil {
				t.Fatal("admitted")
			}
			if re, ok := errors.AsType[*tunnel.RefusedError](err); tc.alpn == nil && (!ok || re.Code != tc.reason) {
				t.Errorf("error %v, want refusal %s", err, tc.reason)
			}
			waitFor(t, tc.reason+" counted", func() bool { return testutil.ToFloat64(counter) > before })
		})
	}
}

func TestInsecureRelay(t *testing.T) {
	p := newPKI(t)
	cfg := p.relayConfig(t.TempDir())
	cfg.Insecure, cfg.CA = true, ""
	r := startRelay(t, cfg)
	addr := r.Addr().String()
	anon := p.creds(p.other, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleGateway, Name: "unverified"})
	gw := mustDial(t, addr, anon, gatewayHello("dev-gw"))
	vip := vipOf(gw.register(svc("web", "default")), "web")
	if !vip.IsValid() {
		t.Fatal("no VIP for an insecure gateway")
	}
	a := mustDial(t, addr, p.creds(p.other, tunnel.IssueRequest{Name: "dev", NoIdentity: true}), agentHello("dev-agent"))
	if d := next[tunnel.Directory](a); len(d.Services) != 1 {
		t.Fatalf("directory %+v", d)
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for g := range r.gateways {
		if g.id.String() != "default/gateway/dev-gw" {
			t.Errorf("insecure gateway admitted as %s (its certificate claims acme, unverified)", g.id)
		}
	}
}

func TestDirectoryPerTenant(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.register(svc("web", "acme"), svc("db", "finance"), svc("wiki", "*"), svc("legacy-app", "default"))
	tests := []struct {
		name  string
		creds *tunnel.Credentials
		want  []string
	}{
		{"acme", p.identity("acme", tunnel.RoleAgent, "a"), []string{"web", "wiki"}},
		{"finance", p.identity("finance", tunnel.RoleAgent, "f"), []string{"db", "wiki"}},
		{"nobody's tenant", p.identity("zeta", tunnel.RoleAgent, "z"), []string{"wiki"}},
		{"legacy rights", p.creds(p.ca, tunnel.IssueRequest{Name: "old", NoIdentity: true, LegacySANs: []string{"agent.legacy-app.ztna"}}), []string{"legacy-app"}},
		{"legacy wildcard", p.creds(p.ca, tunnel.IssueRequest{Name: "old2", NoIdentity: true, LegacySANs: []string{"agent.*.ztna"}}), []string{"legacy-app", "wiki"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := mustDial(t, addr, tc.creds, agentHello(tc.name))
			d := next[tunnel.Directory](a)
			var got []string
			for _, s := range d.Services {
				got = append(got, s.Name)
			}
			if !slices.Equal(got, tc.want) || d.Pool != r.cfg.Pool || d.Zone != "ztna.internal." {
				t.Errorf("directory %v (%+v), want %v", got, d, tc.want)
			}
		})
	}
}

// TestDirectoryFollowsChanges drives two gateways of "web" through
// health changes, a second gateway, definition changes (a tenant added
// and removed, ports and ICMP changed) and their leaving, and checks after
// each step the directory of an agent of each tenant, the conflict gauge,
// and that the relay admits an agent of a newly added tenant and refuses
// one of a removed tenant.
func TestDirectoryFollowsChanges(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	acme := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a"), agentHello("a"))
	globex := mustDial(t, addr, p.identity("globex", tunnel.RoleAgent, "b"), agentHello("b"))
	for _, c := range []*client{acme, globex} {
		if d := next[tunnel.Directory](c); len(d.Services) != 0 {
			t.Fatalf("first directory %+v", d)
		}
	}
	gw1 := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw2 := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw2"), gatewayHello("gw2"))
	health := func(g *client, healthy bool) {
		t.Helper()
		if err := g.s.Send(&tunnel.Health{Type: tunnel.MessageHealth, Services: map[string]bool{"web": healthy}}); err != nil {
			t.Fatal(err)
		}
	}
	udp7, tcp443 := tunnel.PortInfo{Protocol: "udp", Port: 7}, tunnel.PortInfo{Protocol: "tcp", Port: 443}
	web := func(tenants []string, icmp bool, ports ...tunnel.PortInfo) tunnel.ServiceInfo {
		return tunnel.ServiceInfo{Name: "web", Tenants: tenants, ICMP: icmp, Ports: ports, Healthy: true}
	}
	var vip netip.Addr
	var closedTags []uint32 // what the last register made the relay close
	register := func(g *client, services ...tunnel.ServiceInfo) {
		t.Helper()
		if err := g.s.Send(&tunnel.Register{Type: tunnel.MessageRegister, Services: services}); err != nil {
			t.Fatal(err)
		}
		closedTags = nil
		deadline := time.After(testTimeout)
		for {
			var msg any
			select {
			case msg = <-g.msgs:
			case <-deadline:
				t.Fatal("no assign")
			}
			switch m := msg.(type) {
			case *tunnel.TagClose: // sent before the assign
				closedTags = append(closedTags, m.Tags...)
			case *tunnel.Assign:
				if v := vipOf(m, "web"); v.IsValid() {
					vip = v
				}
				return
			}
		}
	}
	// A packet of a new UDP flow to web, from a source port of its own.
	srcPort := uint16(5000)
	flowPacket := func() []byte {
		srcPort++
		return udpPacket(netip.AddrPortFrom(innerAddr, srcPort), netip.AddrPortFrom(vip, 7), "x")
	}
	// admitted checks that an agent's new flow to web is routed to g.
	var globexTag uint32
	admitted := func(t *testing.T, c *client, identity string, g *client) {
		t.Helper()
		pkt := flowPacket()
		c.send("web", pkt)
		deadline := time.After(testTimeout)
		resend := time.NewTicker(100 * time.Millisecond) // the datagram may be lost
		defer resend.Stop()
		for {
			select {
			case m := <-g.msgs:
				if o, ok := m.(*tunnel.TagOpen); ok && o.Identity == identity && o.Service == "web" {
					globexTag = o.Tag
					return
				}
			case <-resend.C:
				c.send("web", pkt)
			case <-deadline:
				t.Fatalf("no tag_open for %s at the gateway", identity)
			}
		}
	}
	refused := func(t *testing.T, c *client) {
		t.Helper()
		before := dropped(r, dropNotAuthorized)
		pkt := flowPacket()
		waitFor(t, "not_authorized drops", func() bool {
			c.send("web", pkt) // again: the datagram may be lost
			time.Sleep(5 * time.Millisecond)
			return dropped(r, dropNotAuthorized) > before
		})
	}

	// What each agent's latest directory shows of web.
	current := map[*client]string{acme: "absent", globex: "absent"}
	awaitDirectory := func(t *testing.T, who string, c *client, want string) {
		t.Helper()
		deadline := time.After(testTimeout)
		for current[c] != want {
			select {
			case m := <-c.msgs:
				if d, ok := m.(*tunnel.Directory); ok {
					current[c] = webEntry(d)
				}
			case <-deadline:
				t.Fatalf("%s's directory shows %s, want %s", who, current[c], want)
			}
		}
	}
	both, one := []string{"acme", "globex"}, []string{"acme"}
	steps := []struct {
		name         string
		change       func()
		acme, globex string
		conflicts    float64
		check        func(t *testing.T)
	}{
		{"registered", func() { register(gw1, web(one, false, udp7)) },
			"healthy ports=[udp/7]", "absent", 0, nil},
		{"its gateway reports it down", func() { health(gw1, false) },
			"down ports=[udp/7]", "absent", 0, nil},
		{"a second gateway serves it healthy", func() { register(gw2, web(one, false, udp7)) },
			"healthy ports=[udp/7]", "absent", 0, nil},
		{"the second gateway reports it down", func() { health(gw2, false) },
			"down ports=[udp/7]", "absent", 0, nil},
		{"the first gateway recovers", func() { health(gw1, true) },
			"healthy ports=[udp/7]", "absent", 0, nil},
		{"the first gateway adds a tenant", func() { register(gw1, web(both, false, udp7)) },
			"healthy ports=[udp/7]", "healthy ports=[udp/7]", 1,
			func(t *testing.T) { admitted(t, globex, "globex/agent/b", gw1) }},
		{"the first gateway changes the ports and allows icmp", func() { register(gw1, web(both, true, tcp443)) },
			"healthy ports=[tcp/443 udp/7] icmp", "healthy ports=[tcp/443] icmp", 1, nil},
		{"the first gateway removes a tenant", func() { register(gw1, web(one, true, tcp443)) },
			"healthy ports=[tcp/443 udp/7] icmp", "absent", 1,
			func(t *testing.T) {
				if !slices.Equal(closedTags, []uint32{globexTag}) {
					t.Errorf("tag_close %v, want the removed tenant's tag %d", closedTags, globexTag)
				}
				refused(t, globex)
			}},
		{"the first gateway drops it", func() { gw1.register() },
			"down ports=[udp/7]", "absent", 0, nil},
		{"the second gateway leaves", func() { gw2.close() },
			"absent", "absent", 0, nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.change()
			awaitDirectory(t, "acme", acme, st.acme)
			awaitDirectory(t, "globex", globex, st.globex)
			if got := testutil.ToFloat64(r.m.conflicts); got != st.conflicts {
				t.Errorf("conflicts gauge %v, want %v", got, st.conflicts)
			}
			if st.check != nil {
				st.check(t)
			}
		})
	}
	if _, ok := r.pool.Lookup("web"); ok {
		t.Error("the VIP of a service no gateway serves is still allocated")
	}
}

// webEntry renders web in a directory: "absent", or its health, ports and
// ICMP ("healthy ports=[tcp/443] icmp").
func webEntry(d *tunnel.Directory) string {
	for _, s := range d.Services {
		if s.Name != "web" {
			continue
		}
		e := "down"
		if s.Healthy {
			e = "healthy"
		}
		e += fmt.Sprintf(" ports=%v", portList(s.Ports))
		if s.ICMP {
			e += " icmp"
		}
		return e
	}
	return "absent"
}

// TestVIPsStableAcrossRestart restarts the relay on the same state
// directory: services get their VIPs back, whatever order they come in,
// and a central pin is honoured over a gateway's pin.
func TestVIPsStableAcrossRestart(t *testing.T) {
	p := newPKI(t)
	state := t.TempDir()
	pinned := netip.MustParseAddr("10.100.0.200")
	config := func() *conf.Relay {
		cfg := p.relayConfig(state)
		cfg.Pins = []conf.Pin{{Service: "pinned", VIP: pinned}}
		return cfg
	}
	gwCreds := p.identity("ops", tunnel.RoleGateway, "gw1")
	gatewayPin := svc("hinted", "acme")
	gatewayPin.VIP = netip.MustParseAddr("10.100.0.77")
	pinnedByBoth := svc("pinned", "acme")
	pinnedByBoth.VIP = netip.MustParseAddr("10.100.0.78")
	services := []tunnel.ServiceInfo{svc("alpha", "acme"), svc("beta", "acme"), svc("gamma", "*"), gatewayPin, pinnedByBoth}

	r1, err := New(config(), Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.Start(); err != nil {
		t.Fatal(err)
	}
	gw := mustDial(t, r1.Addr().String(), gwCreds, gatewayHello("gw1"))
	first := gw.register(services...)
	gw.close()
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	if vipOf(first, "pinned") != pinned || vipOf(first, "hinted") != gatewayPin.VIP {
		t.Fatalf("pins not honoured: %+v", first.VIPs)
	}

	r2 := startRelay(t, config())
	slices.Reverse(services)
	gw2 := mustDial(t, r2.Addr().String(), gwCreds, gatewayHello("gw1"))
	second := gw2.register(services...)
	if !slices.Equal(first.VIPs, second.VIPs) {
		t.Errorf("VIPs changed across a restart:\n%+v\n%+v", first.VIPs, second.VIPs)
	}
}

func TestGatewayReconnectReplacesOldSession(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	creds := p.identity("ops", tunnel.RoleGateway, "gw1")
	old := mustDial(t, r.Addr().String(), creds, gatewayHello("gw1"))
	vip := vipOf(old.register(svc("web", "acme")), "web")
	fresh := mustDial(t, r.Addr().String(), creds, gatewayHello("gw1"))
	<-old.s.Done()
	if got := vipOf(fresh.register(svc("web", "acme")), "web"); got != vip {
		t.Errorf("VIP %v after reconnect, was %v", got, vip)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	waitFor(t, "one gateway", func() bool {
		r.mu.RLock()
		defer r.mu.RUnlock()
		return len(r.gateways) == 1 && ctx.Err() == nil
	})
}

// TestGatewayReplacementNeedsSameIdentity: a new gateway session closes an
// older one only when both are the same gateway. Identities that merely
// print the same (Identity.String() leaves out whether the identity is
// legacy and which services it holds rights for) are different gateways:
// a legacy connector certificate with rights for one service, whose common
// name happens to be (or is chosen to be) another gateway's name, must not
// be able to disconnect that gateway.
func TestGatewayReplacementNeedsSameIdentity(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	tests := []struct {
		name          string
		first, second *tunnel.Credentials
	}{
		{"legacy connector vs URI gateway of tenant default",
			p.identity(tunnel.DefaultTenant, tunnel.RoleGateway, "gw1"),
			p.creds(p.ca, tunnel.IssueRequest{Name: "gw1", NoIdentity: true, LegacySANs: []string{"connector.other.ztna"}})},
		{"legacy connectors with different rights",
			p.creds(p.ca, tunnel.IssueRequest{Name: "gw2", NoIdentity: true, LegacySANs: []string{"connector.web2.ztna"}}),
			p.creds(p.ca, tunnel.IssueRequest{Name: "gw2", NoIdentity: true, LegacySANs: []string{"connector.other.ztna"}})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first := mustDial(t, addr, tc.first, gatewayHello("gw"))
			if a := first.register(svc("web2", tunnel.DefaultTenant)); len(a.VIPs) != 1 {
				t.Fatalf("first gateway's registration: %+v", a)
			}
			second := mustDial(t, addr, tc.second, gatewayHello("gw"))
			second.register()
			select {
			case <-first.s.Done():
				t.Errorf("the second certificate closed the first gateway's session: %v", first.s.Err())
			case <-time.After(500 * time.Millisecond):
			}
		})
	}
}

// TestInsecureRelayKeepsVerifiedGateways: with insecure_allow_unauthenticated
// (and a CA, so that identities still verify), a client without a verified
// identity is admitted as tenant default with the name its hello gives.
// That must not make it the same gateway as a verified one of that name:
// it must not close the verified gateway's session.
func TestInsecureRelayKeepsVerifiedGateways(t *testing.T) {
	p := newPKI(t)
	cfg := p.relayConfig(t.TempDir())
	cfg.Insecure = true
	r := startRelay(t, cfg)
	addr := r.Addr().String()
	verified := mustDial(t, addr, p.identity(tunnel.DefaultTenant, tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	if a := verified.register(svc("web", tunnel.DefaultTenant)); len(a.VIPs) != 1 {
		t.Fatalf("verified gateway's registration: %+v", a)
	}
	anon := mustDial(t, addr, p.creds(p.other, tunnel.IssueRequest{Name: "x", NoIdentity: true}), gatewayHello("gw1"))
	anon.register()
	select {
	case <-verified.s.Done():
		t.Errorf("an unverified client closed a verified gateway's session: %v", verified.s.Err())
	case <-time.After(500 * time.Millisecond):
	}
}

// TestStaleVIPsReleased: after the grace that follows a start, VIPs of
// services no gateway registered again are released; pinned ones stay.
func TestStaleVIPsReleased(t *testing.T) {
	p := newPKI(t)
	state := t.TempDir()
	config := func() *conf.Relay {
		cfg := p.relayConfig(state)
		cfg.Pins = []conf.Pin{{Service: "pinned", VIP: netip.MustParseAddr("10.100.0.9")}}
		return cfg
	}
	r1, err := New(config(), Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r1.pool.Acquire(catalog.Request{Service: "gone"}); err != nil {
		t.Fatal(err)
	}
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := startRelayWith(t, config(), Options{StaleGrace: 50 * time.Millisecond})
	if _, ok := r2.pool.Lookup("gone"); !ok {
		t.Fatal("the state file lost an allocation")
	}
	gw := mustDial(t, r2.Addr().String(), p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.register(svc("live", "acme"))
	waitFor(t, "stale VIP released", func() bool {
		_, ok := r2.pool.Lookup("gone")
		return !ok
	})
	for _, name := range []string{"live", "pinned"} {
		if _, ok := r2.pool.Lookup(name); !ok {
			t.Errorf("%s lost its VIP", name)
		}
	}
}

// TestDirectoryLarge: a directory larger than the 64 KiB control messages
// of before reaches the agent whole, and changes after it too.
func TestDirectoryLarge(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	next[tunnel.Directory](a)
	var services []tunnel.ServiceInfo
	for i := range 40 {
		s := svc(fmt.Sprintf("svc-%02d-%s", i, strings.Repeat("x", 50)), "acme")
		s.Ports = nil
		for port := range 40 {
			s.Ports = append(s.Ports, tunnel.PortInfo{Name: fmt.Sprintf("p%02d-%s", port, strings.Repeat("y", 55)), Protocol: "tcp", Port: uint16(1000 + port)})
		}
		services = append(services, s)
	}
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	if got := gw.register(services...); len(got.VIPs) != len(services) {
		t.Fatalf("%d of %d services accepted: %+v", len(got.VIPs), len(services), got.Rejected)
	}
	wantDirectory := func(n int) {
		t.Helper()
		for {
			d := next[tunnel.Directory](a)
			if len(d.Services) != n {
				continue
			}
			body, _ := json.Marshal(d)
			if len(body) <= 64<<10 && n == len(services) {
				t.Fatalf("the directory is %d bytes: not larger than 64 KiB", len(body))
			}
			for _, s := range d.Services {
				if len(s.Ports) != 40 {
					t.Fatalf("%s: %d ports", s.Name, len(s.Ports))
				}
			}
			return
		}
	}
	wantDirectory(len(services))
	gw.register(services[:len(services)-1]...)
	wantDirectory(len(services) - 1)
	if n := testutil.ToFloat64(r.m.dirFailed); n != 0 {
		t.Errorf("%v directory failures", n)
	}
}

// TestSlowReaderHoldsUpNobody: a gateway that stops reading its control
// stream while the relay has much to tell it (assigns full of rejections)
// does not hold up another gateway's registration, and the relay closes
// the silent one once its messages back up.
func TestSlowReaderHoldsUpNobody(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	silent, err := tunnel.Dial(ctx, addr, tunnel.DialConfig{Credentials: p.identity("ops", tunnel.RoleGateway, "silent"),
		ServerName: serverName, Hello: gatewayHello("silent")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close("test over")
	var bad []tunnel.ServiceInfo // each rejected, with its reason in the assign
	for i := range 500 {
		bad = append(bad, tunnel.ServiceInfo{Name: fmt.Sprintf("Bad-%03d-%s", i, strings.Repeat("A", 50)), Tenants: []string{"*"}})
	}
	for range 20 { // about 2.5 MB of assigns: more than its stream's window
		if err := silent.Send(&tunnel.Register{Type: tunnel.MessageRegister, Services: bad}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	start := time.Now()
	if got := gw.register(svc("web", "acme")); len(got.VIPs) != 1 {
		t.Fatalf("assign %+v", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the registration took %v", d)
	}
	select {
	case <-gw.s.Done():
		t.Fatalf("the honest gateway's session ended: %v", gw.s.Err())
	case <-time.After(3 * time.Second): // beyond the relay's ping deadline
	}
	select { // once a write to it has waited out its deadline
	case <-silent.Done():
	case <-time.After(3 * tunnel.ControlWriteTimeout):
		t.Error("the relay did not close the gateway that does not read")
	}
}

// TestIdentitySessionsBounded: the 17th session of one agent identity
// closes its oldest; sessions of another identity are not touched.
func TestIdentitySessionsBounded(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	creds := p.identity("acme", tunnel.RoleAgent, "copied")
	other := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "other"), agentHello("other"))
	var sessions []*client
	for i := range tunnel.MaxIdentitySessions + 1 {
		sessions = append(sessions, mustDial(t, addr, creds, agentHello(fmt.Sprintf("copy-%d", i))))
		next[tunnel.Directory](sessions[i]) // admitted, in order
	}
	select {
	case <-sessions[0].s.Done():
	case <-time.After(testTimeout):
		t.Fatal("the oldest session of the identity is still open")
	}
	time.Sleep(100 * time.Millisecond)
	for i, c := range append(sessions[1:], other) {
		if err := c.s.Err(); err != nil {
			t.Errorf("session %d ended: %v", i+1, err)
		}
	}
	if n := testutil.ToFloat64(r.m.identityClosed); n != 1 {
		t.Errorf("%v sessions counted as closed, want 1", n)
	}

	t.Run("a burst of sessions at once", func(t *testing.T) {
		var (
			mu  sync.Mutex
			all = sessions[1:]
			wg  sync.WaitGroup
		)
		for i := range tunnel.MaxIdentitySessions {
			wg.Go(func() {
				c, err := dial(t, addr, creds, agentHello(fmt.Sprintf("burst-%d", i)))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				all = append(all, c)
				mu.Unlock()
			})
		}
		wg.Wait()
		eventually := time.Now().Add(testTimeout)
		for {
			alive := 0
			for _, c := range all {
				if c.s.Err() == nil {
					alive++
				}
			}
			r.mu.RLock()
			registered := len(r.byIdentity[identityKey{"acme", tunnel.RoleAgent, "copied"}])
			r.mu.RUnlock()
			if alive == tunnel.MaxIdentitySessions && registered == tunnel.MaxIdentitySessions {
				break
			}
			if time.Now().After(eventually) {
				t.Fatalf("%d sessions of one identity alive, %d registered; cap %d", alive, registered, tunnel.MaxIdentitySessions)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if n := testutil.ToFloat64(r.m.identityClosed); n != float64(1+tunnel.MaxIdentitySessions) {
			t.Errorf("%v sessions counted as closed, want %d", n, 1+tunnel.MaxIdentitySessions)
		}
	})
}

// TestTagOpenBurst: a thousand tags opened at once to one gateway that
// reads (agents coming back after a relay restart) all reach it, and the
// gateway's session is not taken for a slow reader.
func TestTagOpenBurst(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.register(svc("web", "acme"))
	opened := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case m := <-gw.msgs:
				if _, ok := m.(*tunnel.TagOpen); ok {
					if n++; n == 1000 {
						opened <- n
						return
					}
				}
			case <-gw.s.Done():
				opened <- n
				return
			}
		}
	}()
	real := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a0"), agentHello("a0"))
	next[tunnel.Directory](real)
	r.mu.RLock()
	var g *gateway
	for x := range r.gateways {
		g = x
	}
	var ra *agent
	for x := range r.agents {
		ra = x
	}
	web := r.services["web"]
	r.mu.RUnlock()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 1000 {
		pr := ra.peer
		pr.id = tunnel.Identity{Tenant: "acme", Role: tunnel.RoleAgent, Name: fmt.Sprintf("a%d", i+1)}
		a := newAgent(pr, innerAddr, &r.m.flows)
		wg.Go(func() {
			<-start
			if _, reason := r.openTag(a, web, g, innerAddr); reason != 0 {
				t.Errorf("open: %v", reason)
			}
		})
	}
	close(start)
	wg.Wait()
	select {
	case n := <-opened:
		if n != 1000 {
			t.Errorf("the gateway got %d tag_opens, want 1000 (session: %v)", n, gw.s.Err())
		}
	case <-time.After(testTimeout):
		t.Fatal("the tag_opens did not all arrive")
	}
}

// TestPeerWarningsBounded: a gateway whose one registration has 200
// invalid services makes the relay log at most a burst of warnings, while
// the counter takes every rejection.
func TestPeerWarningsBounded(t *testing.T) {
	p := newPKI(t)
	var logs syncBuffer
	r, err := New(p.relayConfig(t.TempDir()), Options{}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	var bad []tunnel.ServiceInfo
	for i := range 200 {
		bad = append(bad, tunnel.ServiceInfo{Name: fmt.Sprintf("Bad-%d", i), Tenants: []string{"*"}})
	}
	gw := mustDial(t, r.Addr().String(), p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	// The assign lists the first maxRejections and counts the rest.
	if a := gw.register(bad...); len(a.Rejected) != maxRejections+1 ||
		!strings.HasPrefix(a.Rejected[maxRejections].Reason, fmt.Sprint(len(bad)-maxRejections, " more")) {
		t.Fatalf("%d rejections listed, want %d, the last counting the rest", len(a.Rejected), maxRejections+1)
	}
	if n := testutil.ToFloat64(r.m.registrations.WithLabelValues(roleGateway, regInvalid)); n != float64(len(bad)) {
		t.Errorf("%v rejections counted, want %d", n, len(bad))
	}
	if n := strings.Count(logs.String(), "service registration rejected"); n == 0 || n > peerWarnBurst+1 {
		t.Errorf("%d warnings logged, want 1 to %d", n, peerWarnBurst+1)
	}
}

// syncBuffer is a bytes.Buffer for a logger written from several
// goroutines.
type syncBuffer = testlog.Buffer

// TestVIPsKeptByShutdown: a relay stopped while its gateways are connected
// keeps every allocation in its state file (their sessions end during the
// shutdown, which must not release their services), so two services that
// compete for the same home address keep theirs after a restart longer
// than the hold-down, whichever registers first.
func TestVIPsKeptByShutdown(t *testing.T) {
	p := newPKI(t)
	state := t.TempDir()
	var now atomic.Int64
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	now.Store(t0.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	home := func(name string) netip.Addr {
		pool, _, err := catalog.OpenPool(catalog.PoolConfig{Prefix: netip.MustParsePrefix("10.100.0.0/24")})
		if err != nil {
			t.Fatal(err)
		}
		a, err := pool.Acquire(catalog.Request{Service: name})
		if err != nil {
			t.Fatal(err)
		}
		return a.VIP
	}
	web, rival := "web", ""
	for i := 0; rival == ""; i++ {
		if n := fmt.Sprintf("svc%d", i); home(n) == home(web) {
			rival = n
		}
	}
	gwCreds := p.identity("ops", tunnel.RoleGateway, "gw1")
	r1, err := New(p.relayConfig(state), Options{Now: clock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.Start(); err != nil {
		t.Fatal(err)
	}
	gw := mustDial(t, r1.Addr().String(), gwCreds, gatewayHello("gw1"))
	gw.register(svc(web, "acme"))
	first := gw.register(svc(web, "acme"), svc(rival, "acme"))
	if err := r1.Close(); err != nil { // the gateway still connected
		t.Fatal(err)
	}
	gw.close()
	now.Store(t0.Add(2 * p.relayConfig(state).TTL).Add(time.Second).UnixNano()) // beyond any hold-down
	r2 := startRelayWith(t, p.relayConfig(state), Options{Now: clock})
	gw2 := mustDial(t, r2.Addr().String(), gwCreds, gatewayHello("gw1"))
	gw2.register(svc(rival, "acme"))
	second := gw2.register(svc(rival, "acme"), svc(web, "acme"))
	for _, n := range []string{web, rival} {
		if vipOf(first, n) != vipOf(second, n) {
			t.Errorf("%s: VIP %v before the restart, %v after", n, vipOf(first, n), vipOf(second, n))
		}
	}
}

// TestAssignOfManyRejections: the assign that answers a register fits in a
// control message whatever that register held within tunnel.MaxMessageSize:
// a service name of hundreds of KiB (which the reason repeats), or
// thousands of bad services. Before, such an assign was too large to send:
// the relay logged it and sent nothing, while it had allocated VIPs for
// the register's good services, which the gateway then never learned.
func TestAssignOfManyRejections(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	const many = 8000
	bad := make([]tunnel.ServiceInfo, 0, many)
	for i := range many {
		bad = append(bad, svc(fmt.Sprintf("Bad_Service_Name_%023d", i), "acme"))
	}
	tests := []struct {
		name   string
		bad    []tunnel.ServiceInfo
		listed int // rejections the assign lists
	}{
		{"a name of 600 KiB", []tunnel.ServiceInfo{svc(strings.Repeat("a", 600<<10), "acme")}, 1},
		{"8,000 bad names", bad, maxRejections + 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("gw%d", i)
			gw := mustDial(t, r.Addr().String(), p.identity("ops", tunnel.RoleGateway, name), gatewayHello(name))
			a := gw.register(append(slices.Clone(tc.bad), svc("web", "acme"))...)
			if !vipOf(a, "web").IsValid() {
				t.Errorf("no VIP for web: %+v", a.VIPs)
			}
			if len(a.Rejected) != tc.listed {
				t.Fatalf("%d rejections listed, want %d", len(a.Rejected), tc.listed)
			}
			for _, rj := range a.Rejected {
				if len(rj.Service) > maxRejectionText || len(rj.Reason) > maxRejectionText || rj.Reason == "" {
					t.Fatalf("rejection of %d+%d bytes: %.80q: %.80q", len(rj.Service), len(rj.Reason), rj.Service, rj.Reason)
				}
			}
			if more := len(tc.bad) - maxRejections; more > 0 {
				last := a.Rejected[len(a.Rejected)-1]
				if want := fmt.Sprintf("%d more services rejected", more); last.Service != "" || !strings.HasPrefix(last.Reason, want) {
					t.Errorf("last rejection %+v, want one that says %q", last, want)
				}
			}
		})
	}
}

func TestClip(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"web", 8, "web"},
		{"12345678", 8, "12345678"},
		{"123456789", 8, "12345…"},
		{"1234ééé", 8, "1234…"},   // é is 2 bytes: 1234 then a cut é
		{"12345ééé", 9, "12345…"}, // the cut falls inside the first é
		{"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7", 8, "\xff\xfe\xfd\xfc\xfb…"}, // not UTF-8: cut by bytes
	}
	for _, tc := range tests {
		if got := clip(tc.in, tc.n); got != tc.want || len(got) > tc.n {
			t.Errorf("clip(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

// TestHeldVIPNotMovedByGatewayPin: a gateway's vip pin is honoured only
// while the service has no allocation of its own (docs/protocol.md,
// "VIPs": a VIP never moves; a service that returns within the hold-down
// gets the same VIP back). A service whose gateways all left has its VIP
// held for it; a gateway that comes back within the hold-down with a pin
// (ignored while the service was allocated) must get the held VIP back,
// not move the service to the pin.
func TestHeldVIPNotMovedByGatewayPin(t *testing.T) {
	pin := netip.MustParseAddr("10.100.0.77")
	pinned := func() tunnel.ServiceInfo {
		s := svc("web", "acme")
		s.VIP = pin
		return s
	}
	t.Run("gateway restart after its pin was added", func(t *testing.T) {
		p := newPKI(t)
		r := startRelay(t, p.relayConfig(t.TempDir()))
		creds := p.identity("ops", tunnel.RoleGateway, "gw1")
		gw := mustDial(t, r.Addr().String(), creds, gatewayHello("gw1"))
		vip := vipOf(gw.register(svc("web", "acme")), "web")
		if vip == pin {
			t.Skip("automatic VIP happens to be the pin")
		}
		// A reload adds a pin: ignored, the service has its VIP.
		if got := vipOf(gw.register(pinned()), "web"); got != vip {
			t.Fatalf("pin moved an allocated VIP: %v -> %v", vip, got)
		}
		gw.close()
		waitFor(t, "web released", func() bool { _, ok := r.pool.Lookup("web"); return !ok })
		gw2 := mustDial(t, r.Addr().String(), creds, gatewayHello("gw1"))
		if got := vipOf(gw2.register(pinned()), "web"); got != vip {
			t.Errorf("VIP of web moved across a gateway restart within the hold-down: %v -> %v", vip, got)
		}
	})
	t.Run("two gateways, the pinning one returns first", func(t *testing.T) {
		p := newPKI(t)
		r := startRelay(t, p.relayConfig(t.TempDir()))
		credsA := p.identity("ops", tunnel.RoleGateway, "gwa")
		credsB := p.identity("ops", tunnel.RoleGateway, "gwb")
		a := mustDial(t, r.Addr().String(), credsA, gatewayHello("gwa"))
		vip := vipOf(a.register(svc("web", "acme")), "web")
		b := mustDial(t, r.Addr().String(), credsB, gatewayHello("gwb"))
		if got := vipOf(b.register(pinned()), "web"); got != vip {
			t.Fatalf("second gateway's pin moved the VIP: %v -> %v", vip, got)
		}
		a.close()
		b.close()
		waitFor(t, "web released", func() bool { _, ok := r.pool.Lookup("web"); return !ok })
		b2 := mustDial(t, r.Addr().String(), credsB, gatewayHello("gwb"))
		if got := vipOf(b2.register(pinned()), "web"); got != vip {
			t.Errorf("VIP of web moved when its gateways reconnected within the hold-down: %v -> %v", vip, got)
		}
	})
}
