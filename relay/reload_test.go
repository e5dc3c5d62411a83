package relay

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/reloadtest"
	"github.com/ztgate/ztgate/tunnel"
)

// TestReload: SIGHUP's reload reads the whole file. A broken file keeps
// the relay running as it was and logs every error; a valid one names, in
// one warning, every key that changed and waits for a restart; each is
// counted in ztgate_config_reloads_total.
func TestReload(t *testing.T) {
	p := newPKI(t)
	base := p.relayConfig(t.TempDir())
	path := filepath.Join(t.TempDir(), "relay.toml")
	file := func(listen, extra string) string {
		if listen == "" {
			listen = `listen = "127.0.0.1:0"`
		}
		return fmt.Sprintf(`
[relay]
name = "relay1"
state_dir = %q
cert = %q
key = %q
ca = %q
%s
%s
[api]
listen = "off"
`, base.StateDir, base.Cert, base.Key, base.CA, listen, extra)
	}
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(file("", ""))
	r, cfg, logs := startRelayFromFile(t, path)
	reloads := func(result string) float64 { return testutil.ToFloat64(r.m.reloads.WithLabelValues(result)) }
	const warning = "configuration changed; restart to apply"

	case_ := func(name, text string, fails bool, logged []string, unlogged string) reloadtest.Case {
		return reloadtest.Case{Name: name, Text: text, Fails: fails, Logged: logged, Unlogged: unlogged}
	}
	cases := []reloadtest.Case{
		case_("unchanged", file("", ""), false, []string{"reloaded"}, warning),
		case_("listen, pool, forward_ports, a pin", file(`listen = "127.0.0.1:4999"`, `pool = "10.8.0.0/24"
forward_ports = "5000-5001"
[[pin]]
service = "web"
vip = "10.8.0.10"`), false,
			[]string{`level=WARN msg="configuration changed; restart to apply: relay.listen, relay.pool, pin, relay.forward_ports"`}, ""),
		case_("an unknown key", file("", `lisen = "127.0.0.1:4999"`), true,
			[]string{"reload: keeping the running configuration", "relay.lisen: unknown key"}, "reloaded"),
		case_("a syntax error", file(`listen = `, ""), true, []string{"reload: keeping the running configuration", "relay.toml:"}, "reloaded"),
		case_("missing", "", true, []string{"reload: keeping the running configuration", "no such file"}, "reloaded"),
	}
	reloadtest.Run(t, path, cases, r.Reload, logs, reloads, func() bool { return r.cfg == cfg && r.Addr() != nil })
}

