package conf

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

func TestParseGatewayDefaults(t *testing.T) {
	g, err := ParseGateway("gw.toml", []byte(gatewayHead+webService))
	if err != nil {
		t.Fatal(err)
	}
	want := &Gateway{
		Name:         "gw1",
		StateDir:     "/var/lib/ztgate",
		VIPHoldDown:  30 * time.Second,
		DrainTimeout: 30 * time.Second,
		TUN:          TUN{Name: "ztgate0", MTU: 1420, Pool: netip.MustParsePrefix("10.100.0.0/24"), Enabled: true},
		DNS:          DNS{Zone: "ztna.internal.", TTL: 30 * time.Second, ForwardTimeout: 2 * time.Second},
		API:          API{Listen: netip.MustParseAddrPort("127.0.0.1:7780")},
		Limits:       Limits{MaxFlows: 65536, MaxInflightHandshake: 1024, NewFlowsPerSecond: 1000, NewFlowsBurst: 2000},
		Discovery:    Discovery{MinTTL: 5 * time.Second, MaxTTL: 5 * time.Minute},
		Tenants: []catalog.Tenant{
			{Name: "acme", Sources: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
			{Name: "globex", Sources: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}},
		},
		Services: []catalog.Service{{
			Name:     "web",
			Tenants:  []string{"acme"},
			Backends: []string{"192.0.2.10"},
			Balance:  catalog.RoundRobin,
			ICMP:     true,
			Ports:    []catalog.Port{{Protocol: catalog.TCP, Port: 80, Target: 80}},
			Health: catalog.Health{Type: catalog.HealthTCP, Port: 80, Interval: 5 * time.Second,
				Timeout: time.Second, Rise: 2, Fall: 3},
			Timeouts: catalog.Timeouts{TCPIdle: time.Hour, UDPIdle: 2 * time.Minute, DNSIdle: 30 * time.Second},
			Source:   "file",
		}},
	}
	if !reflect.DeepEqual(g, want) {
		t.Errorf("got  %+v\nwant %+v", g, want)
	}
}

