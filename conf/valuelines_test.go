package conf

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestValueErrorsTellTheLine: an error of the validation (a value out of
// range, a bad prefix, a negative duration, a limit above the gateway's, a
// name used twice) starts with file:line: of its key, as a decoding error
// does, in each role's file. An error about a whole element (a port
// declared twice) has the line of the element's header; one about a key
// absent from the file (a required key, a default) the line of its table,
// or no line when the table is absent too. ztgate check (Check) and the
// start (Load) tell the same lines.
func TestValueErrorsTellTheLine(t *testing.T) {
	const service = "[[service]]\nname = \"web\"\ntenants = [\"*\"]\nbackends = [\"192.0.2.10\"]\n" // lines 1-4
	tests := []struct {
		name string
		role Role
		text string
		want []string // each error's exact prefix, in order
	}{
		// gateway
		{"negative duration", RoleGateway,
			"[gateway]\nname = \"gw1\"\ndrain_timeout = \"-1s\"\n",
			[]string{"gw.toml:3: gateway.drain_timeout: "}},
		{"port out of range in a nested array of tables", RoleGateway, service +
			"  [[service.port]]\n  protocol = \"tcp\"\n  port = 80\n" + // 5-7
			"[[service]]\nname = \"db\"\ntenants = [\"*\"]\nbackends = [\"192.0.2.20\"]\n" + // 8-11
			"  [[service.port]]\n  protocol = \"tcp\"\n  port = 5432\n" + // 12-14
			"  [[service.port]]\n  protocol = \"udp\"\n  port = 70000\n", // 15-17
			[]string{"gw.toml:17: service[1].port[1].port: "}},
		{"bad prefix in a multi-line array", RoleGateway,
			"[[tenant]]\nname = \"acme\"\nsources = [\n  \"198.51.100.0/24\",\n  \"203.0.113.7/24\",\n]\n",
			[]string{"gw.toml:5: tenant[0].sources[1]: "}},
		{"tenant limit above the gateway's", RoleGateway,
			"[limits]\nnew_flows_per_second = 100\n[[tenant]]\nname = \"acme\"\nsources = [\"198.51.100.0/24\"]\nnew_flows_per_second = 200\n",
			[]string{"gw.toml:6: tenant[0].new_flows_per_second: "}},
		{"duplicate tenant name", RoleGateway,
			"[[tenant]]\nname = \"acme\"\nsources = [\"198.51.100.0/24\"]\n[[tenant]]\nname = \"ACME\"\nsources = [\"203.0.113.0/24\"]\n",
			[]string{"gw.toml:5: tenant[1].name: "}},
		{"duplicate service name", RoleGateway, service +
			"  [[service.port]]\n  protocol = \"tcp\"\n  port = 80\n" + // 5-7
			"[[service]]\nname = \"Web\"\ntenants = [\"*\"]\nbackends = [\"192.0.2.20\"]\nport = [{ protocol = \"tcp\", port = 80 }]\n", // 8-12
			[]string{"gw.toml:9: service[1].name: "}},
		{"port declared twice: the element's header", RoleGateway, service +
			"  [[service.port]]\n  protocol = \"tcp\"\n  port = 80\n" + // 5-7
			"  [[service.port]]\n  protocol = \"tcp\"\n  port = 80\n  target = 8080\n", // 8-11
			[]string{"gw.toml:8: service[0].port[1]: "}},
		{"port declared twice in an inline array", RoleGateway, service +
			"port = [{ protocol = \"tcp\", port = 80 },\n  { protocol = \"tcp\", port = 80 }]\n",
			[]string{"gw.toml:6: service[0].port[1]: "}},
		{"VIP pinned twice", RoleGateway, service +
			"vip = \"10.100.0.9\"\nport = [{ protocol = \"tcp\", port = 80 }]\n" + // 5-6
			"[[service]]\nname = \"db\"\ntenants = [\"*\"]\nbackends = [\"192.0.2.20\"]\nvip = \"10.100.0.9\"\nport = [{ protocol = \"tcp\", port = 5432 }]\n", // 7-12
			[]string{"gw.toml:11: service[1].vip: "}},
		{"pool too small for the services", RoleGateway,
			"[tun]\npool = \"10.100.0.0/29\"\n" + manyServices(6),
			[]string{"gw.toml:2: tun.pool: "}},
		{"listener listed twice", RoleGateway,
			"[dns]\nlisten = [\n  \"127.0.0.1:5353\",\n  \"127.0.0.1:5353\",\n]\n",
			[]string{"gw.toml:4: dns.listen[1]: "}},
		{"hold-down shorter than a TTL set elsewhere", RoleGateway,
			"[gateway]\nname = \"gw1\"\nvip_hold_down = \"10s\"\n[dns]\nttl = \"1m\"\n",
			[]string{"gw.toml:3: gateway.vip_hold_down: "}},
		{"required key absent: its table's header", RoleGateway,
			"[gateway]\nname = \"gw1\"\n[[tenant]]\nname = \"acme\"\n",
			[]string{"gw.toml:3: tenant[0].sources: "}},
		{"required key absent: its element's header", RoleGateway,
			"[gateway]\nname = \"gw1\"\n" + service,
			[]string{"gw.toml:3: service[0].port: "}},
		{"required key absent from a subtable", RoleGateway, service +
			"port = [{ protocol = \"tcp\", port = 80 }]\n  [service.health]\n  type = \"udp\"\n",
			[]string{"gw.toml:6: service[0].health.port: "}},
		{"required key absent from a dotted-key table", RoleGateway, service +
			"port = [{ protocol = \"tcp\", port = 80 }]\nhealth.interval = \"5s\"\nhealth.type = \"udp\"\n",
			[]string{"gw.toml:6: service[0].health.port: "}},
		{"default against a key set: the table's line", RoleGateway,
			"[gateway]\nname = \"gw1\"\n[discovery]\nmin_ttl = \"10m\"\n",
			[]string{"gw.toml:3: discovery.max_ttl: "}},
		{"tunnel without TLS files", RoleGateway,
			"[gateway]\nname = \"gw1\"\n[tunnel]\nlisten = \"0.0.0.0:4434\"\n",
			[]string{"gw.toml:3: tunnel.cert: ", "gw.toml:3: tunnel.key: ", "gw.toml:3: tunnel.ca: "}},

		// relay
		{"relay TTL out of range", RoleRelay,
			"[relay]\nname = \"relay1\"\ninsecure_allow_unauthenticated = true\ncert = \"/dev/null\"\nkey = \"/dev/null\"\nttl = \"48h\"\n",
			[]string{"relay.toml:6: relay.ttl: "}},
		{"forward ports hold the listen port", RoleRelay,
			"[relay]\nname = \"relay1\"\nlisten = \"0.0.0.0:4433\"\nforward_ports = \"4430-4440\"\ninsecure_allow_unauthenticated = true\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n",
			[]string{"relay.toml:4: relay.forward_ports: "}},
		{"relay pins", RoleRelay,
			"[relay]\nname = \"relay1\"\ninsecure_allow_unauthenticated = true\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n" + // 1-5
				"[[pin]]\nservice = \"web\"\nvip = \"10.100.0.9\"\n" + // 6-8
				"[[pin]]\nservice = \"db\"\nvip = \"10.100.0.9\"\n" + // 9-11
				"[[pin]]\nservice = \"dns\"\n", // 12-13
			[]string{"relay.toml:11: pin[1].vip: ", "relay.toml:12: pin[2].vip: "}},
		{"relay without TLS files", RoleRelay,
			"[relay]\nname = \"relay1\"\ninsecure_allow_unauthenticated = true\n",
			[]string{"relay.toml:1: relay.cert: ", "relay.toml:1: relay.key: "}},

		// agent
		{"agent TUN", RoleAgent,
			"[tunnel]\nserver = \"relay.example.net:4433\"\ninsecure_allow_unauthenticated = true\n[tun]\naddress = \"10.100.0.5\"\nmtu = 100\n",
			[]string{"agent.toml:6: tun.mtu: ", "agent.toml:5: tun.address: "}},
		{"agent server not host:port", RoleAgent,
			"[agent]\nname = \"laptop\"\n[tunnel]\nserver = \"relay\"\ninsecure_allow_unauthenticated = true\n[dns]\nlisten = [\"127.0.0.1\"]\n",
			[]string{"agent.toml:4: tunnel.server: ", "agent.toml:7: dns.listen[0]: "}},
		{"agent tunnel without server", RoleAgent,
			"[agent]\nname = \"laptop\"\n[tunnel]\ninsecure_allow_unauthenticated = true\n",
			[]string{"agent.toml:3: tunnel.server: "}},
		{"agent without a tunnel table: no line", RoleAgent,
			"[agent]\nname = \"laptop\"\n",
			[]string{"agent.toml: tunnel.server: ", "agent.toml: tunnel.cert: ", "agent.toml: tunnel.key: ", "agent.toml: tunnel.ca: "}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), string(tc.role)+".toml")
			if tc.role == RoleGateway {
				name = filepath.Join(filepath.Dir(name), "gw.toml")
			}
			text := tc.text
			if !strings.Contains(text, "["+string(tc.role)+"]") { // for Check to tell the role
				text += "[" + string(tc.role) + "]\n"
			}
			if err := os.WriteFile(name, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			var err error
			switch tc.role {
			case RoleGateway:
				_, err = LoadGateway(name)
			case RoleRelay:
				_, err = LoadRelay(name)
			case RoleAgent:
				_, err = LoadAgent(name)
			}
			got := errorLines(t, err)
			if len(got) != len(tc.want) {
				t.Fatalf("errors:\n%s\nwant %d starting with:\n%s", strings.Join(got, "\n"), len(tc.want), strings.Join(tc.want, "\n"))
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("error %d = %q, want it to start with %q", i, got[i], w)
				}
			}
			// ztgate check tells the same errors (and may find more inside
			// the TLS files, which Load leaves to the start).
			role, _, cerr := Check(name)
			if role != tc.role {
				t.Errorf("Check: role %q, want %q", role, tc.role)
			}
			checked := errorLines(t, cerr)
			for _, e := range got {
				if !slices.Contains(checked, e) {
					t.Errorf("Check lacks %q:\n%s", e, strings.Join(checked, "\n"))
				}
			}
		})
	}
}