// TestReloadTLSFiles: a reload whose file names other cert, key and ca
// files switches the relay to them: no restart is asked for, the session
// opened before goes on, new handshakes present the new certificate and
// trust the new CA file. Files that fail the checks of the start (an
// agent's certificate) fail the reload and leave the files in use; paths
// that change with insecure_allow_unauthenticated wait for the restart
// with it.
func TestReloadTLSFiles(t *testing.T) {
	p := newPKI(t)
	base := p.relayConfig(t.TempDir())
	path := filepath.Join(t.TempDir(), "relay.toml")
	file := func(cert, key, ca, extra string) string { return relayFile(base.StateDir, cert, key, ca, extra, "") }
	if err := os.WriteFile(path, []byte(file(base.Cert, base.Key, base.CA, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	r, cfg, logs := startRelayFromFile(t, path)
	addr := r.Addr().String()
	old := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	next[tunnel.Directory](old)
	newcomer := p.creds(p.other, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "a2"})
	if _, err := dial(t, addr, newcomer, agentHello("a2")); err == nil {
		t.Fatal("an agent of the other CA was admitted before the reload")
	}

	moved := tunnel.Files{CA: p.write("bundle.crt", append(p.ca.CertPEM(), p.other.CertPEM()...))}
	moved.Cert, moved.Key = p.issue(p.ca, tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleRelay, Name: "relay1-moved",
		DNSNames: []string{serverName}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	agentCert, agentKey := p.issue(p.ca, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "a9"})
	reloads := func(result string) float64 { return testutil.ToFloat64(r.m.reloads.WithLabelValues(result)) }
	const warning = "configuration changed; restart to apply"
	run := func(c reloadtest.Case) {
		t.Helper()
		reloadtest.Run(t, path, []reloadtest.Case{c}, r.Reload, logs, reloads, func() bool { return r.cfg == cfg })
	}

	run(reloadtest.Case{Name: "an agent's certificate", Text: file(agentCert, agentKey, base.CA, ""), Fails: true,
		Logged: []string{"reload: keeping the running configuration", "relay.cert, relay.key: tunnel: load credentials", "not of a relay"}, Unlogged: "reloaded"})
	if got := r.creds.Files(); got != (tunnel.Files{Cert: base.Cert, Key: base.Key, CA: base.CA}) {
		t.Fatalf("a failed reload switched to %+v", got)
	}
	run(reloadtest.Case{Name: "insecure too", Text: file(moved.Cert, moved.Key, moved.CA, "insecure_allow_unauthenticated = true"),
		Logged: []string{`level=WARN msg="configuration changed; restart to apply: relay.cert, relay.key, relay.ca, relay.insecure_allow_unauthenticated"`}})
	if got := r.creds.Certificate().Subject.CommonName; got != "relay1" {
		t.Fatalf("with insecure_allow_unauthenticated changed too, the relay presents %q", got)
	}
	run(reloadtest.Case{Name: "other files", Text: file(moved.Cert, moved.Key, moved.CA, ""),
		Logged: []string{"tunnel credentials reloaded", "relay1-moved", "msg=reloaded component=relay restart_required=[]"}, Unlogged: warning})
	if got := r.creds.Files(); got != moved {
		t.Fatalf("files in use %+v, want %+v", got, moved)
	}
	a2 := mustDial(t, addr, newcomer, agentHello("a2"))
	if got := a2.s.Peer().Name; got != "relay1-moved" {
		t.Fatalf("the relay presented %q's certificate after the reload, want relay1-moved's", got)
	}
	next[tunnel.Directory](a2)
	select {
	case <-old.s.Done():
		t.Fatalf("the session opened before the reload ended: %v", old.s.Err())
	default:
	}
	// The same file again: nothing to switch, nothing to restart; SIGHUP's
	// ReloadCredentials re-reads the new files.
	run(reloadtest.Case{Name: "unchanged", Text: file(moved.Cert, moved.Key, moved.CA, ""), Logged: []string{"reloaded"}, Unlogged: warning})
	if err := r.ReloadCredentials(); err != nil || r.creds.Files() != moved {
		t.Fatalf("ReloadCredentials: %v, files %+v", err, r.creds.Files())
	}
}

// startRelayFromFile loads the relay configuration at path and starts a
// relay on it whose log the test reads; the test's end closes it.
func startRelayFromFile(t *testing.T, path string) (*Relay, *conf.Relay, *syncBuffer) {
	t.Helper()
	cfg, err := conf.LoadRelay(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	r, err := New(cfg, Options{}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, cfg, logs
}

// TestReloadRefusesPinsTheStartRefuses: a reload whose [[pin]] the next
// start would refuse (the VIP is allocated to another service in the VIP
// state: a pin moved from mail to web) fails, naming the pin, and nothing
// of the file applies, not even its new TLS files; a pin the start takes
// (mail moved to another VIP) is named for the restart, and the restart
// takes it. Before, the first reload said "restart to apply: pin" and the
// restart refused to start ("relay: pins: …").
func TestReloadRefusesPinsTheStartRefuses(t *testing.T) {
	p := newPKI(t)
	base := p.relayConfig(t.TempDir())
	path := filepath.Join(t.TempDir(), "relay.toml")
	file := func(cert, key, service, vip string) string {
		return relayFile(base.StateDir, cert, key, base.CA, "", fmt.Sprintf("[[pin]]\nservice = %q\nvip = %q\n", service, vip))
	}
	if err := os.WriteFile(path, []byte(file(base.Cert, base.Key, "mail", "10.100.0.7")), 0o600); err != nil {
		t.Fatal(err)
	}
	r, cfg, logs := startRelayFromFile(t, path)
	moved := tunnel.Files{CA: base.CA}
	moved.Cert, moved.Key = p.issue(p.ca, tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleRelay, Name: "relay1-moved",
		DNSNames: []string{serverName}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	reloads := func(result string) float64 { return testutil.ToFloat64(r.m.reloads.WithLabelValues(result)) }
	run := func(c reloadtest.Case) {
		t.Helper()
		reloadtest.Run(t, path, []reloadtest.Case{c}, r.Reload, logs, reloads, func() bool { return r.cfg == cfg })
	}
	stolen := file(moved.Cert, moved.Key, "web", "10.100.0.7")
	run(reloadtest.Case{Name: "a pin on another service's VIP", Text: stolen, Fails: true,
		Logged: []string{"reload: keeping the running configuration", "pin: the relay would not start with them",
			`pins 10.100.0.7, which is allocated to`}, Unlogged: "reloaded"})
	if got := r.creds.Files(); got != (tunnel.Files{Cert: base.Cert, Key: base.Key, CA: base.CA}) {
		t.Fatalf("a refused reload switched to %+v", got)
	}
	if a, ok := r.pool.Lookup("mail"); !ok || a.VIP != netip.MustParseAddr("10.100.0.7") {
		t.Fatalf("mail's pin after the refused reload: %+v %v", a, ok)
	}
	repinned := file(base.Cert, base.Key, "mail", "10.100.0.8")
	run(reloadtest.Case{Name: "the pin moved to another VIP", Text: repinned,
		Logged: []string{`level=WARN msg="configuration changed; restart to apply: pin"`}})

	// The start agrees with both reloads.
	r.Close()
	for _, tc := range []struct {
		text  string
		start bool
	}{{stolen, false}, {repinned, true}} {
		if err := os.WriteFile(path, []byte(tc.text), 0o600); err != nil {
			t.Fatal(err)
		}
		next, err := conf.LoadRelay(path)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := New(next, Options{}, nil)
		if (err == nil) != tc.start {
			t.Fatalf("New: %v, want it to start %v", err, tc.start)
		}
		if err == nil {
			r2.Close()
		}
	}
}

// TestReloadChecksFilesWaitingForInsecure: new TLS files that wait for the
// restart with a change of insecure_allow_unauthenticated are loaded and
// checked as the start will load them: an agent's certificate fails the
// reload, naming the keys, and the relay keeps its files. Before, the
// reload named them for the restart, which then refused to start ("not of
// a relay").
func TestReloadChecksFilesWaitingForInsecure(t *testing.T) {
	p := newPKI(t)
	base := p.relayConfig(t.TempDir())
	path := filepath.Join(t.TempDir(), "relay.toml")
	file := func(cert, key, extra string) string { return relayFile(base.StateDir, cert, key, base.CA, extra, "") }
	if err := os.WriteFile(path, []byte(file(base.Cert, base.Key, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	r, cfg, logs := startRelayFromFile(t, path)
	agentCert, agentKey := p.issue(p.ca, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "a9"})
	otherCert, otherKey := p.issue(p.ca, tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleRelay, Name: "relay1-next",
		DNSNames: []string{serverName}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	reloads := func(result string) float64 { return testutil.ToFloat64(r.m.reloads.WithLabelValues(result)) }
	run := func(c reloadtest.Case) {
		t.Helper()
		reloadtest.Run(t, path, []reloadtest.Case{c}, r.Reload, logs, reloads, func() bool { return r.cfg == cfg })
	}
	const insecure = "insecure_allow_unauthenticated = true"
	refused := file(agentCert, agentKey, insecure)
	run(reloadtest.Case{Name: "an agent's certificate", Text: refused, Fails: true,
		Logged:   []string{"reload: keeping the running configuration", "relay.cert, relay.key: tunnel: load credentials", "not of a relay"},
		Unlogged: "reloaded"})
	run(reloadtest.Case{Name: "a relay's certificate", Text: file(otherCert, otherKey, insecure),
		Logged: []string{`level=WARN msg="configuration changed; restart to apply: relay.cert, relay.key, relay.insecure_allow_unauthenticated"`}})
	if got := r.creds.Files(); got != (tunnel.Files{Cert: base.Cert, Key: base.Key, CA: base.CA}) {
		t.Fatalf("files in use %+v: those waiting for the restart were switched to", got)
	}

	// The start agrees with the first reload.
	r.Close()
	next, err := conf.ParseRelay("relay.toml", []byte(refused))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(next, Options{}, nil); err == nil || !strings.Contains(err.Error(), "not of a relay") {
		t.Fatalf("New with the refused file: %v", err)
	}
}

// relayFile is the configuration of a relay named relay1 on stateDir,
// listening on a free loopback port with cert, key and ca, its API off;
// relayExtra are lines added to its [relay] section, tail tables after it.
func relayFile(stateDir, cert, key, ca, relayExtra, tail string) string {
	return fmt.Sprintf(`
[relay]
name = "relay1"
state_dir = %q
listen = "127.0.0.1:0"
cert = %q
key = %q
ca = %q
%s
[api]
listen = "off"
%s`, stateDir, cert, key, ca, relayExtra, tail)
}

// TestReloadRefusesHeldStateDir: a reload that moves relay.state_dir (a
// restart-only key) to a directory whose lock another process holds fails,
// naming the key and the directory: the next start would refuse it. The
// same directory under another spelling (this relay's own lock), a free
// directory and one not there yet pass, named for the restart. Before,
// the reload passed and the restart failed on the lock.
func TestReloadRefusesHeldStateDir(t *testing.T) {
	p := newPKI(t)
	base := p.relayConfig(t.TempDir())
	path := filepath.Join(t.TempDir(), "relay.toml")
	file := func(stateDir string) string { return relayFile(stateDir, base.Cert, base.Key, base.CA, "", "") }
	if err := os.WriteFile(path, []byte(file(base.StateDir)), 0o600); err != nil {
		t.Fatal(err)
	}
	r, cfg, logs := startRelayFromFile(t, path)
	reloads := func(result string) float64 { return testutil.ToFloat64(r.m.reloads.WithLabelValues(result)) }
	run := func(c reloadtest.Case) {
		t.Helper()
		reloadtest.Run(t, path, []reloadtest.Case{c}, r.Reload, logs, reloads, func() bool { return r.cfg == cfg })
	}
	held := t.TempDir()
	lock, err := catalog.LockStateDir(held) // another process's, as flock sees it
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	const warning = `level=WARN msg="configuration changed; restart to apply: relay.state_dir"`
	run(reloadtest.Case{Name: "a held directory", Text: file(held), Fails: true,
		Logged:   []string{"reload: keeping the running configuration", "relay.state_dir: the relay would not start with it", "state directory in use: " + held},
		Unlogged: "reloaded"})
	link := filepath.Join(t.TempDir(), "state")
	if err := os.Symlink(base.StateDir, link); err != nil {
		t.Fatal(err)
	}
	run(reloadtest.Case{Name: "its own directory, spelt otherwise", Text: file(link), Logged: []string{warning}})
	run(reloadtest.Case{Name: "a free directory", Text: file(t.TempDir()), Logged: []string{warning}})
	run(reloadtest.Case{Name: "a directory not there yet", Text: file(filepath.Join(t.TempDir(), "new", "state")), Logged: []string{warning}})
}
