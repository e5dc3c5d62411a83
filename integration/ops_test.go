package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The operations tests (issue 9): each role runs as the systemd unit in
// dist/systemd runs it — an unprivileged user with exactly the unit's
// capabilities and no new privileges — and is driven with real clients;
// then /metrics must show the traffic, `ztgate status` must render it, the
// flow log must carry its fields, and every metric must be in
// docs/metrics.md.

// nobody is the unprivileged user the roles run as in these tests.
const nobody = 65534

// unitCaps returns the capabilities a unit file of dist/systemd grants
// (its last AmbientCapabilities=), in setpriv's form: "+net_admin,+net_raw",
// or "" for none.
func unitCaps(t testing.TB, file string) string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "dist", "systemd", file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var caps []string
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "AmbientCapabilities=")
		if !ok {
			continue
		}
		found, caps = true, nil
		for _, c := range strings.Fields(v) {
			caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
	}
	if !found {
		t.Fatalf("%s has no AmbientCapabilities=", file)
	}
	return strings.Join(caps, ",")
}

// asUnitUser runs cmd as nobody with exactly caps in every set, bounding
// set included, and no_new_privs: what User=, AmbientCapabilities=,
// CapabilityBoundingSet= and NoNewPrivileges=yes of a unit give.
func asUnitUser(caps string, cmd ...string) []string {
	set := "-all"
	if caps != "" {
		set += "," + caps
	}
	argv := append([]string{"setpriv", fmt.Sprintf("--reuid=%d", nobody), fmt.Sprintf("--regid=%d", nobody),
		"--clear-groups", "--no-new-privs", "--inh-caps=" + set, "--ambient-caps=" + set, "--bounding-set=" + set, "--"}, cmd...)
	if tunWorldWritable() {
		return argv
	}
	// A host without udev leaves /dev/net/tun root's alone (0600), where
	// a unit's user could not open it; udev, on the hosts the units are
	// for, makes it 0666. The process gets a mount namespace of its own
	// whose /dev/net holds a 0666 node of the same device: the host's
	// node is not changed, and nothing is left when the process ends.
	const script = `mount -t tmpfs -o mode=0755 ztgate-tun /dev/net && mknod -m 0666 /dev/net/tun c 10 200 && exec "$@"`
	return append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-ec", script, "sh"}, argv...)
}

// tunWorldWritable reports whether /dev/net/tun is mode 0666, as udev
// makes it.
func tunWorldWritable() bool {
	fi, err := os.Stat("/dev/net/tun")
	return err == nil && fi.Mode().Perm()&0o006 == 0o006
}

// handOver gives dir and everything below it to nobody (the unit's
// StateDirectory= and its readable configuration) and makes the
// directories above it traversable.
func handOver(t testing.TB, dir string) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, nobody, nobody)
	})
	if err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(dir); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// moved checks that each metric selector grew by at least its minimum
// between two scrapes.
func moved(t *testing.T, before, after map[string]float64, want []movedBy) {
	t.Helper()
	for _, w := range want {
		d := sumMetric(after, w.name, w.labels...) - sumMetric(before, w.name, w.labels...)
		if d < w.min {
			t.Errorf("%s%v grew by %v, want at least %v", w.name, w.labels, d, w.min)
		}
	}
}

// movedBy is a metric (with label matchers) and how much it must grow.
type movedBy struct {
	name   string
	labels []string
	min    float64
}

// holds checks that each metric selector's value is at least its minimum.
func holds(t *testing.T, m map[string]float64, want []movedBy) {
	t.Helper()
	moved(t, map[string]float64{}, m, want)
}

// documented fails the test for every ztgate_ metric of a scrape that
// docs/metrics.md does not list.
func documented(t *testing.T, role string, m map[string]float64) {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for k := range m {
		name, _, _ := strings.Cut(k, "{")
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && strings.Contains(k, "_duration_seconds") {
				name = base
			}
		}
		if !strings.HasPrefix(name, "ztgate_") || seen[name] {
			continue
		}
		seen[name] = true
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("the %s's metric %s is not in docs/metrics.md", role, name)
		}
	}
	if len(seen) == 0 {
		t.Errorf("the %s exposes no ztgate_ metric", role)
	}
}

