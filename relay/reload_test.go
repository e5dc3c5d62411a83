package relay

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/reloadtest"
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
	cfg, err := conf.LoadRelay(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	r, err := New(cfg, Options{}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
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
	reloadtest.Run(t, path, cases, r.Reload, &logs, reloads, func() bool { return r.cfg == cfg && r.Addr() != nil })
}
