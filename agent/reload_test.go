package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/testlog"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/reloadtest"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// logBuffer is a log destination written from the agent's goroutines.
type logBuffer = testlog.Buffer

// TestReload: SIGHUP's reload reads the whole file. A broken file keeps
// the agent running as it was and logs every error; a valid one names, in
// one warning, every key that changed and waits for a restart; each is
// counted in ztgate_config_reloads_total.
func TestReload(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(directoryOf(true)) })
	cert, key := p.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"})
	path := filepath.Join(t.TempDir(), "agent.toml")
	file := func(server, extra string) string { return agentFile(server, cert, key, p.caFile, "", extra) }
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(file(relay.addr(), ""))
	a, cfg, logs := startAgentFromFile(t, path)
	reloads := func(result string) float64 { return testutil.ToFloat64(a.m.reloads.WithLabelValues(result)) }
	const warning = "configuration changed; restart to apply"

	case_ := func(name, text string, fails bool, logged []string, unlogged string) reloadtest.Case {
		return reloadtest.Case{Name: name, Text: text, Fails: fails, Logged: logged, Unlogged: unlogged}
	}
	cases := []reloadtest.Case{
		case_("unchanged", file(relay.addr(), ""), false, []string{"reloaded"}, warning),
		case_("server, tun, dns", file("127.0.0.1:1", "mtu = 1400\n[dns]\nlisten = [\"127.0.0.1:5353\"]"), false,
			[]string{`level=WARN msg="configuration changed; restart to apply: tunnel.server, tun.mtu, dns.listen"`}, ""),
		case_("an invalid value", file(relay.addr(), `address = "10.100.0.5"`), true,
			[]string{"reload: keeping the running configuration", "tun.address: 10.100.0.5 is inside the VIP pool"}, "reloaded"),
		case_("a syntax error", file(relay.addr(), `mtu = `), true, []string{"reload: keeping the running configuration", "agent.toml:"}, "reloaded"),
		case_("missing", "", true, []string{"reload: keeping the running configuration", "no such file"}, "reloaded"),
	}
	reloadtest.Run(t, path, cases, a.Reload, logs, reloads, func() bool { return a.cfg == cfg })
}

