package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztgate/ztgate/conf"
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

// reloadHUP is a service only SIGHUP brings in (see "SIGHUP alone reloads").
const reloadHUP = `
[[service]]
name = "hup"
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
// sends SIGHUP after an edit the file watcher cannot see, and adds and
// removes a service with curl against the API.
func TestReloadAsAUser(t *testing.T) {
	needTools(t, "curl", "dig")
	l := newLANTopo(t)
	l.startBackend("192.0.2.10")
	gw := l.startGateway(reloadBase)
	path := filepath.Join(l.dir, "gateway.toml")
	writeFile := func(t *testing.T, file, s string) {
		t.Helper()
		s = strings.ReplaceAll(s, "STATE_DIR", filepath.Join(l.dir, "state"))
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		// Editors write a temporary file and rename it over the old one.
		tmp := file + ".swp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	write := func(s string) { t.Helper(); writeFile(t, path, s) }
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

	t.Run("a symlinked file is followed, and SIGHUP reloads", func(t *testing.T) {
		// gateway.toml becomes a symlink to a file in another directory
		// (as /etc/ztgate/gateway.toml -> /srv/cfg/gateway.toml): the
		// watcher follows the link to its target's directory, so an edit
		// there is applied without a signal; SIGHUP still reloads.
		hidden := filepath.Join(l.dir, "hidden", "gateway.toml")
		writeFile(t, hidden, reloadBase+reloadAdded)
		reloads := func() int { return strings.Count(gw.out.String(), "msg=reloaded") }
		before := reloads()
		if err := os.Symlink(hidden, path+".lnk"); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".lnk", path); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the watcher's reload of the symlink swap", func() error {
			if reloads() != before+1 {
				return fmt.Errorf("%d reloads since the swap", reloads()-before)
			}
			return nil
		})

		writeFile(t, hidden, reloadBase+reloadAdded+reloadHUP)
		eventually(t, 5*time.Second, "dig hup.ztna.internal after an edit of the link's target", func() error {
			if strings.TrimSpace(l.dig(l.acme, "@10.100.0.1", "+short", "hup.ztna.internal")) == "" {
				return os.ErrNotExist
			}
			return nil
		})
		// Well past the watcher's debounce: one reload for the edit.
		time.Sleep(5 * conf.DefaultDebounce)
		if n := reloads() - before; n != 2 || !strings.Contains(gw.out.String(), "added=[hup]") {
			t.Fatalf("%d reloads since the swap; want the swap's and the edit's, adding hup:\n%s", n, gw.out.String())
		}

		if err := gw.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		eventually(t, 3*time.Second, "the reload on SIGHUP", func() error {
			if reloads() != before+3 {
				return fmt.Errorf("%d reloads since the swap", reloads()-before)
			}
			return nil
		})
		if strings.Count(gw.out.String(), "SIGHUP: reloading") != 1 {
			t.Fatalf("no reload by SIGHUP:\n%s", gw.out.String())
		}
	})

	t.Run("API add and delete with curl", func(t *testing.T) {
		body := `{"name": "api1", "tenants": ["acme"], "backends": ["192.0.2.10"], "port": [{"protocol": "tcp", "port": 80, "target": 8080}]}`
		out, err := l.curl(l.router, "-X", "POST", "-H", "Content-Type: application/json", "-d", body, "-w", "\n%{http_code}", "http://127.0.0.1:7780/v1/services")
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