func TestParseGatewayValid(t *testing.T) {
	hostname, _ := os.Hostname()
	tests := []struct {
		name  string
		toml  string
		check func(t *testing.T, g *Gateway)
	}{
		{"name defaults to the host name", `[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]`, func(t *testing.T, g *Gateway) {
			if g.Name != hostname {
				t.Errorf("Name = %q, want %q", g.Name, hostname)
			}
		}},
		{"hold-down defaults to the DNS TTL", gatewayHead + "[dns]\nttl = \"1m\"\n", func(t *testing.T, g *Gateway) {
			if g.VIPHoldDown != time.Minute || g.DNS.TTL != time.Minute {
				t.Errorf("VIPHoldDown = %s, TTL = %s, want 1m", g.VIPHoldDown, g.DNS.TTL)
			}
		}},
		{"api off", gatewayHead + "[api]\nlisten = \"off\"\n", func(t *testing.T, g *Gateway) {
			if g.API.Listen.IsValid() {
				t.Errorf("API.Listen = %s, want disabled", g.API.Listen)
			}
		}},
		{"api empty is the default", gatewayHead + "[api]\nlisten = \"\"\n", func(t *testing.T, g *Gateway) {
			if g.API.Listen != netip.MustParseAddrPort("127.0.0.1:7780") {
				t.Errorf("API.Listen = %s", g.API.Listen)
			}
		}},
		{"api on IPv6", gatewayHead + "[api]\nlisten = \"[::1]:9000\"\n", func(t *testing.T, g *Gateway) {
			if g.API.Listen != netip.MustParseAddrPort("[::1]:9000") {
				t.Errorf("API.Listen = %s", g.API.Listen)
			}
		}},
		{"dns normalised", gatewayHead + `[dns]
zone = "Corp.Example"
listen = ["127.0.0.1:5353", "[::1]:0"]
upstreams = ["192.0.2.53", "192.0.2.54:5353", "2001:db8::53"]
forward_timeout = "500ms"
`, func(t *testing.T, g *Gateway) {
			want := DNS{
				Zone:           "corp.example.",
				Listen:         []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:5353"), netip.MustParseAddrPort("[::1]:0")},
				TTL:            30 * time.Second,
				Upstreams:      []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53"), netip.MustParseAddrPort("192.0.2.54:5353"), netip.MustParseAddrPort("[2001:db8::53]:53")},
				ForwardTimeout: 500 * time.Millisecond,
			}
			if !reflect.DeepEqual(g.DNS, want) {
				t.Errorf("DNS = %+v, want %+v", g.DNS, want)
			}
		}},
		{"no [tun] and no relay: TUN enabled", gatewayHead, func(t *testing.T, g *Gateway) {
			if !g.TUN.Enabled {
				t.Error("TUN disabled")
			}
		}},
		{"tun with pool6", gatewayHead + "[tun]\nname = \"zt1\"\nmtu = 9000\npool = \"10.1.0.0/16\"\npool6 = \"fd00:1::/64\"\n", func(t *testing.T, g *Gateway) {
			want := TUN{Name: "zt1", MTU: 9000, Pool: netip.MustParsePrefix("10.1.0.0/16"), Pool6: netip.MustParsePrefix("fd00:1::/64"), Enabled: true}
			if g.TUN != want {
				t.Errorf("TUN = %+v, want %+v", g.TUN, want)
			}
		}},
		{"limits: rate 0 means unlimited, burst defaults to 2x", gatewayHead + "[limits]\nnew_flows_per_second = 0\nmax_flows = 10\n", func(t *testing.T, g *Gateway) {
			want := Limits{MaxFlows: 10, MaxInflightHandshake: 1024}
			if g.Limits != want {
				t.Errorf("Limits = %+v, want %+v", g.Limits, want)
			}
		}},
		{"limits burst", gatewayHead + "[limits]\nnew_flows_per_second = 10\nnew_flows_burst = 5\nmax_inflight_handshakes = 7\n", func(t *testing.T, g *Gateway) {
			want := Limits{MaxFlows: 65536, MaxInflightHandshake: 7, NewFlowsPerSecond: 10, NewFlowsBurst: 5}
			if g.Limits != want {
				t.Errorf("Limits = %+v, want %+v", g.Limits, want)
			}
		}},
		{"discovery", gatewayHead + "[discovery]\nnameservers = [\"192.0.2.1\", \"192.0.2.2:5353\"]\nmin_ttl = \"1s\"\nmax_ttl = \"1s\"\n", func(t *testing.T, g *Gateway) {
			want := Discovery{Nameservers: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:53"), netip.MustParseAddrPort("192.0.2.2:5353")}, MinTTL: time.Second, MaxTTL: time.Second}
			if !reflect.DeepEqual(g.Discovery, want) {
				t.Errorf("Discovery = %+v, want %+v", g.Discovery, want)
			}
		}},
		{"tenant max_flows", gatewayHead + "[[tenant]]\nname = \"Initech\"\nsources = [\"2001:db8::/32\", \"192.0.2.128/25\"]\nmax_flows = 5\n", func(t *testing.T, g *Gateway) {
			want := catalog.Tenant{Name: "initech", Sources: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("192.0.2.128/25")}, FlowLimits: catalog.FlowLimits{MaxFlows: 5}}
			if !reflect.DeepEqual(g.Tenants[2], want) {
				t.Errorf("tenant = %+v, want %+v", g.Tenants[2], want)
			}
		}},
		{"tenant limits", gatewayHead + "[[tenant]]\nname = \"initech\"\nsources = [\"192.0.2.128/25\"]\nmax_inflight_handshakes = 1024\nnew_flows_per_second = 50\nnew_flows_burst = 60\n", func(t *testing.T, g *Gateway) {
			want := catalog.FlowLimits{MaxInflightHandshakes: 1024, NewFlowsPerSecond: 50, NewFlowsBurst: 60}
			if g.Tenants[2].FlowLimits != want {
				t.Errorf("tenant limits = %+v, want %+v", g.Tenants[2].FlowLimits, want)
			}
		}},
		{"service limits, no rate cap when [limits] has none", "[limits]\nnew_flows_per_second = 0\n" + webWith("max_flows = 9\nmax_inflight_handshakes = 8\nnew_flows_per_second = 5000\n", ""), func(t *testing.T, g *Gateway) {
			want := catalog.FlowLimits{MaxFlows: 9, MaxInflightHandshakes: 8, NewFlowsPerSecond: 5000}
			if g.Services[0].FlowLimits != want {
				t.Errorf("service limits = %+v, want %+v", g.Services[0].FlowLimits, want)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := ParseGateway("gw.toml", []byte(tc.toml))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, g)
		})
	}
}

