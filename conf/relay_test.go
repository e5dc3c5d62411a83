package conf

import (
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// insecureRelay is the smallest valid relay file (no files needed).
const insecureRelay = `
[relay]
name = "relay1"
insecure_allow_unauthenticated = true
cert = "/dev/null"
key = "/dev/null"
`

func TestParseRelayDefaults(t *testing.T) {
	dir := writeFiles(t, map[string]string{"r.crt": "c", "r.key": "k", "ca.crt": "a"})
	r, err := ParseRelay(filepath.Join(dir, "relay.toml"), []byte(`
[relay]
name = "relay1"
state_dir = "state"
cert = "r.crt"
key = "r.key"
ca = "ca.crt"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Relay{
		Name: "relay1", Listen: "0.0.0.0:4433", StateDir: filepath.Join(dir, "state"),
		Pool: netip.MustParsePrefix("10.100.0.0/24"), Zone: "ztna.internal.", TTL: 30 * time.Second,
		Cert: filepath.Join(dir, "r.crt"), Key: filepath.Join(dir, "r.key"), CA: filepath.Join(dir, "ca.crt"),
		VIPHoldDown: 30 * time.Second, API: API{Listen: netip.MustParseAddrPort("127.0.0.1:7781")},
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got  %+v\nwant %+v", r, want)
	}
}

func TestParseRelayValid(t *testing.T) {
	r, err := ParseRelay("relay.toml", []byte(insecureRelay+`
listen = "[::]:4443"
state_dir = "/srv/relay"
pool = "10.8.0.0/16"
pool6 = "fd00:8::/64"
zone = "Corp.Internal."
ttl = "10s"
vip_hold_down = "1m"
forward_ports = "4450-4481"
[api]
listen = "off"
[[pin]]
service = "Web"
vip = "10.8.0.10"
[[pin]]
service = "web"
vip = "fd00:8::10"
[[pin]]
service = "db"
vip = "10.8.255.254"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Relay{
		Name: "relay1", Listen: "[::]:4443", StateDir: "/srv/relay",
		Pool: netip.MustParsePrefix("10.8.0.0/16"), Pool6: netip.MustParsePrefix("fd00:8::/64"),
		Zone: "corp.internal.", TTL: 10 * time.Second, Cert: "/dev/null", Key: "/dev/null", Insecure: true,
		VIPHoldDown: time.Minute, ForwardPorts: PortRange{First: 4450, Last: 4481},
		Pins: []Pin{
			{Service: "web", VIP: netip.MustParseAddr("10.8.0.10")},
			{Service: "web", VIP: netip.MustParseAddr("fd00:8::10")},
			{Service: "db", VIP: netip.MustParseAddr("10.8.255.254")},
		},
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got  %+v\nwant %+v", r, want)
	}
}

func TestParseRelayInvalid(t *testing.T) {
	tests := []struct {
		name, toml string
		want       []string
	}{
		{"TLS files required", "[relay]\nname = \"r\"\n", []string{
			"relay.toml:1: relay.cert: required", "relay.toml:1: relay.key: required", "relay.toml:1: relay.ca: required"}},
		{"insecure still needs cert and key", "[relay]\nname = \"r\"\ninsecure_allow_unauthenticated = true\n", []string{
			"relay.toml:1: relay.cert: required", "relay.toml:1: relay.key: required"}},
		{"unknown keys", insecureRelay + "colour = 1\n[[pin]]\nservice = \"web\"\nvip = \"10.100.0.9\"\nport = 80\n", []string{
			"relay.toml:11: pin[0].port: unknown key", "relay.toml:7: relay.colour: unknown key"}},
		{"bad values", insecureRelay + "listen = \"4433\"\npool = \"10.100.0.0/31\"\npool6 = \"fd00::/40\"\nzone = \"a b\"\nttl = \"0s\"\n", []string{
			`relay.toml:8: relay.pool: 10.100.0.0/31 is too small`, "relay.toml:9: relay.pool6: fd00::/40: an IPv6 pool is a /64 to a /126",
			`relay.toml:10: relay.zone: "a b" is not a domain name`, "relay.toml:11: relay.ttl: 0s is out of range 1s..24h",
			`relay.toml:7: relay.listen: "4433" is not host:port`}},
		{"forward ports", insecureRelay + "forward_ports = \"4433-4440\"\n", []string{
			`relay.toml:7: relay.forward_ports: "4433-4440" holds the listen port 4433`}},
		{"forward ports reversed", insecureRelay + "forward_ports = \"5000-4999\"\n", []string{
			`relay.toml:7: relay.forward_ports: "5000-4999": the first port is above the last`}},
		{"forward ports not numbers", insecureRelay + "forward_ports = \"high\"\n", []string{
			`relay.toml:7: relay.forward_ports: "high" is not a port 1..65535 or a range of them ("4440-4471")`}},
		{"forward port 0", insecureRelay + "forward_ports = \"0-10\"\n", []string{
			`relay.toml:7: relay.forward_ports: "0-10" is not a port 1..65535 or a range of them ("4440-4471")`}},
		{"hold-down shorter than the TTL", insecureRelay + "ttl = \"1m\"\nvip_hold_down = \"30s\"\n", []string{
			"relay.toml:8: relay.vip_hold_down: 30s is shorter than the DNS TTL 1m0s"}},
		{"pins", insecureRelay + `
[[pin]]
service = "web"
vip = "10.100.0.1"
[[pin]]
service = "web"
vip = "10.100.0.10"
[[pin]]
service = "db"
vip = "10.100.0.10"
[[pin]]
service = "WEB"
vip = "10.100.0.11"
[[pin]]
service = "v6"
vip = "fd00::10"
[[pin]]
vip = "10.200.0.1"
[[pin]]
service = "x"
[[pin]]
service = "mapped"
vip = "::ffff:10.100.0.10"
`, []string{
			"relay.toml:10: pin[0].vip: 10.100.0.1 is the gateway address",
			`relay.toml:16: pin[2].vip: 10.100.0.10 is pinned by both service "web" (pin[1]) and service "db" (pin[2])`,
			`relay.toml:19: pin[3].vip: service "web" already has a pin of this family (pin[1])`,
			"relay.toml:22: pin[4].vip: fd00::10 cannot be pinned: no IPv6 pool (pool6) is configured",
			"relay.toml:23: pin[5].service: required",
			"relay.toml:24: pin[5].vip: 10.200.0.1 is outside the pool 10.100.0.0/24",
			"relay.toml:25: pin[6].vip: required",
			`relay.toml:29: pin[7].vip: 10.100.0.10 is pinned by both service "web" (pin[1]) and service "mapped" (pin[7])`,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRelay("relay.toml", []byte(tc.toml))
			wantErrors(t, err, tc.want)
		})
	}
}
