package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// sickable is an HTTP backend whose /healthz fails while sick is set; every
// other path answers its name.
type sickable struct {
	name string
	sick atomic.Bool
}

func (s *sickable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" && s.sick.Load() {
		http.Error(w, "sick", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprint(w, s.name)
}

// startSickables serves one sickable on each loopback address, all on the
// same port, and returns them with that port.
func startSickables(t *testing.T, addrs ...string) ([]*sickable, int) {
	t.Helper()
	for range 10 {
		var ls []net.Listener
		port := 0
		for _, a := range addrs {
			l, err := net.Listen("tcp", net.JoinHostPort(a, fmt.Sprint(port)))
			if err != nil {
				break
			}
			ls = append(ls, l)
			port = l.Addr().(*net.TCPAddr).Port
		}
		if len(ls) < len(addrs) {
			for _, l := range ls {
				l.Close()
			}
			continue
		}
		var out []*sickable
		for i, l := range ls {
			s := &sickable{name: addrs[i]}
			srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
			done := make(chan struct{})
			go func() {
				defer close(done)
				srv.Serve(l)
			}()
			t.Cleanup(func() { srv.Close(); <-done })
			out = append(out, s)
		}
		return out, port
	}
	t.Fatalf("no common free port on %v", addrs)
	return nil, 0
}

const healthConfig = quietGateway + acmeTenant + `[[service]]
name = "app"
tenants = ["acme"]
vip = "10.100.0.30"
backends = ["127.0.0.1", "127.0.0.2"]
icmp = true
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = %d
  [service.health]
  type = "http"
  path = "/healthz"
  interval = "100ms"
  timeout = "100ms"
  rise = 2
  fall = 3
[[service]]
name = "game"
tenants = ["acme"]
vip = "10.100.0.31"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "udp"
  port = 7
  target = %d
  [service.health]
  type = "udp"
  send = "ping"
  expect = "pong"
  interval = "100ms"
  timeout = "100ms"
  rise = 2
  fall = 3
`

// backendStates returns the API's state of each backend of a service.
func backendStates(t *testing.T, g *Gateway, svc string) string {
	t.Helper()
	var list struct {
		Services []apiService `json:"services"`
	}
	call(t, g.apiHandler(""), "GET", "/v1/services", "", &list)
	for _, s := range list.Services {
		if s.Name == svc {
			var st []string
			for _, b := range s.Backends {
				st = append(st, b.State)
			}
			return strings.Join(st, ",")
		}
	}
	t.Fatalf("no service %s", svc)
	return ""
}

// TestHealthComponent drives a gateway with active checks on loopback
// backends: a failing backend leaves rotation, none left means fail fast
// (RST, ICMP unreachable, no echo reply) while the VIP stays, and a backend
// that passes again is back.
func TestHealthComponent(t *testing.T) {
	web, port := startSickables(t, "127.0.0.1", "127.0.0.2")
	var udpUp atomic.Bool
	udpUp.Store(true)
	game := udpServer(t, func(b []byte) []byte {
		if !udpUp.Load() {
			return nil
		}
		return append([]byte("pong "), b...)
	})
	h := newHarness(t, fmt.Sprintf(healthConfig, port, game.Port()))
	g := h.gw
	hc := h.httpClient(acmeClient)
	get := func() (string, error) {
		resp, err := hc.Get("http://10.100.0.30/who")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	waitState := func(svc, want string) {
		t.Helper()
		// Nominally under a second (checks every 100ms, rise 2, fall 3), but
		// a loaded two-core machine under the race detector can take longer.
		waitFor(t, 15*time.Second, svc+" backends "+want, func() bool { return backendStates(t, g, svc) == want })
	}
	ping := func(d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_, err := h.client.Ping(ctx, g.lan, acmeClient, netip.MustParseAddr("10.100.0.30"), 7, 1, []byte("x"))
		return err
	}

	waitState("app", "up,up")
	waitState("game", "up")
	t.Run("both backends share traffic", func(t *testing.T) {
		seen := map[string]int{}
		for range 10 {
			who, err := get()
			if err != nil {
				t.Fatal(err)
			}
			seen[who]++
		}
		if seen["127.0.0.1"] != 5 || seen["127.0.0.2"] != 5 {
			t.Fatalf("round robin over two healthy backends: %v", seen)
		}
	})
	t.Run("a failing backend leaves rotation", func(t *testing.T) {
		web[1].sick.Store(true)
		waitState("app", "up,down")
		for range 10 {
			if who, err := get(); err != nil || who != "127.0.0.1" {
				t.Fatalf("got %q, %v; want every request on 127.0.0.1", who, err)
			}
		}
		if err := ping(2 * time.Second); err != nil {
			t.Fatalf("ping with one backend up: %v", err)
		}
	})
	t.Run("no backend left: fail fast", func(t *testing.T) {
		web[0].sick.Store(true)
		waitState("app", "down,down")
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := h.client.DialTCP(ctx, acmeClient, netip.MustParseAddrPort("10.100.0.30:80"))
		if err == nil {
			c.Close()
			t.Fatal("connection accepted without a healthy backend")
		}
		if !strings.Contains(err.Error(), "refused") || time.Since(start) > 500*time.Millisecond {
			t.Fatalf("got %v after %v, want connection refused at once", err, time.Since(start))
		}
		if err := ping(300 * time.Millisecond); !errors.Is(err, netstacktest.ErrNoReply) {
			t.Fatalf("ping without a healthy backend: %v, want no reply", err)
		}
		if s := g.tbl.Load().lookupVIP(netip.MustParseAddr("10.100.0.30")); s == nil || s.spec.Name != "app" {
			t.Fatal("the VIP left the table with its backends")
		}
		if v := metricValue(t, g, "ztgate_backend_healthy", "backend", "127.0.0.1", "service", "app"); v != 0 {
			t.Fatalf("gauge %v, want 0", v)
		}
		if v := metricValue(t, g, "ztgate_flows_refused_total", "protocol", "tcp", "reason", refuseNoBackend); v < 1 {
			t.Fatalf("refusals for no healthy backend: %v", v)
		}
	})
	t.Run("a backend that passes again is back", func(t *testing.T) {
		web[0].sick.Store(false)
		// The data path takes the backend once its state is up: only then
		// is a request made.
		waitState("app", "up,down")
		// Each attempt is bounded: a SYN the client stack has to retransmit
		// (its timeouts grow 1 s, 2 s, 4 s) cannot stretch the step, and a
		// failed attempt is retried until a generous deadline.
		quick := h.httpClient(acmeClient)
		quick.Timeout = 2 * time.Second
		deadline := time.Now().Add(15 * time.Second)
		for attempt := 1; ; attempt++ {
			resp, err := quick.Get("http://10.100.0.30/who")
			if err == nil {
				b, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if rerr != nil || string(b) != "127.0.0.1" {
					t.Fatalf("after recovery: %q, %v; want 127.0.0.1", b, rerr)
				}
				if attempt > 1 {
					t.Logf("the request succeeded at attempt %d", attempt)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after recovery: %v (attempt %d)", err, attempt)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("UDP service follows its backend", func(t *testing.T) {
		udpUp.Store(false)
		waitState("game", "down")
		before := h.client.Unreachables()
		c, err := h.client.DialUDP(acmeClient, netip.MustParseAddrPort("10.100.0.31:7"))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hello"))
		c.Close()
		waitFor(t, time.Second, "ICMP unreachable from a service without a healthy backend", func() bool {
			return h.client.Unreachables() > before
		})
		udpUp.Store(true)
		waitState("game", "up")
		c, err = h.client.DialUDP(acmeClient, netip.MustParseAddrPort("10.100.0.31:7"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("hello"))
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], []byte("pong hello")) {
			t.Fatalf("after recovery: %q, %v", buf[:n], err)
		}
	})
	t.Run("checks are counted", func(t *testing.T) {
		for _, r := range []string{"ok", "fail"} {
			if v := metricValue(t, g, "ztgate_health_checks_total", "result", r, "service", "app"); v < 1 {
				t.Errorf("checks with result %s: %v", r, v)
			}
		}
		if v := metricValue(t, g, "ztgate_health_check_duration_seconds", "service", "game"); v < 1 {
			t.Errorf("check durations observed: %v", v)
		}
	})
}

// TestDrainComponent holds a TCP flow open on one backend, drains that
// backend with a deadline: new flows go to the other one, the held flow
// keeps working until the deadline closes it.
func TestDrainComponent(t *testing.T) {
	_, port := startSickables(t, "127.0.0.1", "127.0.0.2")
	h := newHarness(t, fmt.Sprintf(healthConfig, port, 9))
	g := h.gw
	waitFor(t, 3*time.Second, "both backends up", func() bool { return backendStates(t, g, "app") == "up,up" })
	conn, err := h.client.DialTCP(context.Background(), acmeClient, netip.MustParseAddrPort("10.100.0.30:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitFor(t, time.Second, "the held flow", func() bool { return len(g.flows.list(nil)) == 1 })
	held := g.flows.list(nil)[0].backend.addr.String()
	other := map[string]string{"127.0.0.1": "127.0.0.2", "127.0.0.2": "127.0.0.1"}[held]

	api := g.apiHandler("")
	if code := call(t, api, "POST", "/v1/services/app/backends/"+held+"/drain", `{"deadline": "1s"}`, nil); code != 200 {
		t.Fatalf("drain: %d", code)
	}
	hc := h.httpClient(acmeClient)
	for range 4 {
		resp, err := hc.Get("http://10.100.0.30/who")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != other {
			t.Fatalf("new flow went to %q while %s drains", b, held)
		}
	}
	// The held flow still works: one request on it.
	fmt.Fprint(conn, "GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil || !strings.HasSuffix(string(buf[:n]), held) {
		t.Fatalf("held flow during the drain: %q, %v", buf[:n], err)
	}
	// At the deadline the gateway closes it.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("held flow after the deadline: %v, want it closed", err)
	}
	if code := call(t, api, "POST", "/v1/services/app/backends/"+held+"/undrain", "", nil); code != 200 {
		t.Fatalf("undrain: %d", code)
	}
	if s := backendStates(t, g, "app"); s != "up,up" {
		t.Fatalf("after undrain: %s", s)
	}
}

const passiveConfig = quietGateway + acmeTenant + `[[service]]
name = "app"
tenants = ["acme"]
vip = "10.100.0.40"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = %d
  [service.health]
  %s
`

// TestPassiveDialFailure: a failed dial of a real flow counts as a failed
// check. The backend's data port refuses while its check port would pass;
// the active checks are held off (first check a day away), so only the
// dials can take the backend down: after fall of them with checks, never
// without checks (then only the error is kept).
func TestPassiveDialFailure(t *testing.T) {
	healthy := startLineEcho(t, "check")
	cases := []struct {
		name   string
		health string
		dials  int
		states []string // API state after each failed dial
		down   bool     // the backend is down after the dials: the next flow is refused without a dial
	}{
		{"fall 3 takes three dials", fmt.Sprintf(`type = "tcp"
  port = %d
  interval = "24h"
  rise = 1
  fall = 3`, healthy), 3, []string{"unknown", "unknown", "down"}, true},
		{"fall 1 takes one dial", fmt.Sprintf(`type = "tcp"
  port = %d
  interval = "24h"
  rise = 1
  fall = 1`, healthy), 1, []string{"down"}, true},
		{"without checks the backend stays", `type = "none"`, 3, []string{"unknown", "unknown", "unknown"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hold := func(g *Gateway) {
				for _, st := range g.serviceStates() {
					st.health.randN = func(n int64) int64 { return n - 1 }
				}
			}
			h := newHarnessWith(t, fmt.Sprintf(passiveConfig, closedPort(t).Port(), tc.health), hold)
			g := h.gw
			vip := netip.MustParseAddrPort("10.100.0.40:80")
			dial := func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, err := h.client.DialTCP(ctx, acmeClient, vip)
				if err == nil {
					c.Close()
					return errors.New("connection accepted by a backend that refuses")
				}
				return err
			}
			for i, want := range tc.states {
				if err := dial(); !strings.Contains(err.Error(), "refused") {
					t.Fatalf("dial %d: %v, want refused", i+1, err)
				}
				if v := metricValue(t, g, "ztgate_dial_errors_total", "backend", "127.0.0.1", "service", "app"); v != float64(i+1) {
					t.Fatalf("dial errors after dial %d: %v", i+1, v)
				}
				var list struct {
					Services []apiService `json:"services"`
				}
				call(t, g.apiHandler(""), "GET", "/v1/services", "", &list)
				b := list.Services[0].Backends[0]
				if b.State != want || !strings.Contains(b.LastError, "dial") || !strings.Contains(b.LastError, "refused") {
					t.Fatalf("after dial %d: state %q, last error %q; want %q and the dial's error", i+1, b.State, b.LastError, want)
				}
				if b.Healthy != (want != "down") {
					t.Fatalf("after dial %d: healthy %v in state %s", i+1, b.Healthy, want)
				}
			}
			if err := dial(); !strings.Contains(err.Error(), "refused") {
				t.Fatalf("dial after the failures: %v, want refused", err)
			}
			dials := metricValue(t, g, "ztgate_dial_errors_total", "backend", "127.0.0.1", "service", "app")
			noBackend := metricValue(t, g, "ztgate_flows_refused_total", "protocol", "tcp", "reason", refuseNoBackend)
			if tc.down && (dials != float64(tc.dials) || noBackend != 1) {
				t.Fatalf("a down backend was dialled: %v dial errors, %v refusals without a backend", dials, noBackend)
			}
			if !tc.down && (dials != float64(tc.dials+1) || noBackend > 0) {
				t.Fatalf("the backend left rotation without checks: %v dial errors, %v refusals without a backend", dials, noBackend)
			}
		})
	}
}
