package main

import (
	"bytes"
	"cmp"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/agent"

	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Bodies of GET /v1/services as a gateway and a relay send them.
const (
	gatewayServices = `{"services": [{"name": "web", "vip": "10.100.0.10", "tenants": ["acme"],
		"ports": [{"name": "http", "protocol": "tcp", "port": 80, "target": 8080}], "balance": "round_robin",
		"healthy": true, "source": "file", "active_flows": 3,
		"backends": [{"address": "192.0.2.10", "healthy": true, "state": "up", "last_error": "", "active_flows": 3},
			{"address": "192.0.2.11", "healthy": false, "state": "down", "last_error": "connection refused", "active_flows": 0}]}]}`
	// SRV backends, two on one address, named apart by address:port.
	gatewaySRVServices = `{"services": [{"name": "web", "vip": "10.100.0.10", "tenants": ["acme"],
		"ports": [{"protocol": "tcp", "port": 80, "target": 8080}], "balance": "round_robin",
		"healthy": true, "source": "file", "active_flows": 1,
		"backends": [{"address": "192.0.2.20", "backend": "192.0.2.20:8080", "port": 8080, "origin": "_web._tcp.corp.example",
				"healthy": true, "state": "up", "last_error": "", "active_flows": 1},
			{"address": "192.0.2.20", "backend": "192.0.2.20:8081", "port": 8081, "origin": "_web._tcp.corp.example",
				"healthy": false, "state": "down", "last_error": "connection refused", "active_flows": 0}]}]}`
	relayServices = `{"services": [{"name": "web", "vip": "10.100.0.10", "tenants": ["acme"],
		"ports": [{"protocol": "tcp", "port": 80}], "icmp": true, "healthy": true,
		"gateways": [{"name": "gw1", "healthy": true, "state": "healthy", "session": 7, "flows": 2},
			{"name": "gw2", "healthy": true, "state": "draining", "session": 9, "flows": 1}]},
		{"name": "db", "vip": "10.100.0.11", "tenants": ["*"], "ports": [{"protocol": "tcp", "port": 5432}],
		"healthy": false, "gateways": [{"name": "gw1", "healthy": false, "state": "down", "session": 7, "flows": 2}]}]}`
)

// relaySessions is a relay's GET /v1/sessions for relayServices.
const relaySessions = `{"sessions": [
	{"id": 9, "role": "gateway", "identity": "ops/gateway/gw2", "tenant": "ops"},
	{"id": 3, "role": "agent", "identity": "acme/agent/a1", "tenant": "acme", "inner_addr": "100.64.0.1"},
	{"id": 7, "role": "gateway", "identity": "ops/gateway/gw1", "tenant": "ops"}]}`

// Bodies of an agent's GET /v1/status: connected, with one service on a
// direct path through a relay's forwarder; connected, with no service of
// its tenant; and cut off.
const (
	agentConnected = `{"role": "agent", "name": "laptop", "identity": "acme/agent/laptop", "server": "relay.example.net:4433",
		"tunnel": {"connected": true, "since": "2026-01-01T10:00:00Z", "peer": "infra/relay/relay1",
			"remote": "203.0.113.5:4433", "version": "ztna-v2", "max_datagram": 1200},
		"address": "100.64.0.1", "mtu": 1174, "zone": "ztna.internal.", "pool": "10.100.0.0/24",
		"host_dns": {"state": "set", "link": "ztagent0", "domains": ["ztna.internal", "0.100.10.in-addr.arpa"]},
		"services": [
			{"name": "db", "vip": "10.100.0.11", "healthy": false, "ports": [{"protocol": "tcp", "port": 5432}], "path": "relay",
				"direct_failure": "refused: no_gateway"},
			{"name": "web", "vip": "10.100.0.10", "healthy": true, "ports": [{"protocol": "tcp", "port": 80}, {"protocol": "udp", "port": 7}],
				"path": "direct", "gateway": "infra/gateway/gw-east"}],
		"excluded_services": [{"name": "clash", "vip": "10.100.0.1", "reason": "local_address"}],
		"direct_paths": [{"gateway": "infra/gateway/gw-east", "remote": "203.0.113.5:40001", "via": "relay forwarder",
			"since": "2026-01-01T10:00:05Z", "services": ["web"]}]}`
	agentNoServices = `{"role": "agent", "name": "laptop", "identity": "acme/agent/laptop", "server": "relay.example.net:4433",
		"tunnel": {"connected": true, "since": "2026-01-01T10:00:00Z", "peer": "infra/relay/relay1",
			"remote": "203.0.113.5:4433", "version": "ztna-v2"},
		"address": "100.64.0.1", "mtu": 1174, "pool": "10.100.0.0/24", "services": [], "direct_paths": []}`
	agentCutOff = `{"role": "agent", "name": "laptop", "server": "relay.example.net:4433",
		"tunnel": {"connected": false, "since": "2026-01-01T10:00:00Z", "last_error": "tunnel: dial relay.example.net:4433: no such host",
			"retry_at": "2026-01-01T10:00:30Z"},
		"address": "100.64.0.1", "mtu": 1280, "pool": "10.100.0.0/24", "services": [], "direct_paths": []}`
)

func TestStatus(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		path       string // that serves body; "" is /v1/services
		body       string
		sessions   string // the body of /v1/sessions (a relay's); "" for none
		relay      string // the body of /v1/relay (a gateway's with [tunnel] relay); "" for none
		token      string // the server's; "" = none
		args       []string
		code       int
		want       []string // in stdout
		wantErr    string   // in stderr
		notWant    string
		serverDown bool
	}{
		{name: "gateway", body: gatewayServices, code: 0, want: []string{
			"SERVICE", "BACKENDS (STATE, FLOWS)", "web", "10.100.0.10", "tcp/80→8080", "acme", "up",
			"192.0.2.10 up (3)", "192.0.2.11 down (0): connection refused"}},
		{name: "gateway, SRV backends", body: gatewaySRVServices, code: 0, want: []string{
			"192.0.2.20:8080 up (1); 192.0.2.20:8081 down (0): connection refused"}},
		{name: "relay", body: relayServices, sessions: relaySessions, code: 0, want: []string{
			"connected: 2 gateways (ops/gateway/gw1, ops/gateway/gw2), 1 agent\n",
			"GATEWAYS (STATE, FLOWS)", "gw1 healthy (2); gw2 draining (1)", "db", "gw1 down (2)", "tcp/5432"}, notWant: "BACKENDS"},
		{name: "relay without gateways", body: `{"services": []}`, sessions: `{"sessions": [{"role": "agent", "identity": "acme/agent/a1"}]}`,
			code: 0, want: []string{"connected: no gateway, 1 agent\nno services"}},
		{name: "gateway: no sessions line", body: gatewayServices, code: 0, notWant: "connected:"},
		{name: "gateway behind a relay", body: gatewayServices, relay: `{"relay": "relay.example.net:4433", "tunnel": {"connected": true,
			"since": "2026-01-01T10:00:00Z", "peer": "infra/relay/relay1", "remote": "203.0.113.5:4433", "version": "ztna-v2"}}`,
			code: 0, want: []string{"tunnel to relay.example.net:4433: connected to infra/relay/relay1 at 203.0.113.5:4433 (ztna-v2) for ",
				"192.0.2.10 up (3)"}},
		{name: "gateway with agents connected directly", body: gatewayServices,
			sessions: `{"role": "gateway", "sessions": [{"role": "agent", "identity": "acme/agent/b"}, {"role": "agent", "identity": "acme/agent/a"}]}`,
			code:     0, want: []string{"agents connected directly: 2 (acme/agent/a, acme/agent/b)\nSERVICE"}, notWant: "connected: "},
		{name: "gateway behind a relay, listening", body: gatewayServices, sessions: `{"role": "gateway", "sessions": []}`,
			relay: `{"relay": "relay.example.net:4433", "tunnel": {"connected": true, "since": "2026-01-01T10:00:00Z",
			"peer": "infra/relay/relay1", "remote": "203.0.113.5:4433", "version": "ztna-v2"}}`,
			code: 0, want: []string{"tunnel to relay.example.net:4433: connected", "\nagents connected directly: none\nSERVICE"}},
		{name: "gateway cut off from its relay", body: `{"services": []}`, relay: `{"relay": "relay.example.net:4433", "tunnel": {"connected": false,
			"since": "2026-01-01T10:00:00Z", "last_error": "tunnel: dial relay.example.net:4433: no answer", "retry_at": "2026-01-01T10:00:30Z"}}`,
			code: 0, want: []string{"tunnel to relay.example.net:4433: DISCONNECTED for ", ": tunnel: dial relay.example.net:4433: no answer; dialling now\nno services"}},
		{name: "json", body: relayServices, args: []string{"-json"}, code: 0, want: []string{`"state": "draining"`}},
		{name: "no services", body: `{"services": []}`, code: 0, want: []string{"no services"}},
		{name: "token", body: gatewayServices, token: "s3cret", args: []string{"-token-file", tokenFile}, code: 0, want: []string{"192.0.2.10 up"}},
		{name: "token missing", body: gatewayServices, token: "s3cret", code: 1, wantErr: "pass it with -token-file"},
		{name: "not ztgate", body: `<html>`, code: 1, wantErr: "does not look like a ztgate API"},
		{name: "nothing answers", serverDown: true, code: 1, wantErr: "nothing answers at"},
		{name: "agent", path: "/v1/status", body: agentConnected, code: 0, want: []string{
			"agent laptop (acme/agent/laptop), address 100.64.0.1, MTU 1174, pool 10.100.0.0/24",
			"tunnel to relay.example.net:4433: connected to infra/relay/relay1 at 203.0.113.5:4433 (ztna-v2) for ",
			"host DNS: systemd-resolved sends ztna.internal, 0.100.10.in-addr.arpa to the agent (link ztagent0)",
			"SERVICE", "PATH", "db", "tcp/5432", "down", "relay (no direct path: refused: no_gateway)",
			"tcp/80,udp/7", "direct to infra/gateway/gw-east at 203.0.113.5:40001 (relay forwarder)",
			"left out: clash at 10.100.0.1: its VIP is one of the agent's own addresses"}, notWant: "BACKENDS"},
		{name: "agent cut off", path: "/v1/status", body: agentCutOff, code: 0, want: []string{
			"tunnel to relay.example.net:4433: DISCONNECTED for ", ": tunnel: dial relay.example.net:4433: no such host; dialling now",
			"no services"}},
		{name: "agent of a tenant without services", path: "/v1/status", body: agentNoServices,
			code: 0, want: []string{"no services for tenant acme: no service of the gateways lists it in its tenants"}},
		{name: "agent json", path: "/v1/status", body: agentCutOff, args: []string{"-json"}, code: 0, want: []string{`"last_error": "tunnel: dial`}},
		{name: "agent token missing", path: "/v1/status", body: agentCutOff, token: "s3cret", code: 1, wantErr: "pass it with -token-file"},
		{name: "neither", path: "/elsewhere", body: agentCutOff, code: 1, wantErr: "/v1/status: 404 Not Found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v1/sessions" && tc.sessions != "" {
					w.Write([]byte(tc.sessions))
					return
				}
				if r.URL.Path == "/v1/relay" && tc.relay != "" {
					w.Write([]byte(tc.relay))
					return
				}
				if r.URL.Path != cmp.Or(tc.path, "/v1/services") {
					http.NotFound(w, r)
					return
				}
				if tc.token != "" && r.Header.Get("Authorization") != "Bearer "+tc.token {
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				w.Write([]byte(tc.body))
			}))
			url := srv.URL
			if tc.serverDown {
				srv.Close()
				url = "http://" + closedPort(t)
			} else {
				defer srv.Close()
			}
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"status", "-api", url}, tc.args...), &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout.String(), stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			if tc.notWant != "" && strings.Contains(stdout.String(), tc.notWant) {
				t.Errorf("stdout has %q:\n%s", tc.notWant, stdout.String())
			}
			if !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantErr, stderr.String())
			}
		})
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestFormatSessions(t *testing.T) {
	gw := func(name string) statusSession {
		return statusSession{Role: "gateway", Identity: "ops/gateway/" + name}
	}
	agent := statusSession{Role: "agent", Identity: "acme/agent/a"}
	for _, tc := range []struct {
		name string
		in   []statusSession
		want string
	}{
		{"none", []statusSession{}, "connected: no gateway, no agent"},
		{"one each", []statusSession{agent, gw("a")}, "connected: 1 gateway (ops/gateway/a), 1 agent"},
		{"sorted", []statusSession{gw("b"), gw("a"), agent, agent}, "connected: 2 gateways (ops/gateway/a, ops/gateway/b), 2 agents"},
		{"many gateways", []statusSession{gw("h"), gw("g"), gw("f"), gw("e"), gw("d"), gw("c"), gw("b"), gw("a")},
			"connected: 8 gateways (ops/gateway/a, ops/gateway/b, ops/gateway/c, ops/gateway/d, ops/gateway/e, ops/gateway/f, 2 more), no agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatSessions(tc.in); got != tc.want {
				t.Errorf("got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestFormatHostDNS(t *testing.T) {
	for _, tc := range []struct {
		in   agent.ResolverStatus
		want string
	}{
		{agent.ResolverStatus{State: "set", Link: "ztagent0", Domains: []string{"ztna.internal"}},
			"host DNS: systemd-resolved sends ztna.internal to the agent (link ztagent0)"},
		{agent.ResolverStatus{State: "refused", Link: "ztagent0", Detail: "resolvectl dns ztagent0 10.100.0.1: exit status 1: Access denied; point …"},
			"host DNS: systemd-resolved REFUSED the agent's settings: resolvectl dns ztagent0 10.100.0.1: exit status 1: Access denied; point …"},
		{agent.ResolverStatus{State: "not_set", Detail: "resolvectl is not installed; point …"}, "host DNS: not set: resolvectl is not installed; point …"},
		{agent.ResolverStatus{State: "off"}, "host DNS: left alone (dns.set_resolver = false)"},
		{agent.ResolverStatus{}, ""}, // an agent of a version before
	} {
		if got := formatHostDNS(tc.in); got != tc.want {
			t.Errorf("formatHostDNS(%+v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestFormatDirectAgents(t *testing.T) {
	agent := func(name string) statusSession { return statusSession{Role: "agent", Identity: "acme/agent/" + name} }
	for _, tc := range []struct {
		in   []statusSession
		want string
	}{
		{[]statusSession{}, "agents connected directly: none"},
		{[]statusSession{agent("b"), agent("a")}, "agents connected directly: 2 (acme/agent/a, acme/agent/b)"},
		{[]statusSession{agent("g"), agent("f"), agent("e"), agent("d"), agent("c"), agent("b"), agent("a")},
			"agents connected directly: 7 (acme/agent/a, acme/agent/b, acme/agent/c, acme/agent/d, acme/agent/e, acme/agent/f, 1 more)"},
	} {
		if got := formatDirectAgents(tc.in); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}

func TestFormatLink(t *testing.T) {
	now := time.Date(2026, 1, 1, 10, 1, 0, 0, time.UTC)
	since := now.Add(-time.Minute)
	for _, tc := range []struct {
		name string
		link tunnel.LinkStatus
		want string
	}{
		{"connected", tunnel.LinkStatus{Connected: true, Since: since, Peer: "infra/relay/relay1",
			Remote: netip.MustParseAddrPort("203.0.113.5:4433"), Version: "ztna-v2"},
			"tunnel to relay:4433: connected to infra/relay/relay1 at 203.0.113.5:4433 (ztna-v2) for 1m0s"},
		{"connected, not verified", tunnel.LinkStatus{Connected: true, Since: since, Remote: netip.MustParseAddrPort("203.0.113.5:4433"), Version: "ztna-v2"},
			"tunnel to relay:4433: connected to an unverified server at 203.0.113.5:4433 (ztna-v2) for 1m0s"},
		{"first dial", tunnel.LinkStatus{}, "tunnel to relay:4433: connecting"},
		{"dialling again", tunnel.LinkStatus{Since: since, LastError: "refused", RetryAt: now.Add(-time.Second)},
			"tunnel to relay:4433: DISCONNECTED for 1m0s: refused; dialling now"},
		{"cut off", tunnel.LinkStatus{Since: since, LastError: "refused", RetryAt: now.Add(4 * time.Second)},
			"tunnel to relay:4433: DISCONNECTED for 1m0s: refused; next dial in 4s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatLink("relay:4433", tc.link, now); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}
