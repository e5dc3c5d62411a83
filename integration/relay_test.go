package integration

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// relayTopo is the remote-access deployment: a relay, a gateway attached
// to it with a backend network, and agents, each in its own namespace,
// joined to the relay by veth pairs on 203.0.113.0/24:
//
//	agent a1 (acme)   .2 ─ .1 ┐
//	agent a2 (acme)   .6 ─ .5 ├─ relay ─ .13 ─ .14 gateway ─ 192.0.2.1 ─ 192.0.2.10 backend
//	agent g1 (globex) .10 ─ .9 ┘
//
// Every agent's TUN has the inner address 100.64.0.1.
type relayTopo struct {
	*lanTopo
	relay, gw         string
	agents            map[string]string // name → namespace
	agentAddr         map[string]string // name → the relay's address on its link
	agentServer       map[string]string // name → the address the agent dials, when not agentAddr:4433
	pki, otherPKI     string
	relayProc, gwProc *proc
	agentProcs        map[string]*proc
	relayConf, gwConf string
	relayExtra        string // lines for the [relay] section of the default relay configuration
	relayListen       string // relay.listen of the default relay configuration; "" is 0.0.0.0:4433
}

func newRelayTopo(t *testing.T, agents ...string) *relayTopo {
	dir := t.TempDir() // first, so that it is removed after the topology's processes are stopped
	tp := newTopo(t)
	r := &relayTopo{lanTopo: &lanTopo{topo: tp, dir: dir}, agents: map[string]string{}, agentAddr: map[string]string{}, agentServer: map[string]string{}, agentProcs: map[string]*proc{}}
	r.ztgate, r.backendBin = binaries(t)
	r.relay = tp.ns("rly")
	r.gw = tp.ns("gw")
	r.backends = tp.ns("be")
	for i, a := range agents {
		ns := tp.ns(a)
		r.agents[a] = ns
		block := i // the /30s of 203.0.113.0/24, skipping 203.0.113.12/30: the gateway's link
		if block >= 3 {
			block++
		}
		relayIP := fmt.Sprintf("203.0.113.%d", 4*block+1)
		tp.link(r.relay, relayIP+"/30", ns, fmt.Sprintf("203.0.113.%d/30", 4*block+2))
		r.agentAddr[a] = relayIP
	}
	tp.link(r.relay, "203.0.113.13/30", r.gw, "203.0.113.14/30")
	tp.link(r.gw, "192.0.2.1/24", r.backends, "192.0.2.10/24")
	r.router = r.gw // lanTopo helpers that run in "the router" use the gateway
	r.pki = filepath.Join(r.dir, "pki")
	r.otherPKI = filepath.Join(r.dir, "other-pki")
	r.ztg("pki", "init", "-dir", r.pki)
	r.ztg("pki", "init", "-dir", r.otherPKI, "-name", "some other CA")
	r.ztg("pki", "issue", "-dir", r.pki, "-role", "relay", "-tenant", "infra", "-name", "relay1",
		"-dns", "relay.test", "-ip", "203.0.113.1,203.0.113.5,203.0.113.9,203.0.113.13")
	r.ztg("pki", "issue", "-dir", r.pki, "-role", "gateway", "-tenant", "infra", "-name", "gw1")
	return r
}

