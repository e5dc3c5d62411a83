package conf

import (
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestParseAgentDefaults(t *testing.T) {
	dir := writeFiles(t, map[string]string{"pki/a.crt": "c", "pki/a.key": "k", "pki/ca.crt": "a"})
	a, err := ParseAgent(filepath.Join(dir, "agent.toml"), []byte(`
[agent]
name = "laptop"
[tunnel]
server = "relay.example.net:4433"
cert = "pki/a.crt"
key = "pki/a.key"
ca = "pki/ca.crt"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Agent{
		Name: "laptop",
		Tunnel: Tunnel{Server: "relay.example.net:4433", ServerName: "relay.example.net",
			Cert: filepath.Join(dir, "pki/a.crt"), Key: filepath.Join(dir, "pki/a.key"), CA: filepath.Join(dir, "pki/ca.crt")},
		TUN: TUN{Name: "ztagent0", MTU: 1280, Pool: netip.MustParsePrefix("10.100.0.0/24"),
			Address: netip.MustParseAddr("100.64.0.1"), Enabled: true},
		DNS: DNS{Zone: "ztna.internal.", TTL: 30 * time.Second, SetResolver: true},
	}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("got  %+v\nwant %+v", a, want)
	}
	if a.API.Listen.IsValid() {
		t.Error("agent API enabled by default")
	}
}

func TestParseAgentValid(t *testing.T) {
	a, err := ParseAgent("agent.toml", []byte(`
[agent]
name = "laptop"
[tunnel]
server = "192.0.2.1:4433"
insecure_allow_unauthenticated = true
[tun]
name = "zt9"
address = "100.64.7.7"
mtu = 1400
[dns]
listen = ["127.0.0.1:53"]
set_resolver = false
[api]
listen = "127.0.0.1:7782"
`))
	if err != nil {
		t.Fatal(err)
	}
	if a.Tunnel.ServerName != "192.0.2.1" || !a.Tunnel.Insecure {
		t.Errorf("Tunnel = %+v", a.Tunnel)
	}
	if a.TUN.Name != "zt9" || a.TUN.Address != netip.MustParseAddr("100.64.7.7") || a.TUN.MTU != 1400 {
		t.Errorf("TUN = %+v", a.TUN)
	}
	if len(a.DNS.Listen) != 1 || a.DNS.SetResolver || a.API.Listen != netip.MustParseAddrPort("127.0.0.1:7782") {
		t.Errorf("DNS = %+v, API = %+v", a.DNS, a.API)
	}
}

func TestParseAgentInvalid(t *testing.T) {
	tests := []struct {
		name, toml string
		want       []string
	}{
		{"empty file", "", []string{
			"agent.toml: tunnel.server: required", "agent.toml: tunnel.cert: required", "agent.toml: tunnel.key: required", "agent.toml: tunnel.ca: required"}},
		{"gateway keys are unknown", "[agent]\nname = \"a\"\n[dns]\nzone = \"x\"\n[tun]\npool = \"10.0.0.0/24\"\n[tunnel]\nserver = \"r:1\"\ninsecure_allow_unauthenticated = true\nrelay = \"r:1\"\n", []string{
			"agent.toml:4: dns.zone: unknown key", "agent.toml:6: tun.pool: unknown key", "agent.toml:10: tunnel.relay: unknown key"}},
		{"bad values", "[agent]\nname = \"a b\"\n[tunnel]\nserver = \"relay\"\nserver_name = \"_x\"\ninsecure_allow_unauthenticated = true\n[tun]\nname = \"\"\nmtu = 100\naddress = \"10.100.0.5\"\n[dns]\nlisten = [\"x\"]\n[api]\nlisten = \"localhost:1\"\n", []string{
			`agent.toml:2: agent.name: "a b" is not a domain name`, `agent.toml:4: tunnel.server: "relay" is not host:port`,
			`agent.toml:5: tunnel.server_name: "_x" is not a domain name`, "agent.toml:9: tun.mtu: 100 is out of range 576..65535",
			"agent.toml:10: tun.address: 10.100.0.5 is inside the VIP pool 10.100.0.0/24", `agent.toml:14: api.listen: "localhost:1" is not ip:port`,
			`agent.toml:12: dns.listen[0]: "x" is not ip:port`}},
		{"IPv6 address", "[agent]\nname = \"a\"\n[tunnel]\nserver = \"r:1\"\ninsecure_allow_unauthenticated = true\n[tun]\naddress = \"fd00::1\"\n", []string{
			"agent.toml:7: tun.address: fd00::1 is not an IPv4 address"}},
		{"listener twice", "[agent]\nname = \"a\"\n[tunnel]\nserver = \"r:1\"\ninsecure_allow_unauthenticated = true\n[dns]\nlisten = [\"127.0.0.1:53\", \"127.0.0.1:0053\"]\n", []string{
			`agent.toml:7: dns.listen[1]: "127.0.0.1:0053" is listed twice (as 127.0.0.1:53)`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAgent("agent.toml", []byte(tc.toml))
			wantErrors(t, err, tc.want)
		})
	}
}
