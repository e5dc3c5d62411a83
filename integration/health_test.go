package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Health-check timing of the tests below: short, so failover shows in
// about a second.
const (
	hcInterval = 300 * time.Millisecond
	hcTimeout  = 200 * time.Millisecond
	hcRise     = 2
	hcFall     = 2
	// hcSlack covers polling the API, process start and a loaded machine.
	hcSlack = 1500 * time.Millisecond // still far below what ignored fall/rise or interval would take
)

// leaveBound is how long a dead backend may stay in rotation:
// fall × interval (+10% jitter) + timeout.
func leaveBound() time.Duration {
	return hcFall*hcInterval*11/10 + hcTimeout + hcSlack
}

// returnBound is how long a recovered backend may stay out of rotation.
func returnBound() time.Duration {
	return hcRise*hcInterval*11/10 + hcTimeout + hcSlack
}

var healthConfig = fmt.Sprintf(`
[gateway]
name = "it-health"
state_dir = "STATE_DIR"

[tun]
name = "ztgate0"
pool = "10.100.0.0/24"

[api]
listen = "127.0.0.1:7780"

[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]

[[service]]
name = "web"
tenants = ["acme"]
vip = "10.100.0.10"
backends = ["192.0.2.10", "192.0.2.11"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = 8080
  [service.health]
  type = "http"
  path = "/healthz"
  interval = "%[1]s"
  timeout = "%[2]s"
  rise = %[3]d
  fall = %[4]d

[[service]]
name = "echo"
tenants = ["acme"]
vip = "10.100.0.20"
backends = ["192.0.2.10"]
icmp = false
  [[service.port]]
  protocol = "udp"
  port = 7
  [service.health]
  type = "udp"
  send = "are you there"
  expect = "are you there"
  interval = "%[1]s"
  timeout = "%[2]s"
  rise = %[3]d
  fall = %[4]d
`, hcInterval, hcTimeout, hcRise, hcFall)

// healthAPI is the part of GET /v1/services and /v1/flows the tests read.
type healthAPI struct {
	Services []struct {
		Name     string `json:"name"`
		Backends []struct {
			Address   string `json:"address"`
			State     string `json:"state"`
			LastError string `json:"last_error"`
		} `json:"backends"`
	} `json:"services"`
	Flows []struct {
		Service string `json:"service"`
		Backend string `json:"backend"`
	} `json:"flows"`
}

// api GETs an admin API path from inside the router namespace.
func (l *lanTopo) api(path string) (healthAPI, error) {
	var v healthAPI
	out, err := l.curl(l.router, "--max-time", "2", "http://127.0.0.1:7780"+path)
	if err != nil {
		return v, err
	}
	return v, json.Unmarshal([]byte(out), &v)
}