// TestReloadTLSFiles: a reload whose file names other [tunnel] cert, key
// and ca files switches the agent to them: no restart is asked for, the
// session open goes on, and the next connection to the server presents
// the new certificate. Files that fail the checks of the start (a relay's
// certificate) fail the reload and leave the files in use.
func TestReloadTLSFiles(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(directoryOf(true)) })
	cert, key := p.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"})
	path := filepath.Join(t.TempDir(), "agent.toml")
	file := func(cert, key, ca string) string { return agentFile(relay.addr(), cert, key, ca, "", "") }
	if err := os.WriteFile(path, []byte(file(cert, key, p.caFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	a, cfg, logs := startAgentFromFile(t, path)
	first := relay.session()
	if got := first.Peer().Name; got != "laptop" {
		t.Fatalf("the agent presented %q", got)
	}

	var moved tunnel.Files
	moved.Cert, moved.Key = p.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop-moved"})
	moved.CA = p.write("ca-moved.crt", p.ca.CertPEM())
	relayCert, relayKey := p.issue(relayReq)
	reloads := func(result string) float64 { return testutil.ToFloat64(a.m.reloads.WithLabelValues(result)) }
	const warning = "configuration changed; restart to apply"
	run := func(c reloadtest.Case) {
		t.Helper()
		reloadtest.Run(t, path, []reloadtest.Case{c}, a.Reload, logs, reloads, func() bool { return a.cfg == cfg })
	}

	run(reloadtest.Case{Name: "a relay's certificate", Text: file(relayCert, relayKey, p.caFile), Fails: true,
		Logged: []string{"reload: keeping the running configuration", "tunnel.cert, tunnel.key: tunnel: load credentials", "not of an agent"}, Unlogged: "reloaded"})
	if got := a.creds.Files(); got != (tunnel.Files{Cert: cert, Key: key, CA: p.caFile}) {
		t.Fatalf("a failed reload switched to %+v", got)
	}
	run(reloadtest.Case{Name: "other files", Text: file(moved.Cert, moved.Key, moved.CA),
		Logged: []string{"tunnel credentials reloaded", "laptop-moved", "msg=reloaded component=agent restart_required=[]"}, Unlogged: warning})
	if got := a.creds.Files(); got != moved {
		t.Fatalf("files in use %+v, want %+v", got, moved)
	}
	// A certificate of another identity ends the session open at the
	// reload, and the agent redials at once presenting it.
	waitFor(t, "the end of the session dialed as laptop", func() bool {
		select {
		case <-first.Done():
			return true
		default:
			return false
		}
	})
	waitFor(t, "a new session", func() bool {
		relay.mu.Lock()
		defer relay.mu.Unlock()
		return relay.last != first
	})
	if got := relay.session().Peer().Name; got != "laptop-moved" {
		t.Fatalf("after the reload the agent presented %q, want laptop-moved", got)
	}
}

// startAgentFromFile loads the agent configuration at path and starts an
// agent on it whose log the test reads, once it has its directory; the
// test's end closes it.
func startAgentFromFile(t *testing.T, path string) (*Agent, *conf.Agent, *logBuffer) {
	t.Helper()
	cfg, err := conf.LoadAgent(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	a, _ := runAgent(t, cfg, slog.New(slog.NewTextHandler(logs, nil)))
	return a, cfg, logs
}

// TestReloadChecksFilesWaitingForInsecure: new [tunnel] files that wait for
// the restart with a change of insecure_allow_unauthenticated are loaded
// and checked as the start will load them: a relay's certificate fails the
// reload, naming the keys, and the agent keeps its files. Before, the
// reload named them for the restart, which then refused to start ("not of
// an agent").
func TestReloadChecksFilesWaitingForInsecure(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(directoryOf(true)) })
	cert, key := p.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"})
	path := filepath.Join(t.TempDir(), "agent.toml")
	file := func(cert, key, extra string) string { return agentFile(relay.addr(), cert, key, p.caFile, extra, "") }
	if err := os.WriteFile(path, []byte(file(cert, key, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	a, cfg, logs := startAgentFromFile(t, path)
	relayCert, relayKey := p.issue(relayReq)
	nextCert, nextKey := p.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop-next"})
	reloads := func(result string) float64 { return testutil.ToFloat64(a.m.reloads.WithLabelValues(result)) }
	run := func(c reloadtest.Case) {
		t.Helper()
		reloadtest.Run(t, path, []reloadtest.Case{c}, a.Reload, logs, reloads, func() bool { return a.cfg == cfg })
	}
	const insecure = "insecure_allow_unauthenticated = true"
	refused := file(relayCert, relayKey, insecure)
	run(reloadtest.Case{Name: "a relay's certificate", Text: refused, Fails: true,
		Logged:   []string{"reload: keeping the running configuration", "tunnel.cert, tunnel.key: tunnel: load credentials", "not of an agent"},
		Unlogged: "reloaded"})
	run(reloadtest.Case{Name: "an agent's certificate", Text: file(nextCert, nextKey, insecure),
		Logged: []string{`level=WARN msg="configuration changed; restart to apply: tunnel.cert, tunnel.key, tunnel.insecure_allow_unauthenticated"`}})
	if got := a.creds.Files(); got != (tunnel.Files{Cert: cert, Key: key, CA: p.caFile}) {
		t.Fatalf("files in use %+v: those waiting for the restart were switched to", got)
	}

	// The start agrees with the first reload.
	next, err := conf.ParseAgent("agent.toml", []byte(refused))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(next, Options{}, nil); err == nil || !strings.Contains(err.Error(), "not of an agent") {
		t.Fatalf("New with the refused file: %v", err)
	}
}

// TestReloadRefusesAddressInServersPool: a reload whose tun.address lies
// inside the VIP pool the server pushes (not the default pool the file is
// validated against) fails, naming the key: at the next start the agent
// would refuse that pool, and every service in it. Another address, or
// one that comes with another server (whose pool the agent does not
// know), waits for the restart. Before, the reload named tun.address for
// the restart, and the restarted agent refused its server's pool.
func TestReloadRefusesAddressInServersPool(t *testing.T) {
	p := newPKI(t)
	pool := netip.MustParsePrefix("10.8.0.0/24")
	dir := &tunnel.Directory{Type: tunnel.MessageDirectory, Zone: "ztna.internal.", TTL: 30, Pool: pool,
		Services: []tunnel.DirectoryService{{Name: "web", VIP: netip.MustParseAddr("10.8.0.10"),
			Ports: []tunnel.PortInfo{{Protocol: "tcp", Port: 80}}, Healthy: true}}}
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(dir) })
	cert, key := p.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"})
	path := filepath.Join(t.TempDir(), "agent.toml")
	file := func(server, address string) string {
		return agentFile(server, cert, key, p.caFile, "", fmt.Sprintf("address = %q", address))
	}
	if err := os.WriteFile(path, []byte(file(relay.addr(), innerAddr.String())), 0o600); err != nil {
		t.Fatal(err)
	}
	a, cfg, logs := startAgentFromFile(t, path)
	if got := a.dir.Load().pool; got != pool {
		t.Fatalf("the agent routes %s, want the server's %s", got, pool)
	}
	reloads := func(result string) float64 { return testutil.ToFloat64(a.m.reloads.WithLabelValues(result)) }
	run := func(c reloadtest.Case) {
		t.Helper()
		reloadtest.Run(t, path, []reloadtest.Case{c}, a.Reload, logs, reloads, func() bool { return a.cfg == cfg })
	}
	refused := file(relay.addr(), "10.8.0.5")
	run(reloadtest.Case{Name: "inside the server's pool", Text: refused, Fails: true,
		Logged:   []string{"reload: keeping the running configuration", "tun.address: 10.8.0.5 is inside the VIP pool 10.8.0.0/24"},
		Unlogged: "reloaded"})
	run(reloadtest.Case{Name: "outside it", Text: file(relay.addr(), "10.9.0.5"),
		Logged: []string{`level=WARN msg="configuration changed; restart to apply: tun.address"`}})
	run(reloadtest.Case{Name: "with another server", Text: file("127.0.0.1:1", "10.8.0.5"),
		Logged: []string{`level=WARN msg="configuration changed; restart to apply: tunnel.server, tun.address"`}})

	// The start agrees with the first reload: the agent refuses the pool.
	next, err := conf.ParseAgent("agent.toml", []byte(refused))
	if err != nil {
		t.Fatal(err)
	}
	dev, err := netstacktest.NewClient(1280, next.TUN.Address)
	if err != nil {
		t.Fatal(err)
	}
	logs2 := &logBuffer{}
	a2, err := New(next, Options{Device: dev}, slog.New(slog.NewTextHandler(logs2, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a2.Start(); err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	waitFor(t, "the pool refused", func() bool {
		return strings.Contains(logs2.String(), "refusing the server's VIP pool")
	})
}

// agentFile is the configuration of an agent named laptop that dials
// server (as relay.test) with cert, key and ca; tunnelExtra and tunExtra
// are lines added to its [tunnel] and [tun] sections.
func agentFile(server, cert, key, ca, tunnelExtra, tunExtra string) string {
	return fmt.Sprintf(`
[agent]
name = "laptop"
[tunnel]
server = %q
server_name = "relay.test"
cert = %q
key = %q
ca = %q
%s
[tun]
name = "test"
%s
`, server, cert, key, ca, tunnelExtra, tunExtra)
}

// TestReloadFilesWaitForServer: [tunnel] files that change together with
// tunnel.server wait for the restart with it, as with a change of
// insecure_allow_unauthenticated: the agent keeps dialling the server it
// runs with, and the new CA (of the new server) would be checked against
// that one. The reload names them for the restart, the files in use stay
// and the session open goes on; files the start would refuse fail the
// reload all the same. While the server waits, ReloadCredentials leaves
// the contents of the files in use alone too. Before, the reload switched
// to the new files at once: the session's recheck against the new CA
// ended it, and the redial to the old server was refused.
func TestReloadFilesWaitForServer(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(directoryOf(true)) })
	cert, key := p.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"})
	path := filepath.Join(t.TempDir(), "agent.toml")
	file := func(server, cert, key, ca string) string { return agentFile(server, cert, key, ca, "", "") }
	if err := os.WriteFile(path, []byte(file(relay.addr(), cert, key, p.caFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	a, cfg, logs := startAgentFromFile(t, path)
	first := relay.session()
	inUse := tunnel.Files{Cert: cert, Key: key, CA: p.caFile}
	reloads := func(result string) float64 { return testutil.ToFloat64(a.m.reloads.WithLabelValues(result)) }
	run := func(c reloadtest.Case) {
		t.Helper()
		reloadtest.Run(t, path, []reloadtest.Case{c}, a.Reload, logs, reloads, func() bool { return a.cfg == cfg })
	}
	const other = "127.0.0.1:1"

	// The new server's CA, and a certificate of it.
	q := newPKI(t)
	qCert, qKey := q.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop-q"})
	relayCert, relayKey := q.issue(relayReq)
	run(reloadtest.Case{Name: "a relay's certificate", Text: file(other, relayCert, relayKey, q.caFile), Fails: true,
		Logged:   []string{"reload: keeping the running configuration", "tunnel.cert, tunnel.key, tunnel.ca: tunnel: load credentials", "not of an agent"},
		Unlogged: "reloaded"})
	run(reloadtest.Case{Name: "the new server's files", Text: file(other, qCert, qKey, q.caFile),
		Logged: []string{`level=WARN msg="configuration changed; restart to apply: tunnel.server, tunnel.cert, tunnel.key, tunnel.ca"`}})
	if got := a.creds.Files(); got != inUse {
		t.Fatalf("files in use %+v: those waiting for the restart with tunnel.server were switched to", got)
	}
	select {
	case <-first.Done():
		t.Fatalf("the session to the running server ended: %v", first.Err())
	default:
	}

	// The same paths, new contents: they wait too while the server does.
	run(reloadtest.Case{Name: "the server alone", Text: file(other, cert, key, p.caFile),
		Logged: []string{`level=WARN msg="configuration changed; restart to apply: tunnel.server"`}})
	for from, to := range map[string]string{qCert: cert, qKey: key, q.caFile: p.caFile} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.ReloadCredentials(); err != nil {
		t.Fatal(err)
	}
	if got := a.creds.Certificate().Subject.CommonName; strings.Contains(got, "laptop-q") {
		t.Fatalf("ReloadCredentials took up the contents meant for the new server (certificate %q)", got)
	}
	if !strings.Contains(logs.String(), "tunnel credentials not re-read: tunnel.server or tunnel.server_name changed") {
		t.Fatalf("no warning that the files wait for the restart:\n%s", logs)
	}
	select {
	case <-first.Done():
		t.Fatalf("the session to the running server ended: %v", first.Err())
	default:
	}

	// The server put back: the contents are re-read again.
	run(reloadtest.Case{Name: "the server put back", Text: file(relay.addr(), cert, key, p.caFile), Logged: []string{"reloaded"}})
	if err := a.ReloadCredentials(); err != nil {
		t.Fatal(err)
	}
	if got := a.creds.Certificate().Subject.CommonName; !strings.Contains(got, "laptop-q") {
		t.Fatalf("after the server was put back ReloadCredentials kept certificate %q", got)
	}
	// Another server_name is another server too: the files wait with it.
	renamed := strings.Replace(file(relay.addr(), qCert, qKey, q.caFile), `server_name = "relay.test"`, `server_name = "relay2.test"`, 1)
	run(reloadtest.Case{Name: "the new server's files with another server_name", Text: renamed,
		Logged: []string{`level=WARN msg="configuration changed; restart to apply: tunnel.server_name, tunnel.cert, tunnel.key, tunnel.ca"`}})
	if got := a.creds.Files(); got != inUse {
		t.Fatalf("files in use %+v: those waiting for the restart with tunnel.server_name were switched to", got)
	}
}