// clientAddr matches an IPv4 address with a port: a client's, which no
// metric label may carry.
var clientAddr = regexp.MustCompile(`"(\d{1,3}\.){3}\d{1,3}:\d+"`)

// boundedLabels fails the test for every series whose labels hold an
// address with a port or one of the client addresses.
func boundedLabels(t *testing.T, role string, m map[string]float64, clients ...string) {
	t.Helper()
	for k := range m {
		bad := clientAddr.MatchString(k)
		for _, c := range clients {
			bad = bad || strings.Contains(k, `"`+c+`"`)
		}
		if bad {
			t.Errorf("the %s's series %s has a client address as a label", role, k)
		}
	}
}

// opsLANConfig is the LAN gateway of the operations test: acme's tenant is
// one client address (so that the client's second address is an unknown
// source), web is checked over HTTP, and dead has a backend that refuses.
const opsLANConfig = `
[gateway]
name = "ops-gw"
state_dir = "STATE_DIR"
[api]
listen = "127.0.0.1:7780"
[[tenant]]
name = "acme"
sources = ["198.51.100.10/32"]
[[service]]
name = "web"
tenants = ["acme"]
vip = "10.100.0.10"
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = 8080
  [service.health]
  type = "http"
  path = "/healthz"
  interval = "200ms"
[[service]]
name = "dead"
tenants = ["acme"]
vip = "10.100.0.11"
backends = ["192.0.2.11"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  [service.health]
  type = "none"
`