func TestParseGatewayPaths(t *testing.T) {
	dir := writeFiles(t, map[string]string{"pki/gw.crt": "c", "pki/gw.key": "k", "abs.ca": "a", "token": "t"})
	abs := filepath.Join(dir, "abs.ca")
	name := filepath.Join(dir, "gw.toml")
	g, err := ParseGateway(name, []byte(gatewayHead+`
[tunnel]
listen = ":4434"
relay = "relay.example.net:4433"
cert = "pki/gw.crt"
key = "`+filepath.Join(dir, "pki", "..", "pki", "gw.key")+`"
ca = "`+abs+`"
[api]
token_file = "token"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Tunnel{
		Listen: ":4434", Relay: "relay.example.net:4433", ServerName: "relay.example.net",
		Cert: filepath.Join(dir, "pki/gw.crt"), Key: filepath.Join(dir, "pki/gw.key"), CA: abs,
	}
	if g.Tunnel != want {
		t.Errorf("Tunnel = %+v\nwant %+v", g.Tunnel, want)
	}
	if g.API.TokenFile != filepath.Join(dir, "token") {
		t.Errorf("TokenFile = %q", g.API.TokenFile)
	}
	if g.Path != "" {
		t.Errorf("Path = %q after Parse, want empty", g.Path)
	}
	if g.TUN.Enabled {
		t.Error("TUN enabled without a [tun] section on a relay-attached gateway")
	}
}

func TestParseGatewayStateDir(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ name, value, want string }{
		{"default", "", "/var/lib/ztgate"},
		{"absolute", "/srv/zt", "/srv/zt"},
		{"relative", "state", filepath.Join(dir, "state")},
		{"dot-dot", "../x", filepath.Join(filepath.Dir(dir), "x")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := ParseGateway(filepath.Join(dir, "gw.toml"), []byte("[gateway]\nname = \"a\"\nstate_dir = \""+tc.value+"\"\n"))
			if err != nil {
				t.Fatal(err)
			}
			if g.StateDir != tc.want {
				t.Errorf("StateDir = %q, want %q", g.StateDir, tc.want)
			}
		})
	}
}

func TestLoadGateway(t *testing.T) {
	dir := writeFiles(t, map[string]string{"gw.toml": gatewayHead + webService, "bad.toml": "[gateway]\nnme = 1\n"})
	g, err := LoadGateway(filepath.Join(dir, "gw.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if g.Path != filepath.Join(dir, "gw.toml") {
		t.Errorf("Path = %q", g.Path)
	}
	_, err = LoadGateway(filepath.Join(dir, "bad.toml"))
	wantErrors(t, err, []string{"bad.toml:2: gateway.nme: unknown key"})
	_, err = LoadGateway(filepath.Join(dir, "missing.toml"))
	wantErrors(t, err, []string{"missing.toml: no such file or directory"})
}
