package conf

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// svc returns a gateway file with one service whose table body is body.
func svc(body string) string { return gatewayHead + "\n[[service]]\n" + body }

const tcp80 = "\n[[service.port]]\nprotocol = \"tcp\"\nport = 80\n"

// port returns a [[service.port]] table; target 0 leaves it to default.
func port(proto string, port, target int) string {
	s := fmt.Sprintf("[[service.port]]\nprotocol = %q\nport = %d\n", proto, port)
	if target != 0 {
		s += fmt.Sprintf("target = %d\n", target)
	}
	return s
}

// acmeService returns a gateway file with one service of tenant acme and
// backend 192.0.2.10; rest follows its name, tenants and backends.
func acmeService(name, rest string) string {
	return svc(fmt.Sprintf("name = %q\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]\n", name) + rest)
}

func TestServiceValid(t *testing.T) {
	tests := []struct {
		name  string
		toml  string
		check func(t *testing.T, s catalog.Service)
	}{
		{"upper-case name is lower-cased", svc(`name = "Web-1"
tenants = ["ACME"]
backends = ["192.0.2.10"]` + tcp80), func(t *testing.T, s catalog.Service) {
			if s.Name != "web-1" || s.Tenants[0] != "acme" {
				t.Errorf("Name %q, Tenants %q", s.Name, s.Tenants)
			}
		}},
		{"every tenant", svc(`name = "web"
tenants = ["*"]
backends = ["192.0.2.10"]` + tcp80), func(t *testing.T, s catalog.Service) {
			if !s.Allows("anyone") {
				t.Error("\"*\" does not allow every tenant")
			}
		}},
		{"backends normalised", svc(`name = "web"
tenants = ["acme"]
backends = ["2001:DB8::1", "App.Corp.Example", "192.0.2.10", "app2.corp.example."]` + tcp80), func(t *testing.T, s catalog.Service) {
			want := []string{"2001:db8::1", "app.corp.example", "192.0.2.10", "app2.corp.example."}
			if !reflect.DeepEqual(s.Backends, want) {
				t.Errorf("Backends = %q, want %q", s.Backends, want)
			}
		}},
		{"IPv4-mapped backend is its IPv4 address", svc(`name = "web"
tenants = ["acme"]
backends = ["::ffff:192.0.2.1", "::ffff:c000:202", "2001:db8::1"]` + tcp80), func(t *testing.T, s catalog.Service) {
			want := []string{"192.0.2.1", "192.0.2.2", "2001:db8::1"}
			if !reflect.DeepEqual(s.Backends, want) {
				t.Errorf("Backends = %q, want %q", s.Backends, want)
			}
		}},
		{"SRV discovery without backends", svc(`name = "web"
tenants = ["acme"]
backends_srv = "_HTTP._tcp.app.corp.example"` + tcp80), func(t *testing.T, s catalog.Service) {
			if s.BackendsSRV != "_http._tcp.app.corp.example" || len(s.Backends) != 0 {
				t.Errorf("BackendsSRV %q, Backends %q", s.BackendsSRV, s.Backends)
			}
		}},
		{"pins, balance, icmp, max_flows", gatewayHead + "[tun]\npool6 = \"fd00::/120\"\n" + `[[service]]
name = "web"
tenants = ["acme"]
backends = ["192.0.2.10"]
vip = "10.100.0.254"
vip6 = "fd00::ff"
balance = "source_hash"
icmp = false
max_flows = 10` + tcp80, func(t *testing.T, s catalog.Service) {
			if s.VIP != netip.MustParseAddr("10.100.0.254") || s.VIP6 != netip.MustParseAddr("fd00::ff") ||
				s.Balance != catalog.SourceHash || s.ICMP || s.MaxFlows != 10 {
				t.Errorf("service = %+v", s)
			}
		}},
		{"ports: target defaults to port, names lower-cased", acmeService("web", port("tcp", 80, 8080)+"name = \"HTTP\"\n"+port("udp", 80, 0)+"name = \"http\"\n"+port("tcp", 443, 0)), func(t *testing.T, s catalog.Service) {
			want := []catalog.Port{
				{Name: "http", Protocol: catalog.TCP, Port: 80, Target: 8080},
				{Name: "http", Protocol: catalog.UDP, Port: 80, Target: 80},
				{Protocol: catalog.TCP, Port: 443, Target: 443},
			}
			if !reflect.DeepEqual(s.Ports, want) {
				t.Errorf("Ports = %+v, want %+v", s.Ports, want)
			}
		}},
		{"no health section, only UDP: none", acmeService("dns", port("udp", 53, 0)), func(t *testing.T, s catalog.Service) {
			if s.Health.Type != catalog.HealthNone || s.Health.Port != 0 {
				t.Errorf("Health = %+v, want none", s.Health)
			}
		}},
		{"no health section: tcp on the first TCP target", acmeService("mixed", port("udp", 53, 5353)+port("tcp", 53, 5354)), func(t *testing.T, s catalog.Service) {
			if s.Health.Type != catalog.HealthTCP || s.Health.Port != 5354 {
				t.Errorf("Health = %+v, want tcp on 5354", s.Health)
			}
		}},
		{"http health defaults", acmeService("web", port("tcp", 80, 8080)+"[service.health]\ntype = \"http\"\n"), func(t *testing.T, s catalog.Service) {
			want := catalog.Health{Type: catalog.HealthHTTP, Port: 8080, Path: "/", Interval: 5 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
			if s.Health != want {
				t.Errorf("Health = %+v, want %+v", s.Health, want)
			}
		}},
		{"http health explicit", acmeService("web", tcp80+`
[service.health]
type = "http"
port = 8081
path = "/healthz"
expect_status = 204
interval = "10s"
timeout = "10s"
rise = 1
fall = 1
`), func(t *testing.T, s catalog.Service) {
			want := catalog.Health{Type: catalog.HealthHTTP, Port: 8081, PortSet: true, Path: "/healthz", ExpectStatus: 204, Interval: 10 * time.Second, Timeout: 10 * time.Second, Rise: 1, Fall: 1}
			if s.Health != want {
				t.Errorf("Health = %+v, want %+v", s.Health, want)
			}
		}},
		{"health.port written as its default is set", acmeService("web", port("tcp", 80, 8080)+"[service.health]\nport = 8080\n"), func(t *testing.T, s catalog.Service) {
			if h := s.Health; h.Type != catalog.HealthTCP || h.Port != 8080 || !h.PortSet {
				t.Errorf("Health = %+v, want tcp on 8080, set", h)
			}
		}},
		{"health.port not written is its default, not set", acmeService("web", port("tcp", 80, 8080)+"[service.health]\ntype = \"tcp\"\n"), func(t *testing.T, s catalog.Service) {
			if h := s.Health; h.Port != 8080 || h.PortSet {
				t.Errorf("Health = %+v, want 8080, not set", h)
			}
		}},
		{"udp health on the first UDP target", acmeService("dns", tcp80+port("udp", 53, 5353)+`
[service.health]
type = "udp"
send = "ping"
expect = "pong"
`), func(t *testing.T, s catalog.Service) {
			if h := s.Health; h.Type != catalog.HealthUDP || h.Port != 5353 || h.Send != "ping" || h.Expect != "pong" {
				t.Errorf("Health = %+v", h)
			}
		}},
		{"health none", acmeService("web", tcp80+"[service.health]\ntype = \"none\"\n"), func(t *testing.T, s catalog.Service) {
			if s.Health.Type != catalog.HealthNone || s.Health.Port != 0 {
				t.Errorf("Health = %+v", s.Health)
			}
		}},
		{"explicit udp_idle applies to DNS flows", acmeService("dns", port("udp", 53, 0)+`
[service.timeouts]
tcp_idle = "10m"
udp_idle = "45s"
`), func(t *testing.T, s catalog.Service) {
			want := catalog.Timeouts{TCPIdle: 10 * time.Minute, UDPIdle: 45 * time.Second, DNSIdle: 45 * time.Second}
			if s.Timeouts != want {
				t.Errorf("Timeouts = %+v, want %+v", s.Timeouts, want)
			}
		}},
		{"unknown tenants allowed with a tunnel listener", "[gateway]\nname = \"gw\"\n[tunnel]\nlisten = \":4434\"\ninsecure_allow_unauthenticated = true\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n" +
			"[[service]]\nname = \"web\"\ntenants = [\"from-cert\"]\nbackends = [\"192.0.2.10\"]" + tcp80, func(t *testing.T, s catalog.Service) {
			if s.Tenants[0] != "from-cert" {
				t.Errorf("Tenants = %q", s.Tenants)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := ParseGateway("gw.toml", []byte(tc.toml))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, g.Services[0])
		})
	}
}
