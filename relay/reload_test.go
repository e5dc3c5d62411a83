package relay

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
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

	cases := []struct {
		name     string
		text     string
		fails    bool
		logged   []string // in the log of this reload
		unlogged string
	}{
		{"unchanged", file("", ""), false, []string{"reloaded"}, warning},
		{"listen, pool, forward_ports, a pin", file(`listen = "127.0.0.1:4999"`, `pool = "10.8.0.0/24"
forward_ports = "5000-5001"
[[pin]]
service = "web"
vip = "10.8.0.10"`), false,
			[]string{`level=WARN msg="configuration changed; restart to apply: relay.listen, relay.pool, pin, relay.forward_ports"`}, ""},
		{"an unknown key", file("", `lisen = "127.0.0.1:4999"`), true,
			[]string{"reload: keeping the running configuration", "relay.lisen: unknown key"}, "reloaded"},
		{"a syntax error", file(`listen = `, ""), true, []string{"reload: keeping the running configuration", "relay.toml:"}, "reloaded"},
		{"missing", "", true, []string{"reload: keeping the running configuration", "no such file"}, "reloaded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.text == "" {
				os.Remove(path)
			} else {
				write(tc.text)
			}
			ok, bad := reloads("ok"), reloads("error")
			before := len(logs.String())
			err := r.Reload()
			out := logs.String()[before:]
			if (err != nil) != tc.fails {
				t.Fatalf("Reload: %v, want failure %v\n%s", err, tc.fails, out)
			}
			for _, s := range tc.logged {
				if !strings.Contains(out, s) {
					t.Errorf("log without %q:\n%s", s, out)
				}
			}
			if tc.unlogged != "" && strings.Contains(out, tc.unlogged) {
				t.Errorf("log with %q:\n%s", tc.unlogged, out)
			}
			if n := strings.Count(out, "level=WARN"); n > 1 {
				t.Errorf("%d warnings, want one at most:\n%s", n, out)
			}
			wantOK, wantBad := ok+1, bad
			if tc.fails {
				wantOK, wantBad = ok, bad+1
			}
			if reloads("ok") != wantOK || reloads("error") != wantBad {
				t.Errorf("reloads ok %v error %v, want %v and %v", reloads("ok"), reloads("error"), wantOK, wantBad)
			}
			if r.cfg != cfg || r.Addr() == nil {
				t.Fatal("the running configuration changed")
			}
		})
	}
}