// post POSTs body to the admin API as JSON (curl -d alone sends a form's
// Content-Type, which the API refuses) and returns the status code.
func (l *lanTopo) post(path, body string) string {
	l.t.Helper()
	out, err := l.curl(l.router, "--max-time", "2", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json", "-d", body, "http://127.0.0.1:7780"+path)
	if err != nil {
		l.t.Fatalf("POST %s: %v", path, err)
	}
	return out
}

// states returns "address=state" of a service's backends, comma-separated.
func (l *lanTopo) states(svc string) string {
	v, err := l.api("/v1/services")
	if err != nil {
		return err.Error()
	}
	for _, s := range v.Services {
		if s.Name == svc {
			var out []string
			for _, b := range s.Backends {
				out = append(out, b.Address+"="+b.State)
			}
			return strings.Join(out, ",")
		}
	}
	return "no service " + svc
}

// waitStates polls the API until a service's backends are in want and
// returns how long that took; it fails the test after within.
func (l *lanTopo) waitStates(svc, want string, within time.Duration) time.Duration {
	l.t.Helper()
	start := time.Now()
	for {
		got := l.states(svc)
		if got == want {
			return time.Since(start)
		}
		if time.Since(start) > within {
			l.t.Fatalf("%s: backends %s after %v, want %s", svc, got, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// who asks the web VIP which backend answers.
func (l *lanTopo) who() (string, error) {
	out, err := l.curl(l.acme, "--max-time", "5", "http://10.100.0.10/who")
	return strings.Fields(out + " ")[0], err
}

// TestHealthFailover: two HTTP backends share the traffic; a killed one
// leaves rotation within fall × interval + timeout and every request then
// succeeds on the other; with both gone the VIP refuses at once and ping
// gets no reply while DNS still answers; a restarted backend is back within rise × interval.
func TestHealthFailover(t *testing.T) {
	needTools(t, "curl", "ping", "dig")
	l := newLANTopo(t)
	be10 := l.startBackend("192.0.2.10")
	be11 := l.startBackend("192.0.2.11")
	l.startGateway(healthConfig)
	l.waitStates("web", "192.0.2.10=up,192.0.2.11=up", 10*time.Second)

	t.Run("two backends share traffic", func(t *testing.T) {
		seen := map[string]int{}
		for range 10 {
			who, err := l.who()
			if err != nil {
				t.Fatal(err)
			}
			seen[who]++
		}
		if seen["192.0.2.10"] != 5 || seen["192.0.2.11"] != 5 {
			t.Fatalf("answers by backend: %v, want 5 each", seen)
		}
	})

	t.Run("a killed backend leaves rotation", func(t *testing.T) {
		be11.stop(5 * time.Second)
		took := l.waitStates("web", "192.0.2.10=up,192.0.2.11=down", leaveBound())
		t.Logf("192.0.2.11 down %v after it was killed (bound %v)", took, leaveBound())
		for i := range 20 {
			if who, err := l.who(); err != nil || who != "192.0.2.10" {
				t.Fatalf("request %d: %q, %v; want 192.0.2.10", i, who, err)
			}
		}
	})

	t.Run("no backend left: fail fast, the name stays", func(t *testing.T) {
		be10.stop(5 * time.Second)
		l.waitStates("web", "192.0.2.10=down,192.0.2.11=down", leaveBound())
		start := time.Now()
		_, err := l.curl(l.acme, "--max-time", "5", "http://10.100.0.10/")
		if d := time.Since(start); err == nil || d > time.Second {
			t.Fatalf("request without a healthy backend: %v after %v, want refused well under 2s", err, d)
		}
		if out, err := l.try(l.acme, 5*time.Second, "ping", "-c", "1", "-W", "1", "10.100.0.10"); err == nil {
			t.Fatalf("ping answered without a healthy backend:\n%s", out)
		}
		// The name stays: DNS still answers with the VIP, so clients
		// recover the moment a backend does.
		out, err := l.try(l.acme, 5*time.Second, "dig", "+short", "+time=1", "+tries=2", "@10.100.0.1", "web.ztna.internal", "A")
		if err != nil || strings.TrimSpace(out) != "10.100.0.10" {
			t.Fatalf("dig web.ztna.internal with no healthy backend: %q, %v; want 10.100.0.10", out, err)
		}
	})

	t.Run("a restarted backend is back", func(t *testing.T) {
		l.startBackend("192.0.2.10")
		took := l.waitStates("web", "192.0.2.10=up,192.0.2.11=down", returnBound())
		t.Logf("192.0.2.10 up %v after it was ready (bound %v)", took, returnBound())
		if who, err := l.who(); err != nil || who != "192.0.2.10" {
			t.Fatalf("after recovery: %q, %v", who, err)
		}
		if out, err := l.try(l.acme, 5*time.Second, "ping", "-c", "1", "-W", "2", "10.100.0.10"); err != nil {
			t.Fatalf("ping after recovery: %v\n%s", err, out)
		}
	})
}

// TestHealthUDP: a UDP service checked with send/expect goes down with its
// backend (clients then get ICMP port unreachable) and comes back with it.
func TestHealthUDP(t *testing.T) {
	needTools(t, "socat")
	l := newLANTopo(t)
	be := l.startBackend("192.0.2.10")
	l.startGateway(healthConfig)
	l.waitStates("echo", "192.0.2.10=up", 10*time.Second)
	echo := func() (string, error) {
		return l.try(l.acme, 10*time.Second, "sh", "-c", "echo hello-udp | socat -t 2 - UDP:10.100.0.20:7")
	}
	if out, err := echo(); err != nil || strings.TrimSpace(out) != "hello-udp" {
		t.Fatalf("udp echo: %q, %v", out, err)
	}
	be.stop(5 * time.Second)
	took := l.waitStates("echo", "192.0.2.10=down", leaveBound())
	t.Logf("UDP backend down %v after it was killed", took)
	if out, err := echo(); err == nil || !strings.Contains(out, "refused") {
		t.Fatalf("udp without a healthy backend: %q, %v; want connection refused", out, err)
	}
	l.startBackend("192.0.2.10")
	took = l.waitStates("echo", "192.0.2.10=up", returnBound())
	t.Logf("UDP backend up %v after it was ready", took)
	if out, err := echo(); err != nil || strings.TrimSpace(out) != "hello-udp" {
		t.Fatalf("udp echo after recovery: %q, %v", out, err)
	}
}

// TestHealthDrain: a drained backend takes no new flows while a slow
// download on it completes; with a deadline, a flow still open then is cut.
func TestHealthDrain(t *testing.T) {
	needTools(t, "curl")
	l := newLANTopo(t)
	l.startBackend("192.0.2.10")
	l.startBackend("192.0.2.11")
	gw := l.startGateway(healthConfig)
	l.waitStates("web", "192.0.2.10=up,192.0.2.11=up", 10*time.Second)

	// A small receive buffer in the client keeps a rate-limited download's
	// bytes in flight through the gateway instead of in the client's kernel.
	l.exec(l.acme, "sysctl", "-qw", "net.ipv4.tcp_rmem=4096 65536 131072")
	// slow starts a download of n bytes at 2 MB/s and returns it with the
	// backend that serves it.
	slow := func(name string, n int) (*proc, string) {
		t.Helper()
		p := l.start(l.acme, name, "curl", "-sS", "--max-time", "40", "--limit-rate", "2M",
			"-o", "/dev/null", "-w", "%{http_code} %{size_download}\n", fmt.Sprintf("http://10.100.0.10/bytes?n=%d", n))
		var backend string
		eventually(t, 5*time.Second, "the download's flow", func() error {
			var err error
			backend, err = l.flowBackend()
			return err
		})
		return p, backend
	}
	other := map[string]string{"192.0.2.10": "192.0.2.11", "192.0.2.11": "192.0.2.10"}

	t.Run("an existing flow completes, new flows go elsewhere", func(t *testing.T) {
		const size = 8 << 20 // 4 s at 2 MB/s
		p, held := slow("slow download", size)
		if code := l.post("/v1/services/web/backends/"+held+"/drain", ""); code != "200" {
			t.Fatalf("drain: %s", code)
		}
		want := map[string]string{"192.0.2.10": "192.0.2.10=draining,192.0.2.11=up", "192.0.2.11": "192.0.2.10=up,192.0.2.11=draining"}[held]
		if got := l.states("web"); got != want {
			t.Fatalf("after drain: %s, want %s", got, want)
		}
		for i := range 10 {
			if who, err := l.who(); err != nil || who != other[held] {
				t.Fatalf("new request %d: %q, %v; want %s while %s drains", i, who, err, other[held], held)
			}
		}
		if b, err := l.flowBackend(); err != nil || b != held {
			t.Fatalf("the download's flow after the drain and ten requests: %q, %v; want it still open on %s", b, err, held)
		}
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			t.Fatal("the slow download did not finish")
		}
		if out := strings.TrimSpace(p.out.String()); p.err != nil || out != fmt.Sprintf("200 %d", size) {
			t.Fatalf("slow download on the draining backend: %q, %v", out, p.err)
		}
		if code := l.post("/v1/services/web/backends/"+held+"/undrain", ""); code != "200" {
			t.Fatalf("undrain: %s", code)
		}
		l.waitStates("web", "192.0.2.10=up,192.0.2.11=up", time.Second)
	})

	t.Run("the deadline cuts a flow still open", func(t *testing.T) {
		const size = 16 << 20 // 8 s at 2 MB/s; /bytes serves at most 16 MiB
		p, held := slow("cut download", size)
		start := time.Now()
		if code := l.post("/v1/services/web/backends/"+held+"/drain", `{"deadline": "1s"}`); code != "200" {
			t.Fatalf("drain: %s", code)
		}
		eventually(t, 5*time.Second, "the flow closed at the deadline", func() error {
			if b, err := l.flowBackend(); err == nil {
				return fmt.Errorf("flow still open on %s", b)
			}
			return nil
		})
		if took := time.Since(start); took < 900*time.Millisecond || took > 3*time.Second {
			t.Fatalf("flow closed %v after a drain with a 1s deadline", took)
		}
		gw.waitOutput(t, "reason=drained", 3*time.Second) // the flow's log line
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			t.Fatal("the cut download did not end")
		}
		if out := strings.TrimSpace(p.out.String()); p.err == nil || strings.HasSuffix(out, fmt.Sprint(size)) {
			t.Fatalf("download cut by the deadline ended with %v: %q", p.err, out)
		}
		if code := l.post("/v1/services/web/backends/192.0.2.99/drain", ""); code != "404" {
			t.Fatalf("drain of an unknown backend: %s, want 404", code)
		}
	})
}

// flowBackend returns the backend address of the one open flow of web.
func (l *lanTopo) flowBackend() (string, error) {
	v, err := l.api("/v1/flows?service=web")
	if err != nil {
		return "", err
	}
	if len(v.Flows) != 1 {
		return "", fmt.Errorf("%d flows of web", len(v.Flows))
	}
	b, _, _ := strings.Cut(v.Flows[0].Backend, ":")
	return b, nil
}
