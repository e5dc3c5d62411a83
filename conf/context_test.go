package conf

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/ztgate/ztgate/catalog"
)

// named returns services named by names, with the given IPv4 pins ("" = none).
func named(pins map[string]string, names ...string) []catalog.Service {
	out := make([]catalog.Service, len(names))
	for i, n := range names {
		out[i] = catalog.Service{Name: n}
		if p, ok := pins[n]; ok {
			out[i].VIP = netip.MustParseAddr(p)
		}
	}
	return out
}

func TestValidateServices(t *testing.T) {
	pool := netip.MustParsePrefix("10.100.0.0/29")
	many := make([]string, 7)
	for i := range many {
		many[i] = fmt.Sprintf("s%d", i)
	}
	tests := []struct {
		name string
		svcs []catalog.Service
		ctx  ServiceContext
		want []string
	}{
		{"valid", named(map[string]string{"a": "10.100.0.2", "b": "10.100.0.6"}, "a", "b", "c"), ServiceContext{Pool: pool}, nil},
		{"duplicate names", named(nil, "web", "db", "Web"), ServiceContext{Pool: pool}, []string{`service[2].name: "Web" is also the name of service[0]`}},
		{"duplicate pins name both services", named(map[string]string{"web": "10.100.0.3", "db": "10.100.0.3"}, "web", "db"), ServiceContext{Pool: pool}, []string{
			`service[1].vip: 10.100.0.3 is pinned by both service "web" (service[0]) and service "db" (service[1])`}},
		{"pins outside the pool and reserved", named(map[string]string{"a": "10.100.0.8", "b": "10.100.0.0", "c": "10.100.0.1", "d": "10.100.0.7"}, "a", "b", "c", "d"), ServiceContext{Pool: pool}, []string{
			"service[0].vip: 10.100.0.8 is outside the pool 10.100.0.0/29",
			"service[1].vip: 10.100.0.0 is the network address of the pool 10.100.0.0/29",
			"service[2].vip: 10.100.0.1 is the gateway address (the first host of the pool 10.100.0.0/29)",
			"service[3].vip: 10.100.0.7 is the broadcast address of the pool 10.100.0.0/29",
		}},
		{"pool too small", named(nil, many...), ServiceContext{Pool: pool}, []string{"pool 10.100.0.0/29 has room for 5 VIPs but 7 services need one each"}},
		{"IPv6 pool too small", named(nil, "a", "b", "c"), ServiceContext{Pool: pool, Pool6: netip.MustParsePrefix("fd00::/126")}, []string{
			"pool fd00::/126 has room for 2 VIPs but 3 services need one each"}},
		{"no pool: no size check, no pins", named(map[string]string{"s0": "10.100.0.2"}, many...), ServiceContext{}, []string{
			"service[0].vip: VIPs are allocated by the relay"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := ValidateServices(tc.svcs, tc.ctx)
			if tc.want == nil {
				if errs != nil {
					t.Fatalf("errors: %v", errs)
				}
				return
			}
			wantErrors(t, errs, tc.want)
		})
	}
}

func TestPoolRoom(t *testing.T) {
	tests := []struct {
		pool string
		room uint64
		last string
	}{
		{"10.100.0.0/24", 253, "10.100.0.255"},
		{"10.100.0.0/30", 1, "10.100.0.3"},
		{"10.100.0.0/31", 0, "10.100.0.1"},
		{"10.0.0.0/8", 1<<24 - 3, "10.255.255.255"},
		{"fd00::/126", 2, "fd00::3"},
		{"fd00::/120", 254, "fd00::ff"},
		{"fd00::/64", 1<<64 - 1, "fd00::ffff:ffff:ffff:ffff"},
	}
	for _, tc := range tests {
		t.Run(tc.pool, func(t *testing.T) {
			p := netip.MustParsePrefix(tc.pool)
			if got := poolRoom(p); got != tc.room {
				t.Errorf("poolRoom = %d, want %d", got, tc.room)
			}
			if got := lastAddr(p); got != netip.MustParseAddr(tc.last) {
				t.Errorf("lastAddr = %s, want %s", got, tc.last)
			}
		})
	}
}

// TestValidateAddedService: a service posted to the API is checked against
// those there are; errors name the body's keys and the other service by
// name and origin, never an index of the merged list.
func TestValidateAddedService(t *testing.T) {
	ctx := ServiceContext{Pool: netip.MustParsePrefix("10.100.0.0/29"), Pool6: netip.MustParsePrefix("2001:db8::/64")}
	existing := []catalog.Service{
		{Name: "mail", Source: "file", VIP6: netip.MustParseAddr("2001:db8::5")},
		{Name: "web", Source: "file", VIP: netip.MustParseAddr("10.100.0.3")},
		{Name: "db", Source: "api", VIP: netip.MustParseAddr("10.100.0.4")},
	}
	tests := []struct {
		name string
		svc  catalog.Service
		want []string
	}{
		{"free", catalog.Service{Name: "new", VIP: netip.MustParseAddr("10.100.0.5"), VIP6: netip.MustParseAddr("2001:db8::6")}, nil},
		{"vip6 of a file service", catalog.Service{Name: "new", VIP6: netip.MustParseAddr("2001:db8::5")}, []string{
			`service.vip6: 2001:db8::5 is pinned by service "mail" (configuration file)`}},
		{"vip of an API service", catalog.Service{Name: "new", VIP: netip.MustParseAddr("10.100.0.4")}, []string{
			`service.vip: 10.100.0.4 is pinned by service "db" (added through the API)`}},
		{"name of an API service", catalog.Service{Name: "DB"}, []string{
			`service.name: "DB" is also the name of service "db" (added through the API)`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := ValidateAddedService(existing, tc.svc, ctx)
			if tc.want == nil {
				if errs != nil {
					t.Fatalf("errors: %v", errs)
				}
				return
			}
			wantErrors(t, errs, tc.want)
		})
	}
	small := ServiceContext{Pool: netip.MustParsePrefix("10.100.0.0/30")} // room for 1
	wantErrors(t, ValidateAddedService(existing[1:2], catalog.Service{Name: "new"}, small), []string{
		"pool 10.100.0.0/30 has room for 1 VIPs but 2 services need one each"})
}

// TestCheckServiceTenants: the tenants a context does not admit are named
// by key, in the words of the parse; "*", declared tenants, and any
// tenant in a context that admits unknown ones pass.
func TestCheckServiceTenants(t *testing.T) {
	svcs := []catalog.Service{
		{Name: "a", Tenants: []string{"*"}},
		{Name: "b", Tenants: []string{"acme", "partner"}},
	}
	ctx := ServiceContext{Tenants: []catalog.Tenant{{Name: "acme"}}}
	errs := CheckServiceTenants(svcs, ctx)
	if len(errs) != 1 || errs[0].Error() != `service[1].tenants[1]: unknown tenant "partner" (declare it in a [[tenant]] table)` {
		t.Fatalf("errors %q", errs)
	}
	ctx.AllowUnknownTenants = true
	if errs := CheckServiceTenants(svcs, ctx); len(errs) != 0 {
		t.Fatalf("a context admitting unknown tenants: %q", errs)
	}
}
