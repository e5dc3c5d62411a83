package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
)

// classifyTable is a table of two tenants and three services: web (acme
// only, tcp 80 → 8080 and udp 53, echo on, with an IPv6 VIP), open (every
// tenant, tcp 443, echo off) and a service reached by its IPv6 VIP.
func classifyTable(perSecond int) *table {
	web := catalog.Service{
		Name: "web", Tenants: []string{"acme"}, ICMP: true,
		Ports: []catalog.Port{{Protocol: catalog.TCP, Port: 80, Target: 8080}, {Protocol: catalog.UDP, Port: 53, Target: 53}},
	}
	open := catalog.Service{
		Name: "open", Tenants: []string{"*"},
		Ports: []catalog.Port{{Protocol: catalog.TCP, Port: 443, Target: 443}},
	}
	t := &table{
		byVIP:  make(map[netip.Addr]*service),
		byName: make(map[string]*service),
		tenants: newTenantTable([]catalog.Tenant{
			{Name: "acme", Sources: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
			{Name: "globex", Sources: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}},
		}),
		limits: conf.Limits{NewFlowsPerSecond: perSecond, NewFlowsBurst: perSecond},
	}
	for _, s := range []struct {
		spec      catalog.Service
		vip, vip6 string
	}{{web, "10.100.0.10", "2001:db8:100::10"}, {open, "10.100.0.11", ""}} {
		svc := &service{spec: s.spec, vip: netip.MustParseAddr(s.vip), st: newServiceState(s.spec.Name)}
		t.byName[s.spec.Name] = svc
		t.byVIP[svc.vip] = svc
		if s.vip6 != "" {
			svc.vip6 = netip.MustParseAddr(s.vip6)
			t.byVIP[svc.vip6] = svc
		}
	}
	return t
}

func TestClassify(t *testing.T) {
	const (
		acme   = "198.51.100.7"
		globex = "203.0.113.7"
	)
	for _, tc := range []struct {
		name      string
		proto     catalog.Protocol // 0: echo
		src, dst  string
		refused   string
		svc       string // when not refused, or refused by service
		target    uint16
		tenant    string
		perSecond int
		repeat    int // classify this many times first
	}{
		{name: "tcp allowed", proto: catalog.TCP, src: acme, dst: "10.100.0.10:80", svc: "web", target: 8080, tenant: "acme"},
		{name: "udp allowed", proto: catalog.UDP, src: acme, dst: "10.100.0.10:53", svc: "web", target: 53, tenant: "acme"},
		{name: "IPv6 VIP", proto: catalog.TCP, src: acme, dst: "[2001:db8:100::10]:80", svc: "web", target: 8080, tenant: "acme"},
		{name: "IPv4-mapped VIP", proto: catalog.TCP, src: acme, dst: "[::ffff:10.100.0.10]:80", svc: "web", target: 8080, tenant: "acme"},
		{name: "IPv4-mapped source", proto: catalog.TCP, src: "::ffff:198.51.100.7", dst: "10.100.0.10:80", svc: "web", target: 8080, tenant: "acme"},
		{name: "every tenant", proto: catalog.TCP, src: globex, dst: "10.100.0.11:443", svc: "open", target: 443, tenant: "globex"},
		{name: "echo allowed", src: acme, dst: "10.100.0.10:0", svc: "web", tenant: "acme"},
		{name: "unknown source", proto: catalog.TCP, src: "192.0.2.1", dst: "10.100.0.10:80", refused: refuseUnknownSource},
		{name: "no service on the VIP", proto: catalog.TCP, src: acme, dst: "10.100.0.99:80", refused: refuseNoService, tenant: "acme"},
		{name: "tenant denied", proto: catalog.TCP, src: globex, dst: "10.100.0.10:80", refused: refuseTenant, svc: "web", tenant: "globex"},
		{name: "tenant denied echo", src: globex, dst: "10.100.0.10:0", refused: refuseTenant, svc: "web", tenant: "globex"},
		{name: "port not mapped", proto: catalog.TCP, src: acme, dst: "10.100.0.10:81", refused: refusePort, svc: "web", tenant: "acme"},
		{name: "protocol not mapped", proto: catalog.UDP, src: acme, dst: "10.100.0.10:80", refused: refusePort, svc: "web", tenant: "acme"},
		{name: "echo disabled", src: globex, dst: "10.100.0.11:0", refused: refuseICMP, svc: "open", tenant: "globex"},
		{name: "within the rate", proto: catalog.TCP, src: acme, dst: "10.100.0.10:80", svc: "web", target: 8080, tenant: "acme", perSecond: 3, repeat: 2},
		{name: "over the rate", proto: catalog.TCP, src: acme, dst: "10.100.0.10:80", refused: refuseRate, tenant: "acme", perSecond: 3, repeat: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Unix(1_700_000_000, 0) // a frozen clock: no token refills
			g := &Gateway{limits: newFlowLimits(), now: func() time.Time { return now }}
			tbl := classifyTable(tc.perSecond)
			src, dst := netip.MustParseAddr(tc.src), netip.MustParseAddrPort(tc.dst)
			for range tc.repeat {
				g.classify(tbl, tc.proto, src, dst)
			}
			d := g.classify(tbl, tc.proto, src, dst)
			if d.refused != tc.refused {
				t.Fatalf("refused %q, want %q", d.refused, tc.refused)
			}
			if d.peer.tenant != tc.tenant {
				t.Errorf("tenant %q, want %q", d.peer.tenant, tc.tenant)
			}
			switch {
			case tc.svc == "" && d.svc != nil:
				t.Errorf("service %s, want none", d.svc.spec.Name)
			case tc.svc != "" && (d.svc == nil || d.svc.spec.Name != tc.svc):
				t.Errorf("service %v, want %s", d.svc, tc.svc)
			}
			if d.port.Target != tc.target {
				t.Errorf("target port %d, want %d", d.port.Target, tc.target)
			}
		})
	}
}

func TestTenantLookup(t *testing.T) {
	tt := newTenantTable([]catalog.Tenant{
		{Name: "wide", Sources: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}, FlowLimits: catalog.FlowLimits{MaxFlows: 10}},
		// Sources need not be masked; the narrower prefix wins whatever
		// the order of the tenants.
		{Name: "narrow", Sources: []netip.Prefix{netip.MustParsePrefix("198.51.100.77/28"), netip.MustParsePrefix("2001:db8:5::/48")}},
		{Name: "v6", Sources: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}},
		{Name: "host", Sources: []netip.Prefix{netip.MustParsePrefix("203.0.113.9/32")}},
	})
	for _, tc := range []struct {
		addr   string
		tenant string // empty: none
	}{
		{"198.51.100.1", "wide"},
		{"198.51.100.64", "narrow"},
		{"198.51.100.79", "narrow"},
		{"198.51.100.80", "wide"},
		{"::ffff:198.51.100.70", "narrow"},
		{"2001:db8:5::1", "narrow"},
		{"2001:db8:6::1", "v6"},
		{"203.0.113.9", "host"},
		{"203.0.113.10", ""},
		{"192.0.2.1", ""},
		{"2001:db9::1", ""},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			got, ok := tt.lookup(netip.MustParseAddr(tc.addr))
			if got != tc.tenant || ok != (tc.tenant != "") {
				t.Errorf("lookup = %q, %v; want %q", got, ok, tc.tenant)
			}
		})
	}
	if tt.limits["wide"].MaxFlows != 10 || len(tt.limits) != 1 {
		t.Errorf("limits %v, want only wide's max_flows 10", tt.limits)
	}
}
