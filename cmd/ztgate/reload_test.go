package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestReload: `ztgate reload` prints what a reload changed, and tells an
// invalid configuration (400) from a gateway that failed (500).
func TestReload(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string
		args       []string
		code       int
		wantOut    []string
		wantErr    []string
		notWantErr string
	}{
		{name: "changes", status: 200,
			body: `{"added": ["wiki"], "removed": [], "changed": [{"name": "web", "fields": ["backends", "tenants"]}], "restart_required": ["tun.mtu", "dns.listen"]}`,
			code: 0, wantOut: []string{"reloaded\n", "added: wiki", "changed: web (backends, tenants)", "not applied until the next start: tun.mtu, dns.listen"}},
		{name: "new tunnel files", status: 200,
			body: `{"added": [], "removed": [], "changed": [], "tunnel_files": ["tunnel.cert", "tunnel.key"], "restart_required": []}`,
			code: 0, wantOut: []string{"reloaded\n", "tunnel credentials from new files: tunnel.cert, tunnel.key"}},
		{name: "no change", status: 200, body: `{"added": [], "removed": [], "changed": [], "restart_required": []}`,
			code: 0, wantOut: []string{"reloaded: nothing changed"}},
		{name: "invalid", status: 400, body: `{"errors": ["gw.toml: service[1].name: not set", "gw.toml: service[1].port: not set"]}`,
			code: 1, wantErr: []string{"the configuration is invalid", "Fix it", "  gw.toml: service[1].name: not set\n", "  gw.toml: service[1].port: not set\n"},
			notWantErr: "failed"},
		{name: "the gateway failed", status: 500, body: `{"errors": ["reload not applied: read the configuration: open /etc/ztgate/gateway.toml: permission denied"]}`,
			code: 1, wantErr: []string{"the gateway failed to reload (500 Internal Server Error), not because of what the configuration says", "  reload not applied: read the configuration: open /etc/ztgate/gateway.toml: permission denied\n"},
			notWantErr: "invalid"},
		{name: "no file", status: 409, body: `{"errors": ["reload not applied: the gateway was not started from a file"]}`,
			code: 1, wantErr: []string{"no configuration file to reload", "not started from a file"}},
		{name: "json", status: 400, body: `{"errors": ["x"]}`, args: []string{"-json"}, code: 1, wantOut: []string{`{"errors": ["x"]}`}},
		{name: "not a gateway", status: 404, body: "404 page not found", code: 1, wantErr: []string{"only a gateway reloads through its API"}},
		{name: "token missing", status: 401, body: `{"errors": ["missing or wrong bearer token"]}`, code: 1, wantErr: []string{"pass it with -token-file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != "POST" || r.URL.Path != "/v1/reload" {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(tc.status)
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"reload", "-api", srv.URL}, tc.args...), &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout.String(), stderr.String())
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
			if tc.notWantErr != "" && strings.Contains(stderr.String(), tc.notWantErr) {
				t.Errorf("stderr has %q:\n%s", tc.notWantErr, stderr.String())
			}
		})
	}
	t.Run("a slow reload is waited for", func(t *testing.T) {
		// New backends' names are looked up during the reload (up to 2 s
		// each): an answer after status's 5 s still counts.
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(300 * time.Millisecond)
			w.Write([]byte(`{"added": ["a"], "removed": [], "changed": [], "restart_required": []}`))
		}))
		defer srv.Close()
		var stdout, stderr bytes.Buffer
		if code := run([]string{"reload", "-api", srv.URL, "-timeout", "2s"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "added: a") {
			t.Fatalf("exit %d\nstdout %s\nstderr %s", code, stdout.String(), stderr.String())
		}
		if code := run([]string{"reload", "-api", srv.URL, "-timeout", "100ms"}, &stdout, &stderr); code != 1 ||
			!strings.Contains(stderr.String(), "may still have been done") || strings.Contains(stderr.String(), "nothing answers") {
			t.Fatalf("a timeout: exit %d, stderr %s", code, stderr.String())
		}
	})
	t.Run("nothing answers", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"reload", "-api", "http://" + closedPort(t)}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "nothing answers at") {
			t.Fatalf("exit %d, stderr %s", code, stderr.String())
		}
	})
}
