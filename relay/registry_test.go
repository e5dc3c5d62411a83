package relay

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

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
		}, []string{"ok"}, map[string]string{"Upper": regInvalid, "notenant": regInvalid, "badport": regInvalid, "badtenant": regInvalid}},
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

func TestDirectoryFollowsChanges(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a"), agentHello("a"))
	if d := next[tunnel.Directory](a); len(d.Services) != 0 {
		t.Fatalf("first directory %+v", d)
	}
	gw1 := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw2 := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw2"), gatewayHello("gw2"))
	health := func(g *client, healthy bool) {
		t.Helper()
		if err := g.s.Send(&tunnel.Health{Type: tunnel.MessageHealth, Services: map[string]bool{"web": healthy}}); err != nil {
			t.Fatal(err)
		}
	}
	type want struct {
		present, healthy bool
	}
	steps := []struct {
		name   string
		change func()
		want   want
	}{
		{"registered", func() { gw1.register(svc("web", "acme")) }, want{true, true}},
		{"its gateway reports it down", func() { health(gw1, false) }, want{true, false}},
		{"a second gateway serves it healthy", func() { gw2.register(svc("web", "acme")) }, want{true, true}},
		{"the second gateway reports it down", func() { health(gw2, false) }, want{true, false}},
		{"the first gateway recovers", func() { health(gw1, true) }, want{true, true}},
		{"the first gateway drops it", func() { gw1.register() }, want{true, false}},
		{"the second gateway leaves", func() { gw2.close() }, want{false, false}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.change()
			d := next[tunnel.Directory](a)
			got := want{}
			for _, s := range d.Services {
				if s.Name == "web" {
					got = want{true, s.Healthy}
				}
			}
			if got != st.want {
				t.Errorf("directory %+v, want %+v", d.Services, st.want)
			}
		})
	}
	if _, ok := r.pool.Lookup("web"); ok {
		t.Error("the VIP of a service no gateway serves is still allocated")
	}
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