// ztg runs the ztgate binary in the root namespace (no network use).
func (r *relayTopo) ztg(args ...string) string {
	r.t.Helper()
	out, err := runLocal(r.ztgate, args...)
	if err != nil {
		r.t.Fatalf("ztgate %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (r *relayTopo) writeFile(name, content string) string {
	path := filepath.Join(r.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		r.t.Fatal(err)
	}
	return path
}

func (r *relayTopo) startRelay() {
	r.t.Helper()
	if r.relayConf == "" {
		r.relayConf = r.writeFile("relay.toml", fmt.Sprintf(`
[relay]
name = "relay1"
listen = %q
state_dir = "%s/relay-state"
cert = "%s/relay1.crt"
key = "%s/relay1.key"
ca = "%s/ca.crt"
%s
[api]
listen = "127.0.0.1:7781"
`, cmp.Or(r.relayListen, "0.0.0.0:4433"), r.dir, r.pki, r.pki, r.pki, r.relayExtra))
	}
	r.relayProc = r.start(r.relay, "ztgate relay", profiled(r.ztgate, "relay", "-config", r.relayConf, "-log-format", "text")...)
	r.relayProc.waitOutput(r.t, "relay started", 15*time.Second)
}

func (r *relayTopo) startGateway() {
	r.t.Helper()
	if r.gwConf == "" {
		r.gwConf = r.writeFile("gateway.toml", r.gatewayConfig())
	}
	r.gwProc = r.start(r.gw, "ztgate gateway", profiled(r.ztgate, "gateway", "-config", r.gwConf, "-log-format", "text")...)
	r.gwProc.waitOutput(r.t, "gateway started", 15*time.Second)
}

// gatewayConfig is the gateway's default configuration: attached to the
// relay, publishing web (tcp 80 → 8080, udp 7) to acme.
func (r *relayTopo) gatewayConfig() string {
	return fmt.Sprintf(`
[gateway]
name = "gw1"
state_dir = "%s/gw-state"
[tunnel]
relay = "203.0.113.13:4433"
server_name = "relay.test"
cert = "%s/gw1.crt"
key = "%s/gw1.key"
ca = "%s/ca.crt"
[api]
listen = "127.0.0.1:7780"
[[service]]
name = "web"
tenants = ["acme"]
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = 8080
  [[service.port]]
  protocol = "udp"
  port = 7
  [service.health]
  type = "http"
  port = 8080
  path = "/healthz"
  interval = "500ms"
`, r.dir, r.pki, r.pki, r.pki)
}

// startAgent issues the agent's certificate (tenant, or a special kind:
// "sanless", "otherca") and runs it.
func (r *relayTopo) startAgent(name, tenant string) *proc {
	r.t.Helper()
	cert, key, ca := filepath.Join(r.pki, name+".crt"), filepath.Join(r.pki, name+".key"), filepath.Join(r.pki, "ca.crt")
	switch tenant {
	case "sanless":
		issueSANLess(r.t, r.pki, name)
	case "otherca":
		r.ztg("pki", "issue", "-dir", r.otherPKI, "-role", "agent", "-tenant", "acme", "-name", name, "-out", filepath.Join(r.pki, name))
	default:
		r.ztg("pki", "issue", "-dir", r.pki, "-role", "agent", "-tenant", tenant, "-name", name)
	}
	server := r.agentServer[name]
	if server == "" {
		server = r.agentAddr[name] + ":4433"
	}
	conf := r.writeFile(name+".toml", fmt.Sprintf(`
[agent]
name = %q
[tunnel]
server = %q
server_name = "relay.test"
cert = %q
key = %q
ca = %q
[tun]
name = "ztagent0"
address = "100.64.0.1"
`, name, server, cert, key, ca))
	p := r.start(r.agents[name], "ztgate agent "+name, profiled(r.ztgate, "agent", "-config", conf, "-log-format", "text")...)
	p.waitOutput(r.t, "agent started", 15*time.Second)
	r.agentProcs[name] = p
	return p
}

// issueSANLess makes a certificate of our CA without any ztgate identity.
func issueSANLess(t testing.TB, dir, name string) {
	ca, err := tunnel.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := ca.Issue(tunnel.IssueRequest{Name: name, NoIdentity: true})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, name+".crt"), crt, 0o644)
	os.WriteFile(filepath.Join(dir, name+".key"), key, 0o600)
}

// resolve asks the agent's own DNS at 10.100.0.1 (through its TUN).
func (r *relayTopo) resolve(agent, name string) string {
	out, _ := r.try(r.agents[agent], 10*time.Second, "dig", "+short", "+time=2", "+tries=1", "@10.100.0.1", name)
	return strings.TrimSpace(out)
}

// waitResolve waits up to 15 s for the agent's DNS to answer name and
// returns the answer.
func (r *relayTopo) waitResolve(t *testing.T, agent, name string) string {
	t.Helper()
	var vip string
	eventually(t, 15*time.Second, name+" resolves", func() error {
		if vip = r.resolve(agent, name); vip == "" {
			return fmt.Errorf("no answer")
		}
		return nil
	})
	return vip
}