// TestOpsLANGateway runs the LAN gateway as its unit does and checks its
// metrics, status, reloads and JSON flow log after real traffic.
func TestOpsLANGateway(t *testing.T) {
	needTools(t, "curl", "dig", "ping", "setpriv", "unshare")
	l := newLANTopo(t)
	l.startBackend("192.0.2.10")
	state := filepath.Join(l.dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(l.dir, "gateway.toml")
	cfg := strings.ReplaceAll(opsLANConfig, "STATE_DIR", state)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	handOver(t, l.dir)
	caps := unitCaps(t, "ztgate-gateway.service")
	gw := l.start(l.router, "ztgate gateway", asUnitUser(caps, l.ztgate, "gateway", "-config", path, "-log-format", "json")...)
	gw.waitOutput(t, "gateway started", 15*time.Second)
	if got, err := capEff(gw.cmd.Process.Pid); err != nil || got != capsNetAdminRaw {
		t.Fatalf("the gateway's effective capabilities are %s (%v), want CAP_NET_ADMIN and CAP_NET_RAW (%s)", got, err, capsNetAdminRaw)
	}
	// The acme client also has an address outside its tenant.
	dev := strings.TrimSpace(l.exec(l.acme, "sh", "-c", "ip -o link show | awk -F': ' '/@/{print $2}' | cut -d@ -f1"))
	l.exec(l.acme, "ip", "addr", "add", "198.51.100.20/24", "dev", dev)
	metrics := "http://127.0.0.1:7780/metrics"
	eventually(t, 10*time.Second, "web's backend checked up", func() error {
		if out := l.exec(l.router, l.ztgate, "status"); !strings.Contains(out, "192.0.2.10 up") {
			return fmt.Errorf("%s", out)
		}
		return nil
	})
	before, err := l.scrape(l.router, metrics)
	if err != nil {
		t.Fatal(err)
	}

	for i := range 3 {
		if out, err := l.curl(l.acme, fmt.Sprintf("http://10.100.0.10/ops%d", i)); err != nil || !strings.Contains(out, "/ops") {
			t.Fatalf("curl web: %v %q", err, out)
		}
	}
	if out, err := l.try(l.acme, 10*time.Second, "ping", "-c", "2", "-W", "2", "10.100.0.10"); err != nil {
		t.Fatalf("ping web: %v\n%s", err, out)
	}
	if _, err := l.curl(l.acme, "--max-time", "5", "http://10.100.0.11/"); err == nil {
		t.Fatal("dead answered")
	}
	if _, err := l.curl(l.acme, "--max-time", "1", "--interface", "198.51.100.20", "http://10.100.0.10/"); err == nil {
		t.Fatal("a source outside every tenant was served")
	}
	for name, want := range map[string]string{"web.ztna.internal": "10.100.0.10", "nope.ztna.internal": ""} {
		if out := l.exec(l.acme, "dig", "+short", "+time=2", "+tries=1", "@10.100.0.1", name); strings.TrimSpace(out) != want {
			t.Fatalf("dig %s: %q, want %q", name, out, want)
		}
	}
	reload := func(cfg string, wantStatus string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := l.curl(l.router, "-X", "POST", "-w", "%{http_code}", "http://127.0.0.1:7780/v1/reload")
		if !strings.HasSuffix(out, wantStatus) {
			t.Fatalf("POST /v1/reload: %s, want status %s", out, wantStatus)
		}
	}
	reload(cfg+"\n[[service]]\nname = \"broken\"\n", "400")
	reload(cfg+"\n[[service]]\nname = \"added\"\ntenants = [\"acme\"]\nbackends = [\"192.0.2.10\"]\n  [[service.port]]\n  protocol = \"udp\"\n  port = 7\n", "200")
	after, err := l.scrape(l.router, metrics)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("metrics moved", func(t *testing.T) {
		moved(t, before, after, []movedBy{
			{"ztgate_flows_total", []string{`service="web"`, `tenant="acme"`, `protocol="tcp"`}, 3},
			{"ztgate_bytes_total", []string{`service="web"`, `direction="up"`}, 3 * 70},
			{"ztgate_bytes_total", []string{`service="web"`, `direction="down"`}, 3 * 100},
			{"ztgate_dial_errors_total", []string{`service="dead"`, `backend="192.0.2.11"`}, 1},
			{"ztgate_flows_refused_total", []string{`protocol="tcp"`, `reason="dial_failed"`}, 1},
			{"ztgate_health_checks_total", []string{`service="web"`, `result="ok"`}, 1},
			{"ztgate_health_check_duration_seconds_count", []string{`service="web"`}, 1},
			{"ztgate_dns_queries_total", []string{`rcode="NOERROR"`}, 1},
			{"ztgate_dns_queries_total", []string{`rcode="NXDOMAIN"`}, 1},
			{"ztgate_packets_dropped_total", []string{`reason="unknown_source"`}, 1},
			{"ztgate_config_reloads_total", []string{`result="error"`}, 1},
			{"ztgate_config_reloads_total", []string{`result="ok"`}, 1},
			{"ztgate_echo_requests_total", []string{`service="web"`, `result="ok"`}, 2},
		})
		holds(t, after, []movedBy{
			{"ztgate_backend_healthy", []string{`service="web"`, `backend="192.0.2.10"`}, 1},
			{"ztgate_vip_pool_used", nil, 3},
			{"ztgate_vip_pool_capacity", nil, 253},
			{"go_goroutines", nil, 1},
			{"process_open_fds", nil, 1},
		})
		if v, ok := after[`ztgate_flows_active{protocol="tcp",service="web",tenant="acme"}`]; !ok || v != 0 {
			t.Errorf("ztgate_flows_active{service=web} = %v (exported: %v) after every flow ended", v, ok)
		}
		boundedLabels(t, "gateway", after, "198.51.100.10", "198.51.100.20")
		documented(t, "gateway", after)
	})

	t.Run("status", func(t *testing.T) {
		out := l.exec(l.router, l.ztgate, "status")
		for _, want := range []string{"web", "10.100.0.10", "tcp/80→8080", "acme", "192.0.2.10 up (0)", "dead", "192.0.2.11", "added", "udp/7"} {
			if !strings.Contains(out, want) {
				t.Errorf("ztgate status lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("one JSON line per flow", func(t *testing.T) {
		var flows []map[string]any
		// Info lines close together are written together, within 100 ms.
		eventually(t, 3*time.Second, "the flow lines of the 3 requests to web", func() error {
			flows = flows[:0]
			for line := range strings.Lines(gw.out.String()) {
				var rec map[string]any
				if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "flow" && rec["service"] == "web" && rec["proto"] == "tcp" {
					flows = append(flows, rec)
				}
			}
			if len(flows) < 3 {
				return fmt.Errorf("%d flow lines", len(flows))
			}
			return nil
		})
		for _, k := range []string{"time", "level", "proto", "client", "vip", "tenant", "identity", "service", "backend", "bytes_up", "bytes_down", "duration", "reason"} {
			if _, ok := flows[0][k]; !ok {
				t.Errorf("the flow line lacks %q: %v", k, flows[0])
			}
		}
		if flows[0]["tenant"] != "acme" || flows[0]["backend"] != "192.0.2.10:8080" || flows[0]["bytes_down"].(float64) <= 0 {
			t.Errorf("flow line %v", flows[0])
		}
		if d, ok := flows[0]["duration"].(string); !ok {
			t.Errorf("the flow line's duration %v is not a string such as \"1.5s\"", flows[0]["duration"])
		} else if _, err := time.ParseDuration(d); err != nil {
			t.Errorf("the flow line's duration: %v", err)
		}
	})
}

// TestOpsRelayDeployment runs a relay, a gateway attached to it and an
// agent as their units do, sends traffic through them and checks the
// metrics of all three and `ztgate status` on all three,
// draining included.
func TestOpsRelayDeployment(t *testing.T) {
	needTools(t, "curl", "dig", "setpriv", "unshare")
	r := newRelayTopo(t, "a1", "nosan")
	r.startBackend("192.0.2.10")
	// The helpers write the configurations; the roles then run as their
	// units do.
	r.startRelay()
	r.relayProc.stop(6 * time.Second)
	r.gwConf = r.writeFile("gateway.toml", r.gatewayConfig())
	handOver(t, r.dir)
	r.relayProc = r.start(r.relay, "ztgate relay (unit)", asUnitUser(unitCaps(t, "ztgate-relay.service"),
		r.ztgate, "relay", "-config", r.relayConf, "-log-format", "text")...)
	r.relayProc.waitOutput(t, "relay started", 15*time.Second)
	r.gwProc = r.start(r.gw, "ztgate gateway (unit)", asUnitUser(unitCaps(t, "gateway-without-tun.conf"),
		r.ztgate, "gateway", "-config", r.gwConf, "-log-format", "text")...)
	r.gwProc.waitOutput(t, "gateway started", 15*time.Second)
	for _, p := range []*proc{r.relayProc, r.gwProc} {
		if got, err := capEff(p.cmd.Process.Pid); err != nil || got != "0000000000000000" {
			t.Fatalf("%s's effective capabilities are %s (%v), want none", p.name, got, err)
		}
	}
	r.startAgent("a1", "acme")
	r.agentProcs["a1"].stop(6 * time.Second)
	agentConf := filepath.Join(r.dir, "a1.toml")
	appendFile(t, agentConf, "\n[api]\nlisten = \"127.0.0.1:7782\"\n")
	handOver(t, r.dir)
	a1 := r.start(r.agents["a1"], "ztgate agent a1 (unit)", asUnitUser(unitCaps(t, "ztgate-agent.service"),
		r.ztgate, "agent", "-config", agentConf, "-log-format", "text")...)
	a1.waitOutput(t, "agent started", 15*time.Second)
	if got, err := capEff(a1.cmd.Process.Pid); err != nil || got != capsNetAdmin {
		t.Fatalf("the agent's effective capabilities are %s (%v), want CAP_NET_ADMIN (%s)", got, err, capsNetAdmin)
	}
	vip := r.waitVIP(t, "a1")

	const (
		gwMetrics    = "http://127.0.0.1:7780/metrics"
		relayMetrics = "http://127.0.0.1:7781/metrics"
		agentMetrics = "http://127.0.0.1:7782/metrics"
	)
	scrapeAll := func() (gw, relay, agent map[string]float64) {
		t.Helper()
		var err error
		if gw, err = r.scrape(r.gw, gwMetrics); err != nil {
			t.Fatal(err)
		}
		if relay, err = r.scrape(r.relay, relayMetrics); err != nil {
			t.Fatal(err)
		}
		if agent, err = r.scrape(r.agents["a1"], agentMetrics); err != nil {
			t.Fatal(err)
		}
		return gw, relay, agent
	}
	gw0, relay0, agent0 := scrapeAll()
	for i := range 3 {
		if out, err := r.curl(r.agents["a1"], "--max-time", "5", fmt.Sprintf("http://%s/ops%d", vip, i)); err != nil || !strings.Contains(out, "/ops") {
			t.Fatalf("curl: %v %q", err, out)
		}
	}
	if out, err := r.try(r.agents["a1"], 10*time.Second, "sh", "-c", "echo ops-udp | socat -t 2 - UDP:"+vip+":7"); err != nil {
		t.Logf("udp echo (no backend on udp/7 in this topology is fine): %v %q", err, out)
	}
	r.resolve("a1", "web.ztna.internal")
	r.startAgent("nosan", "sanless") // refused at the relay's handshake
	eventually(t, 10*time.Second, "the relay counts the SAN-less agent's refusal", func() error {
		m, err := r.scrape(r.relay, relayMetrics)
		if err != nil {
			return err
		}
		if sumMetric(m, "ztgate_tunnel_handshakes_total", `side="server"`, `result="refused"`, `reason="no_identity"`) < 1 {
			return fmt.Errorf("not counted")
		}
		return nil
	})
	gw1, relay1, agent1 := scrapeAll()

	t.Run("gateway metrics moved", func(t *testing.T) {
		moved(t, gw0, gw1, []movedBy{
			{"ztgate_flows_total", []string{`service="web"`, `tenant="acme"`, `protocol="tcp"`}, 3},
			{"ztgate_bytes_total", []string{`service="web"`, `direction="down"`}, 3 * 100},
			{"ztgate_health_checks_total", []string{`service="web"`, `result="ok"`}, 1},
			{"ztgate_tunnel_datagrams_total", []string{`direction="in"`}, 3 * 3},
		})
		holds(t, gw1, []movedBy{{"ztgate_tunnel_sessions", []string{`side="client"`}, 1}})
		boundedLabels(t, "gateway", gw1, "100.64.0.1")
		documented(t, "gateway", gw1)
	})
	t.Run("relay metrics moved", func(t *testing.T) {
		moved(t, relay0, relay1, []movedBy{
			{"ztgate_relay_datagrams_total", []string{`direction="agent_to_gateway"`, `result="forwarded"`}, 3 * 3},
			{"ztgate_relay_datagrams_total", []string{`direction="gateway_to_agent"`, `result="forwarded"`}, 3 * 3},
			{"ztgate_tunnel_handshakes_total", []string{`side="server"`, `result="refused"`, `reason="no_identity"`}, 1},
		})
		holds(t, relay1, []movedBy{
			{"ztgate_relay_sessions", []string{`role="agent"`}, 1},
			{"ztgate_relay_sessions", []string{`role="gateway"`}, 1},
			{"ztgate_relay_registrations_total", []string{`role="gateway"`, `result="ok"`}, 1},
			{"ztgate_relay_services", nil, 1},
			{"ztgate_vip_pool_used", nil, 1},
			{"go_goroutines", nil, 1},
		})
		if _, ok := relay1[`ztgate_relay_refusals_total{reason="wrong_role"}`]; !ok {
			t.Error("ztgate_relay_refusals_total{reason=wrong_role} is not exported")
		}
		boundedLabels(t, "relay", relay1, "100.64.0.1", "203.0.113.2", "203.0.113.14")
		documented(t, "relay", relay1)
	})
	t.Run("agent metrics moved", func(t *testing.T) {
		moved(t, agent0, agent1, []movedBy{
			{"ztgate_agent_packets_total", []string{`direction="up"`}, 3 * 3},
			{"ztgate_agent_packets_total", []string{`direction="down"`}, 3 * 3},
			{"ztgate_dns_queries_total", []string{`listener="agent"`, `rcode="NOERROR"`}, 1},
		})
		holds(t, agent1, []movedBy{{"ztgate_agent_connected", nil, 1}, {"go_goroutines", nil, 1}})
		boundedLabels(t, "agent", agent1, "100.64.0.1")
		documented(t, "agent", agent1)
	})

	t.Run("status of the agent", func(t *testing.T) {
		out := r.exec(r.agents["a1"], r.ztgate, "status", "-api", "http://127.0.0.1:7782")
		for _, want := range []string{"agent ", "acme/agent/", "connected to ", "SERVICE", "PATH", "web", vip, "tcp/80", "relay"} {
			if !strings.Contains(out, want) {
				t.Errorf("agent status lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("status of the gateway and the relay", func(t *testing.T) {
		out := r.exec(r.gw, r.ztgate, "status")
		for _, want := range []string{"web", vip, "tcp/80→8080", "udp/7", "acme", "up", "192.0.2.10 up"} {
			if !strings.Contains(out, want) {
				t.Errorf("gateway status lacks %q:\n%s", want, out)
			}
		}
		relayStatus := func() string { return r.exec(r.relay, r.ztgate, "status", "-api", "http://127.0.0.1:7781") }
		out = relayStatus()
		for _, want := range []string{"connected: 1 gateway (", "GATEWAYS", "web", vip, "acme", "gw1 healthy"} {
			if !strings.Contains(out, want) {
				t.Errorf("relay status lacks %q:\n%s", want, out)
			}
		}
		r.exec(r.relay, "curl", "-sS", "-X", "POST", "http://127.0.0.1:7781/v1/gateways/gw1/drain")
		if out = relayStatus(); !strings.Contains(out, "gw1 draining") {
			t.Errorf("relay status after the drain:\n%s", out)
		}
		r.exec(r.relay, "curl", "-sS", "-X", "POST", "http://127.0.0.1:7781/v1/gateways/gw1/undrain")
		out, err := r.try(r.relay, 10*time.Second, r.ztgate, "status", "-api", "http://127.0.0.1:7799")
		if err == nil || !strings.Contains(out, "nothing answers at http://127.0.0.1:7799") {
			t.Errorf("status against nothing: %v\n%s", err, out)
		}
	})
}

func appendFile(t testing.TB, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// TestExamplesPassCheck makes the examples' PKI with `make pki` in a copy
// of examples/ and runs `ztgate check` on every example.
func TestExamplesPassCheck(t *testing.T) {
	ztgate, _ := binaries(t)
	dir := t.TempDir()
	examples, err := filepath.Glob(filepath.Join("..", "examples", "*.toml"))
	if err != nil || len(examples) < 4 {
		t.Fatalf("examples: %v %v", examples, err)
	}
	for _, e := range examples {
		b, err := os.ReadFile(e)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(e)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("make", "-C", "..", "--no-print-directory", "pki", "PKI_DIR="+filepath.Join(dir, "pki")).CombinedOutput()
	if err != nil {
		t.Fatalf("make pki: %v\n%s", err, out)
	}
	for _, e := range examples {
		t.Run(filepath.Base(e), func(t *testing.T) {
			out, err := exec.Command(ztgate, "check", "-config", filepath.Join(dir, filepath.Base(e))).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "valid") {
				t.Fatalf("ztgate check: %v\n%s", err, out)
			}
		})
	}
}

// TestSystemdUnits checks the units of dist/systemd with systemd-analyze
// verify (in a scratch root holding the binary they name) when it is
// installed, and the privileges each grants.
func TestSystemdUnits(t *testing.T) {
	units := []struct {
		file, caps string
		lines      []string
	}{
		{"ztgate-gateway.service", "+net_admin,+net_raw", []string{"StateDirectory=ztgate", "DeviceAllow=/dev/net/tun rw", "LogRateLimitIntervalSec=0"}},
		{"ztgate-relay.service", "", []string{"StateDirectory=ztgate-relay", "PrivateDevices=yes"}},
		{"ztgate-agent.service", "+net_admin", []string{"DeviceAllow=/dev/net/tun rw"}},
	}
	common := []string{"User=ztgate", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
		"Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "ConfigurationDirectory=ztgate"}
	for _, u := range units {
		t.Run(u.file, func(t *testing.T) {
			if got := unitCaps(t, u.file); got != u.caps {
				t.Errorf("AmbientCapabilities: %q, want %q", got, u.caps)
			}
			b, err := os.ReadFile(filepath.Join("..", "dist", "systemd", u.file))
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(string(b), "\n")
			for _, want := range append(slices.Clone(common), u.lines...) {
				if !slices.Contains(lines, want) {
					t.Errorf("no line %q", want)
				}
			}
		})
	}
	if unitCaps(t, "gateway-without-tun.conf") != "" {
		t.Error("the drop-in for a gateway without [tun] grants capabilities")
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: the units were checked line by line only")
	}
	root := t.TempDir()
	ztgate, _ := binaries(t)
	for _, d := range []string{"usr/local/bin", "bin", "etc/systemd/system/ztgate-gateway.service.d", "lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copies := [][2]string{{ztgate, "usr/local/bin/ztgate"}, {"/bin/kill", "bin/kill"},
		{"../dist/systemd/gateway-without-tun.conf", "etc/systemd/system/ztgate-gateway.service.d/without-tun.conf"}}
	for _, u := range units {
		copies = append(copies, [2]string{"../dist/systemd/" + u.file, "etc/systemd/system/" + u.file})
	}
	for _, c := range copies {
		if out, err := exec.Command("cp", c[0], filepath.Join(root, c[1])).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v %s", c[0], err, out)
		}
	}
	if out, err := exec.Command("cp", "-a", "/lib/systemd/system", filepath.Join(root, "lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy the system units: %v %s", err, out)
	}
	for _, u := range units {
		out, err := exec.Command(analyze, "verify", "--root="+root, u.file).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u.file, err, out)
		}
	}
}

// TestDemo runs `make demo`'s script and checks that it passes and leaves
// no namespace, file or process behind.
func TestDemo(t *testing.T) {
	requireRoot(t)
	needTools(t, "curl", "dig", "ping")
	ztgate, backend := binaries(t)
	cmd := exec.Command("../scripts/demo.sh", ztgate, backend)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		out, err = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Signal(os.Interrupt) // the script cleans up on SIGINT
		<-done
		t.Fatalf("the demo ran longer than 2 minutes:\n%s", out)
	}
	if err != nil {
		t.Fatalf("the demo failed: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"1. Names", "2. HTTP", "3. ping", "4. Tenants", "5. Status", "6. A backend fails",
		"7. Both backends fail", "8. backend1 comes back", "9. Live reload", "10. Metrics", "Done in", "Cleaning up"} {
		if !strings.Contains(text, want) {
			t.Errorf("the demo did not show %q", want)
		}
	}
	if n := strings.Count(text, "✓ "); n < 9 {
		t.Errorf("%d steps confirmed, want at least 9:\n%s", n, text)
	}
	m := regexp.MustCompile(`namespaces (ztd\d+)-\*, files in (\S+)\)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("the demo did not name its namespaces:\n%s", text)
	}
	prefix, work := m[1], m[2]
	if nss, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(nss), prefix+"-") {
		t.Errorf("namespaces left behind:\n%s", nss)
	}
	for _, p := range []string{work, "/etc/netns/" + prefix + "-alice", "/etc/netns/" + prefix + "-bob"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	if ps, _ := exec.Command("pgrep", "-f", work).Output(); len(ps) > 0 {
		t.Errorf("processes left behind: %s", ps)
	}
}

// TestGettingStarted runs what docs/getting-started.md says: its
// `ztgate pki` commands, then `ztgate check` on each of its TOML blocks
// (each starts with a comment naming its file), with /etc/ztgate/ moved
// to a scratch directory.
func TestGettingStarted(t *testing.T) {
	ztgate, _ := binaries(t)
	doc, err := os.ReadFile(filepath.Join("..", "docs", "getting-started.md"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	local := func(s string) string { return strings.ReplaceAll(s, "/etc/ztgate/", dir+"/") }
	blocks := regexp.MustCompile("(?s)```(sh|toml)\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	var pki, tomls int
	for _, b := range blocks {
		if b[1] != "sh" {
			continue
		}
		for line := range strings.Lines(b[2]) {
			if !strings.HasPrefix(line, "ztgate pki ") {
				continue
			}
			pki++
			args := strings.Fields(local(line))[1:]
			if out, err := exec.Command(ztgate, args...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", line, err, out)
			}
		}
	}
	for i, b := range blocks {
		if b[1] != "toml" {
			continue
		}
		tomls++
		first, _, _ := strings.Cut(b[2], "\n")
		name, ok := strings.CutPrefix(first, "# /etc/ztgate/")
		if !ok {
			t.Errorf("a TOML block does not start with the file it is: %q", first)
			continue
		}
		name, _, _ = strings.Cut(name, " ")
		path := filepath.Join(dir, fmt.Sprintf("%d-%s", i, name))
		if err := os.WriteFile(path, []byte(local(b[2])), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(ztgate, "check", "-config", path).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", first, err, out)
		}
	}
	if pki < 4 || tomls < 4 {
		t.Fatalf("found %d pki commands and %d TOML blocks in docs/getting-started.md", pki, tomls)
	}
}
