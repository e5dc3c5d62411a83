package conf

import (
	"fmt"
	"strings"
	"testing"
)

// webWith returns a gateway file whose web service has extra keys in its
// table and extra tables after its port.
func webWith(keys, tables string) string {
	return gatewayHead + `
[[service]]
name = "web"
tenants = ["acme"]
backends = ["192.0.2.10"]
` + keys + tcp80 + tables
}

// manyServices returns n minimal services named s0, s1, ...
func manyServices(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "[[service]]\nname = \"s%d\"\ntenants = [\"*\"]\nbackends = [\"192.0.2.10\"]\n%s", i, tcp80)
	}
	return b.String()
}

func TestParseGatewayInvalid(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want []string
	}{
		// Strictness.
		{"unknown top-level key", "colour = 1\n" + gatewayHead, []string{"gw.toml:1: colour: unknown key"}},
		{"unknown key with indexes", webService + webService + webWith("", "[service.health]\nintervl = \"5s\"\n"),
			[]string{"gw.toml:38: service[2].health.intervl: unknown key", // decoding errors come first
				"gw.toml:11: service[1].name: \"web\" is also the name of service[0]", "gw.toml:30: service[2].name: \"web\" is also the name of service[0]"}},
		{"quoted unknown key", gatewayHead + "[dns]\n\"odd key\" = 1\n", []string{`gw.toml:13: dns."odd key": unknown key`}},
		{"string for an integer", gatewayHead + "[tun]\nmtu = \"1420\"\n", []string{`gw.toml:13: tun.mtu: expected an integer, got string "1420"`}},
		{"float for an integer", gatewayHead + "[tun]\nmtu = 1420.5\n", []string{`gw.toml:13: tun.mtu: expected an integer, got float 1420.5`}},
		{"integer for a string", "[gateway]\nname = 1\n", []string{"gw.toml:2: gateway.name: expected a string, got integer 1"}},
		{"table for an array of tables", gatewayHead + "[service]\nname = \"web\"\n", []string{"gw.toml:12: service: expected an array of tables, got a table (write [[service]], not [service])"}},
		{"array element of the wrong type", gatewayHead + "[dns]\nlisten = [\"127.0.0.1:53\", 53]\n", []string{"gw.toml:13: dns.listen[1]: expected a string, got integer 53"}},
		{"boolean for a string", webWith("balance = true\n", ""), []string{"gw.toml:17: service[0].balance: expected a string, got boolean true"}},
		{"datetime", gatewayHead + "[dns]\nttl = 1979-05-27\n", []string{"gw.toml:13: dns.ttl: expected a string, got a datetime"}},

		// [gateway]
		{"hold-down shorter than the TTL", "[gateway]\nname = \"gw\"\nvip_hold_down = \"10s\"\n[dns]\nttl = \"1m\"\n", []string{"gw.toml:3: gateway.vip_hold_down: 10s is shorter than the DNS TTL 1m0s"}},
		{"bad drain_timeout", "[gateway]\nname = \"gw\"\ndrain_timeout = \"soon\"\nvip_hold_down = \"1s\"\n",
			[]string{"gw.toml:4: gateway.vip_hold_down: 1s is shorter than the DNS TTL 30s", `gw.toml:3: gateway.drain_timeout: invalid duration "soon"`}},
		{"bad name", "[gateway]\nname = \"gw 1\"\n", []string{`gw.toml:2: gateway.name: "gw 1" is not a domain name`}},
		{"negative duration", "[gateway]\nname = \"gw\"\ndrain_timeout = \"-1s\"\n", []string{"gw.toml:3: gateway.drain_timeout: -1s must not be negative"}},

		// [tun]
		{"mtu too small", "[tun]\nmtu = 500\n", []string{"gw.toml:2: tun.mtu: 500 is out of range 576..65535"}},
		{"mtu too large", "[tun]\nmtu = 65536\n", []string{"gw.toml:2: tun.mtu: 65536 is out of range 576..65535"}},
		{"pool too small", "[tun]\npool = \"10.100.0.0/31\"\n", []string{"gw.toml:2: tun.pool: 10.100.0.0/31 is too small: a pool is at least a /29, which holds 5 VIPs"}},
		{"pool /30 too small", "[tun]\npool = \"10.100.0.0/30\"\n", []string{"gw.toml:2: tun.pool: 10.100.0.0/30 is too small: a pool is at least a /29, which holds 5 VIPs"}},
		{"pool too large", "[tun]\npool = \"10.0.0.0/7\"\n", []string{"gw.toml:2: tun.pool: 10.0.0.0/7 is too large: a pool is at most a /8 (agents refuse a larger one)"}},
		{"pool with host bits", "[tun]\npool = \"10.100.0.1/24\"\n", []string{"gw.toml:2: tun.pool: 10.100.0.1/24 has host bits set (did you mean 10.100.0.0/24?)"}},
		{"pool IPv6", "[tun]\npool = \"fd00::/64\"\n", []string{"gw.toml:2: tun.pool: fd00::/64 is not an IPv4 prefix"}},
		{"pool garbage", "[tun]\npool = \"ten\"\n", []string{`gw.toml:2: tun.pool: invalid prefix "ten"`}},
		{"pool6 too large", "[tun]\npool6 = \"fd00::/48\"\n", []string{"gw.toml:2: tun.pool6: fd00::/48: an IPv6 pool is a /64 to a /126"}},
		{"pool6 too small", "[tun]\npool6 = \"fd00::/127\"\n", []string{"gw.toml:2: tun.pool6: fd00::/127: an IPv6 pool is a /64 to a /126"}},
		{"pool6 IPv4", "[tun]\npool6 = \"10.0.0.0/24\"\n", []string{"gw.toml:2: tun.pool6: 10.0.0.0/24 is not an IPv6 prefix"}},
		{"interface name with a slash", "[tun]\nname = \"zt/0\"\n", []string{`gw.toml:2: tun.name: "zt/0" contains '/', ':' or white space`}},
		{"interface name with a space", "[tun]\nname = \"zt 0\"\n", []string{`gw.toml:2: tun.name: "zt 0" contains`}},
		{"interface name too long", "[tun]\nname = \"ztgate-interface0\"\n", []string{`gw.toml:2: tun.name: "ztgate-interface0" is not 1 to 15 characters long`}},

		// [dns]
		{"bad zone", "[dns]\nzone = \"ztna_internal\"\n", []string{`gw.toml:2: dns.zone: "ztna_internal" is not a domain name`}},
		{"root zone", "[dns]\nzone = \".\"\n", []string{`gw.toml:2: dns.zone: "." is not a domain name`}},
		{"listener without port", "[dns]\nlisten = [\"127.0.0.1\"]\n", []string{`gw.toml:2: dns.listen[0]: "127.0.0.1" is not ip:port`}},
		{"listener by name", "[dns]\nlisten = [\"localhost:53\"]\n", []string{`gw.toml:2: dns.listen[0]: "localhost:53" is not ip:port`}},
		{"listener twice", "[dns]\nlisten = [\"127.0.0.1:5353\", \"[::1]:5353\", \"127.0.0.1:5353\"]\n", []string{
			"gw.toml:2: dns.listen[2]: \"127.0.0.1:5353\" is listed twice"}},
		{"listener twice once parsed", "[dns]\nlisten = [\"127.0.0.1:53\", \"127.0.0.1:053\", \"[::ffff:127.0.0.1]:53\"]\n", []string{
			`gw.toml:2: dns.listen[1]: "127.0.0.1:053" is listed twice (as 127.0.0.1:53)`,
			`gw.toml:2: dns.listen[2]: "[::ffff:127.0.0.1]:53" is listed twice (as 127.0.0.1:53)`}},
		{"upstream twice", "[dns]\nupstreams = [\"192.0.2.1\", \"192.0.2.1:53\"]\n", []string{
			`gw.toml:2: dns.upstreams[1]: "192.0.2.1:53" is listed twice`}},
		{"ttl too short", "[dns]\nttl = \"500ms\"\n", []string{"gw.toml:2: dns.ttl: 500ms is out of range 1s..24h"}},
		{"ttl too long", "[dns]\nttl = \"25h\"\n", []string{"gw.toml:2: dns.ttl: 25h0m0s is out of range 1s..24h"}},
		{"upstream by name", "[dns]\nupstreams = [\"192.0.2.1\", \"dns.google\"]\n", []string{`gw.toml:2: dns.upstreams[1]: "dns.google" is not an IP address or ip:port`}},
		{"upstream port 0", "[dns]\nupstreams = [\"192.0.2.1:0\"]\n", []string{`gw.toml:2: dns.upstreams[0]: "192.0.2.1:0" is not an IP address or ip:port`}},
		{"forward_timeout zero", "[dns]\nforward_timeout = \"0s\"\n", []string{"gw.toml:2: dns.forward_timeout: must be greater than 0"}},

		// [api]
		{"api port only", "[api]\nlisten = \"7780\"\n", []string{`gw.toml:2: api.listen: "7780" is not ip:port`}},
		{"missing token file", "[api]\ntoken_file = \"/nonexistent/token\"\n", []string{`gw.toml:2: api.token_file: cannot read file "/nonexistent/token": no such file or directory`}},

		// [tunnel]
		{"listener without TLS files", "[tunnel]\nlisten = \"0.0.0.0:4434\"\n", []string{
			"gw.toml:1: tunnel.cert: required", "gw.toml:1: tunnel.key: required", "gw.toml:1: tunnel.ca: required (or set insecure_allow_unauthenticated = true"}},
		{"insecure relay needs no ca", "[tunnel]\nrelay = \"relay.example.net:4433\"\ninsecure_allow_unauthenticated = true\n", []string{
			"gw.toml:1: tunnel.cert: required", "gw.toml:1: tunnel.key: required"}},
		{"relay without port", "[tunnel]\nrelay = \"relay.example.net\"\ninsecure_allow_unauthenticated = true\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n", []string{
			`gw.toml:2: tunnel.relay: "relay.example.net" is not host:port`}},
		{"relay with port 0", "[tunnel]\nrelay = \"relay.example.net:0\"\ninsecure_allow_unauthenticated = true\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n", []string{
			`gw.toml:2: tunnel.relay: "relay.example.net:0": port "0" is not a number 1..65535`}},
		{"relay with bad host", "[tunnel]\nrelay = \"relay_1:4433\"\ninsecure_allow_unauthenticated = true\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n", []string{
			`gw.toml:2: tunnel.relay: "relay_1:4433": "relay_1" is not a domain name`}},
		{"named files must exist", "[tunnel]\ncert = \"pki/gw.crt\"\nkey = \"/nonexistent/gw.key\"\nca = \"/\"\n", []string{
			`gw.toml:2: tunnel.cert: cannot read file "pki/gw.crt" (`, `gw.toml:3: tunnel.key: cannot read file "/nonexistent/gw.key": no such file`, `gw.toml:4: tunnel.ca: cannot read file "/": is a directory`}},
		{"bad server_name", "[tunnel]\nserver_name = \"a b\"\n", []string{`gw.toml:2: tunnel.server_name: "a b" is not a domain name`}},

		// [limits] and [discovery]
		{"max_flows 0", "[limits]\nmax_flows = 0\nmax_inflight_handshakes = -1\n", []string{
			"gw.toml:2: limits.max_flows: 0 is out of range", "gw.toml:3: limits.max_inflight_handshakes: -1 is out of range"}},
		{"burst 0 with a rate", "[limits]\nnew_flows_per_second = 5\nnew_flows_burst = 0\n", []string{"gw.toml:3: limits.new_flows_burst: 0 is out of range 1.."}},
		{"negative rate", "[limits]\nnew_flows_per_second = -5\n", []string{"gw.toml:2: limits.new_flows_per_second: -5 is out of range 0.."}},
		{"min_ttl above max_ttl", "[discovery]\nmin_ttl = \"10m\"\n", []string{"gw.toml:1: discovery.max_ttl: 5m0s is less than min_ttl 10m0s"}},
		{"min_ttl zero", "[discovery]\nmin_ttl = \"0s\"\n", []string{"gw.toml:2: discovery.min_ttl: must be greater than 0"}},
		{"bad nameserver", "[discovery]\nnameservers = [\"[::1]\"]\n", []string{`gw.toml:2: discovery.nameservers[0]: "[::1]" is not an IP address or ip:port`}},
		{"nameserver twice", "[discovery]\nnameservers = [\"[::1]:53\", \"::1\"]\n", []string{
			`gw.toml:2: discovery.nameservers[1]: "::1" is listed twice (as [::1]:53)`}},

		// [[tenant]]
		{"tenant name", "[[tenant]]\nname = \"-acme\"\nsources = [\"192.0.2.0/24\"]\n", []string{`gw.toml:2: tenant[0].name: "-acme" must not start or end with '-'`}},
		{"tenant without name and sources", "[[tenant]]\nmax_flows = -1\n", []string{
			"gw.toml:1: tenant[0].name: required", "gw.toml:2: tenant[0].max_flows: must not be negative", "gw.toml:1: tenant[0].sources: required"}},
		{"duplicate tenant", gatewayHead + "[[tenant]]\nname = \"ACME\"\nsources = [\"192.0.2.0/24\"]\n", []string{`gw.toml:13: tenant[2].name: "acme" is also the name of tenant[0]`}},
		{"source with host bits", "[[tenant]]\nname = \"acme\"\nsources = [\"198.51.100.7/24\"]\n", []string{"gw.toml:3: tenant[0].sources[0]: 198.51.100.7/24 has host bits set (did you mean 198.51.100.0/24?)"}},
		{"source without length", "[[tenant]]\nname = \"acme\"\nsources = [\"198.51.100.7\"]\n", []string{`gw.toml:3: tenant[0].sources[0]: "198.51.100.7" is an address, not a prefix (did you mean 198.51.100.7/32?)`}},
		{"overlapping tenants", gatewayHead + "[[tenant]]\nname = \"initech\"\nsources = [\"10.0.0.0/8\", \"198.51.100.128/25\"]\n", []string{
			`gw.toml:14: tenant[2].sources[1]: 198.51.100.128/25 of tenant "initech" overlaps 198.51.100.0/24 of tenant "acme" (tenant[0].sources[0])`}},
		{"negative tenant limits", "[[tenant]]\nname = \"acme\"\nsources = [\"192.0.2.0/24\"]\nmax_inflight_handshakes = -1\nnew_flows_per_second = -1\nnew_flows_burst = -1\n", []string{
			"gw.toml:4: tenant[0].max_inflight_handshakes: must not be negative", "gw.toml:5: tenant[0].new_flows_per_second: must not be negative",
			"gw.toml:6: tenant[0].new_flows_burst: must not be negative"}},
		{"tenant limits above [limits]", "[limits]\nmax_inflight_handshakes = 100\nnew_flows_per_second = 10\nnew_flows_burst = 15\n[[tenant]]\nname = \"acme\"\nsources = [\"192.0.2.0/24\"]\nmax_inflight_handshakes = 101\nnew_flows_per_second = 11\nnew_flows_burst = 16\n", []string{
			"gw.toml:8: tenant[0].max_inflight_handshakes: 101 is more than limits.max_inflight_handshakes 100, the bound of the whole gateway",
			"gw.toml:9: tenant[0].new_flows_per_second: 11 is more than limits.new_flows_per_second 10, which bounds every source",
			"gw.toml:10: tenant[0].new_flows_burst: 16 is more than limits.new_flows_burst 15, which bounds every source"}},
		{"tenant limits out of range", "[[tenant]]\nname = \"acme\"\nsources = [\"192.0.2.0/24\"]\nmax_flows = 2000000000\n", []string{
			"gw.toml:4: tenant[0].max_flows: 2000000000 is out of range 0..1073741824"}},
		{"same prefix twice in a tenant", "[[tenant]]\nname = \"acme\"\nsources = [\"192.0.2.0/24\", \"192.0.2.0/24\"]\n", []string{"gw.toml:3: tenant[0].sources[1]: 192.0.2.0/24 is listed twice"}},
		{"IPv4-mapped source is its IPv4 prefix", gatewayHead + "[[tenant]]\nname = \"initech\"\nsources = [\"::ffff:198.51.100.0/120\"]\n", []string{
			`gw.toml:14: tenant[2].sources[0]: 198.51.100.0/24 of tenant "initech" overlaps 198.51.100.0/24 of tenant "acme" (tenant[0].sources[0])`}},

		// [[service]] names and tenants.
		{"service name missing", svc("tenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]" + tcp80), []string{"gw.toml:13: service[0].name: required"}},
		{"service name not a label", svc("name = \"web_1\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]" + tcp80), []string{`gw.toml:14: service[0].name: "web_1" is not a DNS label`}},
		{"service name reserved", svc("name = \"NS\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]" + tcp80), []string{`gw.toml:14: service[0].name: "ns" is reserved`}},
		{"service name too long", svc("name = \"" + strings.Repeat("a", 64) + "\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]" + tcp80), []string{"is longer than 63 characters"}},
		{"duplicate names ignore case", webService + svc("name = \"WEB\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]"+tcp80), []string{`gw.toml:22: service[1].name: "web" is also the name of service[0]`}},
		{"tenants missing", svc("name = \"web\"\nbackends = [\"192.0.2.10\"]" + tcp80), []string{"gw.toml:13: service[0].tenants: required"}},
		{"unknown tenant", svc("name = \"web\"\ntenants = [\"acme\", \"umbrella\"]\nbackends = [\"192.0.2.10\"]" + tcp80), []string{`gw.toml:15: service[0].tenants[1]: unknown tenant "umbrella" (declare it in a [[tenant]] table)`}},
		{"tenant listed twice", svc("name = \"web\"\ntenants = [\"acme\", \"Acme\"]\nbackends = [\"192.0.2.10\"]" + tcp80), []string{`gw.toml:15: service[0].tenants[1]: "acme" is listed twice`}},
		{"every tenant and a name", svc("name = \"web\"\ntenants = [\"*\", \"acme\"]\nbackends = [\"192.0.2.10\"]" + tcp80), []string{
			`gw.toml:15: service[0].tenants: "*" (every tenant) cannot be listed with tenant names: write ["*"] alone, or only the names`}},
		{"a name and every tenant", svc("name = \"web\"\ntenants = [\"acme\", \"globex\", \"*\"]\nbackends = [\"192.0.2.10\"]" + tcp80), []string{
			`gw.toml:15: service[0].tenants: "*" (every tenant) cannot be listed with tenant names`}},

		// Backends.
		{"no backends", svc("name = \"web\"\ntenants = [\"acme\"]" + tcp80), []string{"gw.toml:13: service[0].backends: required: at least one IP address or host name (or set backends_srv)"}},
		{"backend with port", svc("name = \"web\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10:8080\", \"[2001:db8::1]:80\", \"app:80\"]" + tcp80), []string{
			`gw.toml:16: service[0].backends[0]: "192.0.2.10:8080": a backend has no port`, `gw.toml:16: service[0].backends[1]: "[2001:db8::1]:80": a backend has no port`, `gw.toml:16: service[0].backends[2]: "app:80": a backend has no port`}},
		{"bad backend", svc("name = \"web\"\ntenants = [\"acme\"]\nbackends = [\"300.1.1.1\", \"app_1.corp\", \"\"]" + tcp80), []string{
			`gw.toml:16: service[0].backends[0]: "300.1.1.1" is neither an IP address nor a host name`, `gw.toml:16: service[0].backends[1]: "app_1.corp" is not a domain name`, `gw.toml:16: service[0].backends[2]: "" is not a domain name`}},
		{"duplicate backend", svc("name = \"web\"\ntenants = [\"acme\"]\nbackends = [\"app.corp\", \"192.0.2.1\", \"APP.corp\", \"192.0.2.01\"]" + tcp80), []string{
			`gw.toml:16: service[0].backends[2]: "APP.corp" is listed twice`, `gw.toml:16: service[0].backends[3]: "192.0.2.01" is neither an IP address nor a host name`}},
		{"backend twice, once IPv4-mapped", svc("name = \"web\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.1\", \"::ffff:192.0.2.1\"]" + tcp80), []string{
			`gw.toml:16: service[0].backends[1]: "::ffff:192.0.2.1" is listed twice (as 192.0.2.1)`}},
		{"IPv4-mapped backend twice", svc("name = \"web\"\ntenants = [\"acme\"]\nbackends = [\"::FFFF:192.0.2.1\", \"192.0.2.1\"]" + tcp80), []string{
			`gw.toml:16: service[0].backends[1]: "192.0.2.1" is listed twice`}},
		{"bad backends_srv", svc("name = \"web\"\ntenants = [\"acme\"]\nbackends_srv = \"app.corp.example\"" + tcp80), []string{
			`gw.toml:16: service[0].backends_srv: "app.corp.example" is not an SRV name like _http._tcp.app.corp.example`}},

		// Pins.
		{"vip outside the pool", webWith("vip = \"10.200.0.5\"\n", ""), []string{"gw.toml:17: service[0].vip: 10.200.0.5 is outside the pool 10.100.0.0/24"}},
		{"vip network", webWith("vip = \"10.100.0.0\"\n", ""), []string{"gw.toml:17: service[0].vip: 10.100.0.0 is the network address of the pool 10.100.0.0/24"}},
		{"vip gateway", webWith("vip = \"10.100.0.1\"\n", ""), []string{"gw.toml:17: service[0].vip: 10.100.0.1 is the gateway address"}},
		{"vip broadcast", webWith("vip = \"10.100.0.255\"\n", ""), []string{"gw.toml:17: service[0].vip: 10.100.0.255 is the broadcast address of the pool 10.100.0.0/24"}},
		{"vip IPv6", webWith("vip = \"fd00::5\"\n", ""), []string{"gw.toml:17: service[0].vip: fd00::5 is not an IPv4 address (an IPv6 pin goes in vip6)"}},
		{"vip garbage", webWith("vip = \"ten\"\n", ""), []string{`gw.toml:17: service[0].vip: "ten" is not an IP address`}},
		{"vip6 without pool6", webWith("vip6 = \"fd00::5\"\n", ""), []string{"gw.toml:17: service[0].vip6: fd00::5 cannot be pinned: no IPv6 pool (pool6) is configured"}},
		{"vip6 IPv4", webWith("vip6 = \"10.100.0.5\"\n", ""), []string{"gw.toml:17: service[0].vip6: 10.100.0.5 is not an IPv6 address (an IPv4 pin goes in vip)"}},
		{"vip6 reserved", "[tun]\npool6 = \"fd00::/64\"\n" + webWith("vip6 = \"fd00::1\"\n", ""), []string{"gw.toml:19: service[0].vip6: fd00::1 is the gateway address"}},
		{"vip6 anycast", "[tun]\npool6 = \"fd00::/64\"\n" + webWith("vip6 = \"fd00::\"\n", ""), []string{"gw.toml:19: service[0].vip6: fd00:: is the subnet-router anycast address"}},
		{"vip6 outside", "[tun]\npool6 = \"fd00::/64\"\n" + webWith("vip6 = \"fd01::5\"\n", ""), []string{"gw.toml:19: service[0].vip6: fd01::5 is outside the pool fd00::/64"}},
		{"pinned twice", webWith("vip = \"10.100.0.10\"\n", "") + svc("name = \"db\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]\nvip = \"10.100.0.10\"" + tcp80)[len(gatewayHead):], []string{
			`gw.toml:27: service[1].vip: 10.100.0.10 is pinned by both service "web" (service[0]) and service "db" (service[1])`}},
		{"pins with a relay", "[tunnel]\nrelay = \"relay.example.net:4433\"\ninsecure_allow_unauthenticated = true\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n" + webWith("vip = \"10.100.0.10\"\n", ""), []string{
			"gw.toml:22: service[0].vip: VIPs are allocated by the relay: pin 10.100.0.10 with a [[pin]] table in the relay's configuration"}},
		{"pool too small", "[tun]\npool = \"10.100.0.0/29\"\n" + manyServices(7), []string{"gw.toml:2: tun.pool: pool 10.100.0.0/29 has room for 5 VIPs but 7 services need one each"}},
		{"pool6 too small", "[tun]\npool6 = \"fd00::/126\"\n" + manyServices(3), []string{"gw.toml:2: tun.pool6: pool fd00::/126 has room for 2 VIPs but 3 services need one each"}},

		// balance, icmp, max_flows
		{"bad balance", webWith("balance = \"random\"\n", ""), []string{`gw.toml:17: service[0].balance: "random" is not round_robin, least_conn or source_hash`}},
		{"negative max_flows", webWith("max_flows = -1\n", ""), []string{"gw.toml:17: service[0].max_flows: must not be negative"}},
		{"negative service limits", webWith("max_inflight_handshakes = -1\nnew_flows_per_second = -2\nnew_flows_burst = -3\n", ""), []string{
			"gw.toml:17: service[0].max_inflight_handshakes: must not be negative", "gw.toml:18: service[0].new_flows_per_second: must not be negative",
			"gw.toml:19: service[0].new_flows_burst: must not be negative"}},
		{"service limits above [limits]", "[limits]\nnew_flows_per_second = 10\n" + webWith("max_inflight_handshakes = 1025\nnew_flows_per_second = 20\nnew_flows_burst = 21\n", ""), []string{
			"gw.toml:19: service[0].max_inflight_handshakes: 1025 is more than limits.max_inflight_handshakes 1024",
			"gw.toml:20: service[0].new_flows_per_second: 20 is more than limits.new_flows_per_second 10",
			"gw.toml:21: service[0].new_flows_burst: 21 is more than limits.new_flows_burst 20"}},
		{"service burst without a rate", webWith("new_flows_burst = 3\n", ""), []string{
			"gw.toml:17: service[0].new_flows_burst: needs new_flows_per_second in the same table: a burst belongs to a rate"}},

		// [[service.port]]
		{"no ports", svc("name = \"web\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]\n"), []string{"gw.toml:13: service[0].port: required: at least one [[service.port]]"}},
		{"port without protocol and port", webWith("", "[[service.port]]\ntarget = 0\n"), []string{
			"gw.toml:21: service[0].port[1].protocol: required: tcp or udp", "gw.toml:21: service[0].port[1].port: required", "gw.toml:22: service[0].port[1].target: 0 is out of range 1..65535"}},
		{"bad protocol and port", webWith("", "[[service.port]]\nprotocol = \"sctp\"\nport = 70000\n"), []string{
			`gw.toml:22: service[0].port[1].protocol: "sctp" is not tcp or udp`, "gw.toml:23: service[0].port[1].port: 70000 is out of range 1..65535"}},
		{"duplicate port", webWith("", "[[service.port]]\nprotocol = \"tcp\"\nport = 80\ntarget = 81\n"), []string{"gw.toml:21: service[0].port[1]: tcp/80 is also declared by service[0].port[0]"}},
		{"port name", webWith("", "[[service.port]]\nname = \"_http\"\nprotocol = \"tcp\"\nport = 81\n"), []string{`gw.toml:22: service[0].port[1].name: "_http" is not a DNS label`}},
		{"duplicate port name", svc("name = \"web\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]\n[[service.port]]\nname = \"http\"\nprotocol = \"tcp\"\nport = 80\n[[service.port]]\nname = \"HTTP\"\nprotocol = \"tcp\"\nport = 8080\n"), []string{
			`gw.toml:22: service[0].port[1].name: "http" is also the name of service[0].port[0] (SRV _http._tcp would be ambiguous)`}},

		// [service.health]
		{"bad health type", webWith("", "[service.health]\ntype = \"icmp\"\n"), []string{`gw.toml:22: service[0].health.type: "icmp" is not tcp, http, udp or none`}},
		{"http path", webWith("", "[service.health]\ntype = \"http\"\npath = \"healthz\"\nexpect_status = 42\n"), []string{
			`gw.toml:23: service[0].health.path: "healthz" must start with "/"`, "gw.toml:24: service[0].health.expect_status: 42 is not 0 (any 2xx) or a status 100..599"}},
		{"bad interval", webWith("", "[service.health]\ninterval = \"5x\"\n"), []string{`gw.toml:22: service[0].health.interval: invalid duration "5x"`}},
		{"timeout above interval", webWith("", "[service.health]\ninterval = \"1s\"\ntimeout = \"2s\"\n"), []string{"gw.toml:23: service[0].health.timeout: 2s must be greater than 0 and at most the interval 1s"}},
		{"zero interval and timeout", webWith("", "[service.health]\ninterval = \"0s\"\ntimeout = \"0s\"\n"), []string{
			"gw.toml:22: service[0].health.interval: must be greater than 0", "gw.toml:23: service[0].health.timeout: 0s must be greater than 0"}},
		{"rise and fall 0", webWith("", "[service.health]\nrise = 0\nfall = 0\n"), []string{
			"gw.toml:22: service[0].health.rise: 0 is out of range 1..", "gw.toml:23: service[0].health.fall: 0 is out of range 1.."}},
		{"udp check without a UDP port", webWith("", "[service.health]\ntype = \"udp\"\n"), []string{"gw.toml:21: service[0].health.port: required: the service has no udp port to check by default"}},
		{"health port out of range", webWith("", "[service.health]\nport = 0\n"), []string{"gw.toml:22: service[0].health.port: 0 is out of range 1..65535"}},
		{"keys of other check types", webWith("", "[service.health]\ntype = \"tcp\"\npath = \"/\"\nsend = \"x\"\n"), []string{
			"gw.toml:23: service[0].health.path: applies only to health type http, not tcp", "gw.toml:24: service[0].health.send: applies only to health type udp, not tcp"}},
		{"port with type none", webWith("", "[service.health]\ntype = \"none\"\nport = 80\n"), []string{"gw.toml:23: service[0].health.port: does not apply to health type none"}},

		// [service.timeouts]
		{"bad timeouts", webWith("", "[service.timeouts]\ntcp_idle = \"0s\"\nudp_idle = \"forever\"\n"), []string{
			`gw.toml:23: service[0].timeouts.udp_idle: invalid duration "forever"`, "gw.toml:22: service[0].timeouts.tcp_idle: must be greater than 0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseGateway("dir/gw.toml", []byte(tc.toml))
			wantErrors(t, err, tc.want)
		})
	}
}