// TestRelayAgents is issue 7 tried as a new user would.
func TestRelayAgents(t *testing.T) {
	needTools(t, "curl", "dig")
	r := newRelayTopo(t, "a1", "a2", "g1", "nosan", "other")
	r.startBackend("192.0.2.10")
	r.startRelay()
	r.startGateway()
	for _, a := range [][2]string{{"a1", "acme"}, {"a2", "acme"}, {"g1", "globex"}, {"nosan", "sanless"}, {"other", "otherca"}} {
		r.startAgent(a[0], a[1])
	}

	var vip string
	t.Run("dig and curl from an agent", func(t *testing.T) {
		eventually(t, 15*time.Second, "web.ztna.internal resolves at agent a1", func() error {
			if vip = r.resolve("a1", "web.ztna.internal"); vip == "" {
				return fmt.Errorf("no answer")
			}
			return nil
		})
		eventually(t, 10*time.Second, "curl through relay and gateway", func() error {
			out, err := r.curl(r.agents["a1"], "--max-time", "3", "http://"+vip+"/hello")
			if err != nil || !strings.Contains(out, "/hello") {
				return fmt.Errorf("%v %q", err, out)
			}
			return nil
		})
	})

	t.Run("16 MiB upload from an agent intact", func(t *testing.T) { r.uploadBig(t, r.agents["a1"], "http://"+vip) })

	t.Run("an agent runs on one core by default", func(t *testing.T) {
		if out := r.agentProcs["a1"].out.String(); !strings.Contains(out, "agent started") || !strings.Contains(out, "procs=1") {
			t.Fatalf("agent a1 did not say procs=1 when it started:\n%s", out)
		}
	})

	t.Run("same inner address and port, each its own bytes", func(t *testing.T) {
		type res struct {
			got, want string
			err       error
		}
		var wg sync.WaitGroup
		results := map[string]*res{}
		for i, a := range []string{"a1", "a2"} {
			url := fmt.Sprintf("http://%s/blob?seed=%d&n=%d", vip, i+1, 3<<20+i*1000)
			rs := &res{}
			results[a] = rs
			want, err := r.curl(r.agents[a], url[:strings.Index(url, "?")]+".sha256"+url[strings.Index(url, "?"):])
			if err != nil {
				t.Fatalf("%s: checksum: %v", a, err)
			}
			rs.want = strings.TrimSpace(want)
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Both agents use 100.64.0.1:40123 at the same time.
				out, err := r.curl(r.agents[a], "--local-port", "40123", "--limit-rate", "2M", url)
				rs.got, rs.err = sha256Hex([]byte(out)), err
			}()
		}
		wg.Wait()
		for a, rs := range results {
			if rs.err != nil || rs.got != rs.want {
				t.Errorf("agent %s: %v: got %s, want %s", a, rs.err, rs.got, rs.want)
			}
		}
	})

	t.Run("another tenant can neither resolve nor connect", func(t *testing.T) {
		if got := r.resolve("g1", "web.ztna.internal"); got != "" {
			t.Fatalf("globex agent resolved web to %q", got)
		}
		start := time.Now()
		if _, err := r.curl(r.agents["g1"], "--max-time", "5", "http://"+vip+"/"); err == nil {
			t.Fatal("globex agent reached web")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("refusal took %v", d)
		}
	})

	t.Run("SAN-less and other-CA certificates get nothing", func(t *testing.T) {
		for _, a := range []string{"nosan", "other"} {
			if got := r.resolve(a, "web.ztna.internal"); got != "" {
				t.Errorf("agent %s resolved web to %q", a, got)
			}
			if _, err := r.curl(r.agents[a], "--max-time", "2", "http://"+vip+"/"); err == nil {
				t.Errorf("agent %s reached web", a)
			}
		}
		log := r.relayProc.out.String()
		for _, reason := range []string{"no_identity", "unknown_authority"} {
			if !strings.Contains(log, reason) {
				t.Errorf("relay log does not say %s:\n%s", reason, log)
			}
		}
	})

	recovers := func(t *testing.T, what string) {
		t.Helper()
		start := time.Now()
		eventually(t, 10*time.Second, "agents work again after "+what, func() error {
			for _, a := range []string{"a1", "a2"} {
				out, err := r.curl(r.agents[a], "--max-time", "2", "http://"+vip+"/after")
				if err != nil || !strings.Contains(out, "/after") {
					return fmt.Errorf("%s: %v %q", a, err, out)
				}
			}
			return nil
		})
		t.Logf("agents recovered %v after the %s", time.Since(start).Round(100*time.Millisecond), what)
		if got := r.resolve("a1", "web.ztna.internal"); got != vip {
			t.Fatalf("VIP changed from %s to %s", vip, got)
		}
	}
	t.Run("gateway restart", func(t *testing.T) {
		r.gwProc.stop(6 * time.Second)
		r.startGateway()
		recovers(t, "gateway restart")
	})
	t.Run("relay restart", func(t *testing.T) {
		r.relayProc.stop(6 * time.Second)
		r.startRelay()
		recovers(t, "relay restart")
	})
}
