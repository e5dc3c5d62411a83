package conf

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// apiContext is the context of a standalone gateway with two tenants.
func apiContext() ServiceContext {
	return ServiceContext{
		Pool:  netip.MustParsePrefix("10.100.0.0/24"),
		Pool6: netip.MustParsePrefix("fd00::/64"),
		Tenants: []catalog.Tenant{
			{Name: "acme", Sources: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
			{Name: "globex", Sources: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}},
		},
		Limits: Limits{MaxFlows: 65536, MaxInflightHandshake: 1024, NewFlowsPerSecond: 1000, NewFlowsBurst: 2000},
	}
}

func TestParseServiceJSON(t *testing.T) {
	got, err := ParseServiceJSON([]byte(`{
		"name": "Web",
		"tenants": ["acme"],
		"vip": "10.100.0.10",
		"vip6": "fd00::10",
		"backends": ["192.0.2.10", "app.corp.example"],
		"balance": "least_conn",
		"icmp": false,
		"max_flows": 100,
		"max_inflight_handshakes": 16,
		"new_flows_per_second": 20,
		"new_flows_burst": 30,
		"port": [{"name": "http", "protocol": "tcp", "port": 80, "target": 8080}],
		"health": {"type": "http", "path": "/healthz", "expect_status": 200, "interval": "2s", "timeout": "500ms", "rise": 1, "fall": 2},
		"timeouts": {"tcp_idle": "5m", "udp_idle": null}
	}`), apiContext())
	if err != nil {
		t.Fatal(err)
	}
	want := catalog.Service{
		Name: "web", Tenants: []string{"acme"},
		VIP: netip.MustParseAddr("10.100.0.10"), VIP6: netip.MustParseAddr("fd00::10"),
		Backends: []string{"192.0.2.10", "app.corp.example"}, Balance: catalog.LeastConn,
		FlowLimits: catalog.FlowLimits{MaxFlows: 100, MaxInflightHandshakes: 16, NewFlowsPerSecond: 20, NewFlowsBurst: 30},
		Ports:      []catalog.Port{{Name: "http", Protocol: catalog.TCP, Port: 80, Target: 8080}},
		Health: catalog.Health{Type: catalog.HealthHTTP, Port: 8080, Path: "/healthz", ExpectStatus: 200,
			Interval: 2 * time.Second, Timeout: 500 * time.Millisecond, Rise: 1, Fall: 2},
		Timeouts: catalog.Timeouts{TCPIdle: 5 * time.Minute, UDPIdle: 2 * time.Minute, DNSIdle: 30 * time.Second},
		Source:   "api",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

// TestParseServiceJSONHealthPort: a service posted to the API tells an
// explicit health.port from its default as the file does, null being no
// port.
func TestParseServiceJSONHealthPort(t *testing.T) {
	cases := []struct {
		name, health string
		port         uint16
		set          bool
	}{
		{"no port", `{"type": "tcp"}`, 8080, false},
		{"null port", `{"type": "tcp", "port": null}`, 8080, false},
		{"the default written", `{"type": "tcp", "port": 8080}`, 8080, true},
		{"another port", `{"type": "tcp", "port": 9000}`, 9000, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseServiceJSON([]byte(`{"name": "web", "tenants": ["acme"], "backends": ["192.0.2.10"],
				"port": [{"protocol": "tcp", "port": 80, "target": 8080}], "health": `+tc.health+`}`), apiContext())
			if err != nil {
				t.Fatal(err)
			}
			if s.Health.Port != tc.port || s.Health.PortSet != tc.set {
				t.Errorf("health port %d, set %v; want %d, %v", s.Health.Port, s.Health.PortSet, tc.port, tc.set)
			}
		})
	}
}

func TestParseServiceJSONInvalid(t *testing.T) {
	const ports = `"port": [{"protocol": "tcp", "port": 80}]`
	tests := []struct {
		name, json string
		ctx        func(*ServiceContext)
		want       []string
	}{
		{"syntax", `{"name": "web",}`, nil, []string{"service: invalid JSON at byte 16: invalid character '}'"}},
		{"not an object", `["web"]`, nil, []string{"service: expected an object, got an array"}},
		{"null", `null`, nil, []string{"service: expected an object, got null"}},
		{"trailing data", `{"name": "web"} {}`, nil, []string{"service: invalid JSON: data after the object"}},
		{"empty", ``, nil, []string{"service: invalid JSON: EOF"}},
		{"unknown and mistyped keys", `{"name": "web", "tenants": "acme", "backend": ["192.0.2.1"],
			"port": [{"protcol": "tcp", "port": "80"}, {"protocol": "udp", "port": 53.5}], "health": []}`, nil, []string{
			"service.backend: unknown key",
			`service.health: expected an object, got an array`,
			`service.port[0].port: expected an integer, got string "80"`,
			"service.port[0].protcol: unknown key",
			"service.port[1].port: expected an integer, got number 53.5",
			`service.tenants: expected an array, got string "acme"`,
			"service.backends: required",
			"service.port[0].protocol: required",
		}},
		{"table word", `{"name": "web", "tenants": ["acme"], "backends": ["192.0.2.1"], "port": {"protocol": "tcp"}}`, nil, []string{
			"service.port: expected an array of objects, got an object"}},
		{"semantic", `{"name": "-web", "tenants": ["umbrella"], "backends": ["192.0.2.1:80"], "vip": "10.100.0.255",
			"port": [{"protocol": "sctp", "port": 0}]}`, nil, []string{
			`service.name: "-web" must not start or end with '-'`,
			`service.tenants[0]: unknown tenant "umbrella"`,
			`service.backends[0]: "192.0.2.1:80": a backend has no port`,
			`service.port[0].protocol: "sctp" is not tcp or udp`,
			"service.port[0].port: 0 is out of range 1..65535",
			"service.vip: 10.100.0.255 is the broadcast address of the pool 10.100.0.0/24",
		}},
		{"negative limits", `{"name": "web", "tenants": ["*"], "backends": ["192.0.2.1"], "max_flows": -1, "max_inflight_handshakes": -2,
			"new_flows_per_second": -3, "new_flows_burst": -4, ` + ports + `}`, nil, []string{
			"service.max_flows: must not be negative",
			"service.max_inflight_handshakes: must not be negative",
			"service.new_flows_per_second: must not be negative",
			"service.new_flows_burst: must not be negative",
		}},
		{"limits above the gateway's", `{"name": "web", "tenants": ["*"], "backends": ["192.0.2.1"], "max_inflight_handshakes": 1025,
			"new_flows_per_second": 1001, "new_flows_burst": 2001, ` + ports + `}`, nil, []string{
			"service.max_inflight_handshakes: 1025 is more than limits.max_inflight_handshakes 1024, the bound of the whole gateway",
			"service.new_flows_per_second: 1001 is more than limits.new_flows_per_second 1000, which bounds every source",
			"service.new_flows_burst: 2001 is more than limits.new_flows_burst 2000, which bounds every source",
		}},
		{"no rate cap when the gateway has none", `{"name": "web", "tenants": ["*"], "backends": ["192.0.2.1"], "new_flows_per_second": 5000,
			"new_flows_burst": 99999, "max_inflight_handshakes": 1025, ` + ports + `}`,
			func(c *ServiceContext) { c.Limits.NewFlowsPerSecond = 0 }, []string{
				"service.max_inflight_handshakes: 1025 is more than limits.max_inflight_handshakes 1024"}},
		{"burst without a rate", `{"name": "web", "tenants": ["*"], "backends": ["192.0.2.1"], "new_flows_burst": 5, ` + ports + `}`, nil, []string{
			"service.new_flows_burst: needs new_flows_per_second in the same table"}},
		{"every tenant and a name", `{"name": "web", "tenants": ["acme", "*"], "backends": ["192.0.2.1"], ` + ports + `}`, nil, []string{
			`service.tenants: "*" (every tenant) cannot be listed with tenant names`}},
		{"no IPv6 pool", `{"name": "web", "tenants": ["*"], "backends": ["192.0.2.1"], "vip6": "fd00::10", ` + ports + `}`,
			func(c *ServiceContext) { c.Pool6 = netip.Prefix{} }, []string{"service.vip6: fd00::10 cannot be pinned: no IPv6 pool (pool6) is configured"}},
		{"pin on a relay-attached gateway", `{"name": "web", "tenants": ["*"], "backends": ["192.0.2.1"], "vip": "10.100.0.10", ` + ports + `}`,
			func(c *ServiceContext) { c.Pool, c.Pool6 = netip.Prefix{}, netip.Prefix{} }, []string{"service.vip: VIPs are allocated by the relay"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := apiContext()
			if tc.ctx != nil {
				tc.ctx(&ctx)
			}
			svc, err := ParseServiceJSON([]byte(tc.json), ctx)
			wantErrors(t, err, tc.want)
			if !reflect.DeepEqual(svc, catalog.Service{}) {
				t.Errorf("service %+v returned with an error", svc)
			}
		})
	}
}

func TestParseServiceJSONUnknownTenants(t *testing.T) {
	ctx := apiContext()
	body := []byte(`{"name": "web", "tenants": ["from-cert"], "backends": ["192.0.2.1"], "port": [{"protocol": "tcp", "port": 80}]}`)
	if _, err := ParseServiceJSON(body, ctx); err == nil {
		t.Error("unknown tenant accepted without AllowUnknownTenants")
	}
	ctx.AllowUnknownTenants = true
	if _, err := ParseServiceJSON(body, ctx); err != nil {
		t.Errorf("unknown tenant with AllowUnknownTenants: %v", err)
	}
}
