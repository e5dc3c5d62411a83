package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const reloadBase = `
[gateway]
state_dir = "STATE_DIR"
drain_timeout = "2s"
[api]
listen = "127.0.0.1:7780"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
[[service]]
name = "echo"
tenants = ["acme"]
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "tcp"
  port = 7
`

const reloadAdded = `
[[service]]
name = "web"
tenants = ["acme"]
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = 8080
`

// TestReloadAsAUser: a long-lived flow keeps echoing while the operator
// appends a service to the file (dig finds it within 3 s, curl reaches it),
// breaks the file (old services keep working, the error is in the log),
// sends SIGHUP, and adds and removes a service with curl against the API.
func TestReloadAsAUser(t *testing.T) {
	needTools(t, "curl", "dig")
	l := newLANTopo(t)
	l.startBackend("192.0.2.10")
	gw := l.startGateway(reloadBase)
	path := filepath.Join(l.dir, "gateway.toml")
	write := func(s string) {
		t.Helper()
		s = strings.ReplaceAll(s, "STATE_DIR", filepath.Join(l.dir, "state"))
		// Editors write a temporary file and rename it over the old one.
		tmp := path + ".swp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	echoVIP := strings.TrimSpace(l.dig(l.acme, "@10.100.0.1", "+short", "echo.ztna.internal"))
	flow := l.start(l.acme, "long-lived flow", l.backendBin, "-hold", echoVIP+":7")
	flow.waitOutput(t, "ok 0", 5*time.Second)

	t.Run("append a service", func(t *testing.T) {
		write(reloadBase + reloadAdded)
		start := time.Now()
		var vip string
		eventually(t, 3*time.Second, "dig web.ztna.internal", func() error {
			vip = strings.TrimSpace(l.dig(l.acme, "@10.100.0.1", "+short", "web.ztna.internal"))
			if vip == "" {
				return os.ErrNotExist
			}
			return nil
		})
		t.Logf("new service resolvable after %v", time.Since(start).Round(time.Millisecond))
		if out, err := l.curl(l.acme, "http://"+vip+"/new"); err != nil || !strings.Contains(out, "/new") {
			t.Fatalf("curl new service: %v %q", err, out)
		}
	})

	t.Run("broken file keeps the old services", func(t *testing.T) {
		write(reloadBase + reloadAdded + "\n[[service]]\nname = \"broken\"\nbogus_key = 1\n")
		eventually(t, 3*time.Second, "error in the log", func() error {
			if !strings.Contains(gw.out.String(), "bogus_key") {
				return os.ErrNotExist
			}
			return nil
		})
		if out, err := l.curl(l.acme, "http://web.ztna.internal/", "--resolve", "web.ztna.internal:80:"+strings.TrimSpace(l.dig(l.acme, "@10.100.0.1", "+short", "web.ztna.internal"))); err != nil || !strings.Contains(out, "/") {
			t.Fatalf("old service after a broken edit: %v %q", err, out)
		}
	})

	t.Run("SIGHUP reloads", func(t *testing.T) {
		// Fix the file without the watcher noticing a difference in time:
		// SIGHUP must apply it on its own.
		write(reloadBase + reloadAdded)
		gw.cmd.Process.Signal(syscall.SIGHUP)
		eventually(t, 3*time.Second, "reload logged", func() error {
			if strings.Count(gw.out.String(), "msg=reloaded") < 2 {
				return os.ErrNotExist
			}
			return nil
		})
	})

	t.Run("API add and delete with curl", func(t *testing.T) {
		body := `{"name": "api1", "tenants": ["acme"], "backends": ["192.0.2.10"], "port": [{"protocol": "tcp", "port": 80, "target": 8080}]}`
		out, err := l.curl(l.router, "-X", "POST", "-d", body, "-w", "\n%{http_code}", "http://127.0.0.1:7780/v1/services")
		if err != nil || !strings.HasSuffix(strings.TrimSpace(out), "201") {
			t.Fatalf("POST: %v %s", err, out)
		}
		vip := strings.TrimSpace(l.dig(l.acme, "@10.100.0.1", "+short", "api1.ztna.internal"))
		if out, err := l.curl(l.acme, "http://"+vip+"/api"); err != nil || !strings.Contains(out, "/api") {
			t.Fatalf("curl api service: %v %q", err, out)
		}
		out, err = l.curl(l.router, "-X", "DELETE", "-w", "%{http_code}", "http://127.0.0.1:7780/v1/services/api1")
		if err != nil || strings.TrimSpace(out) != "204" {
			t.Fatalf("DELETE: %v %s", err, out)
		}
		if got := strings.TrimSpace(l.dig(l.acme, "@10.100.0.1", "+short", "api1.ztna.internal")); got != "" {
			t.Fatalf("deleted service still resolves to %s", got)
		}
	})

	t.Run("the long-lived flow never noticed", func(t *testing.T) {
		select {
		case <-flow.done:
			t.Fatalf("long-lived flow ended:\n%s", flow.out.String())
		default:
		}
		if _, err := flow.stop(3 * time.Second); err != nil {
			t.Fatalf("long-lived flow: %v", err)
		}
		out := flow.out.String()
		var rounds int
		if strings.Contains(out, "FAIL") || !strings.Contains(out, "done ") {
			t.Fatalf("long-lived flow broke:\n%s", out)
		}
		fmt.Sscanf(out[strings.Index(out, "done "):], "done %d", &rounds)
		if rounds < 5 {
			t.Fatalf("long-lived flow made %d round trips:\n%s", rounds, out)
		}
	})
}
