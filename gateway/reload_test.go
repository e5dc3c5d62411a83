package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// startLineEcho runs a TCP server on 127.0.0.1 that answers every line
// with "<name>: <line>".
func startLineEcho(t *testing.T, name string) int { return startLineEchoAt(t, "127.0.0.1", name) }

// startLineEchoAt is startLineEcho on another loopback address.
func startLineEchoAt(t *testing.T, host, name string) int {
	return startLineEchoAtPort(t, host, 0, name)
}

// startLineEchoAtPort is startLineEchoAt on a given port (0: any).
func startLineEchoAtPort(t *testing.T, host string, port int, name string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	serveLineEcho(t, l, name)
	return l.Addr().(*net.TCPAddr).Port
}

// startLineEchoPair runs a line echo on each of two loopback addresses on
// one port, trying other ports while the first one's is taken on the other
// address.
func startLineEchoPair(t *testing.T, host1, name1, host2, name2 string) int {
	t.Helper()
	for range 10 {
		l1, err := net.Listen("tcp", net.JoinHostPort(host1, "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort(host2, fmt.Sprint(port)))
		if err != nil {
			l1.Close()
			continue
		}
		serveLineEcho(t, l1, name1)
		serveLineEcho(t, l2, name2)
		return port
	}
	t.Fatalf("no common free port on %s and %s", host1, host2)
	return 0
}

// serveLineEcho answers every line on l's connections with
// "<name>: <line>" until the test ends.
func serveLineEcho(t *testing.T, l net.Listener, name string) {
	serveOn(t, l, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s: %s\n", name, sc.Text())
		}
	})
}

type fileHarness struct {
	*harness
	path string
	dir  string
}

// newFileHarness starts a gateway from a file so that Reload reads it.
func newFileHarness(t *testing.T, config string, opts ...func(*Options)) *fileHarness {
	t.Helper()
	return newFileHarnessLog(t, config, nil, opts...)
}

// newFileHarnessLog is newFileHarness with the gateway logging to log.
func newFileHarnessLog(t *testing.T, config string, log *slog.Logger, opts ...func(*Options)) *fileHarness {
	t.Helper()
	return newFileHarnessWith(t, config, log, []netip.Addr{acmeClient, globexClient}, nil, opts...)
}

// newFileHarnessWith is newFileHarnessLog with the client stack's
// addresses and a hook that sees the gateway after New and before Start.
func newFileHarnessWith(t *testing.T, config string, log *slog.Logger, clients []netip.Addr, beforeStart func(*Gateway), opts ...func(*Options)) *fileHarness {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "gw.toml")
	h := &fileHarness{path: path, dir: dir}
	h.write(t, config)
	cfg, err := conf.LoadGateway(path)
	if err != nil {
		t.Fatal(err)
	}
	client, err := netstacktest.NewClient(1420, clients...)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Device: client}
	for _, f := range opts {
		f(&o)
	}
	gw, err := New(cfg, o, log)
	if err != nil {
		t.Fatal(err)
	}
	if beforeStart != nil {
		beforeStart(gw)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	h.harness = &harness{gw: gw, client: client}
	return h
}

func (h *fileHarness) write(t *testing.T, config string) {
	t.Helper()
	config = strings.ReplaceAll(config, "STATE", filepath.Join(h.dir, "state"))
	// Replace the file at once, as editors do: the gateway's watcher may
	// read it at any moment and must never see it half written.
	tmp := h.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, h.path); err != nil {
		t.Fatal(err)
	}
}

func reloadConfig(echoPort int, tenants string, extra string) string {
	return `
[gateway]
state_dir = "STATE"
drain_timeout = "1s"
[api]
listen = "off"
` + twoTenants + tcpService("echo", tenants, "10.100.0.7", "127.0.0.1", echoPort) + extra
}

func webService(port int) string {
	return tcpService("web", `"*"`, "10.100.0.8", "127.0.0.1", port)
}

// lineConn is a line-oriented client connection.
type lineConn struct {
	c net.Conn
	r *bufio.Reader
}

func (h *harness) dialLines(t *testing.T, src netip.Addr, dst string) *lineConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := h.client.DialTCP(ctx, src, netip.MustParseAddrPort(dst))
	if err != nil {
		t.Fatalf("dial %s: %v", dst, err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{c: c, r: bufio.NewReader(c)}
}

func (l *lineConn) roundTrip(t *testing.T, line string) string {
	t.Helper()
	l.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(l.c, line); err != nil {
		t.Fatalf("write: %v", err)
	}
	s, err := l.r.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return strings.TrimSpace(s)
}

// waitClosed waits up to d for the gateway to close the connection: a
// line sent gets an error back, not an echo and not a timeout.
func (l *lineConn) waitClosed(t *testing.T, d time.Duration, what string) {
	t.Helper()
	waitFor(t, d, what, func() bool {
		l.c.SetDeadline(time.Now().Add(100 * time.Millisecond))
		fmt.Fprintln(l.c, "x")
		_, err := l.r.ReadString('\n')
		return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	})
}

// TestReloadKeepsLiveFlows: a long-lived flow keeps echoing through an
// added service, a broken edit, a backend change, a tenant change and a
// removal; new flows see the new configuration.
func TestReloadKeepsLiveFlows(t *testing.T) {
	a, b, web := startLineEcho(t, "a"), startLineEcho(t, "b"), startLineEcho(t, "web")
	h := newFileHarness(t, reloadConfig(a, `"acme"`, ""))
	live := h.dialLines(t, acmeClient, "10.100.0.7:7")
	check := func(step string) {
		t.Helper()
		if got := live.roundTrip(t, step); got != "a: "+step {
			t.Fatalf("live flow after %s: got %q", step, got)
		}
	}
	check("start")

	h.write(t, reloadConfig(a, `"acme"`, webService(web)))
	d, err := h.gw.Reload()
	if err != nil || fmt.Sprint(d.Added) != "[web]" {
		t.Fatalf("add: %+v %v", d, err)
	}
	check("added")
	if got := h.dialLines(t, globexClient, "10.100.0.8:7").roundTrip(t, "hi"); got != "web: hi" {
		t.Fatalf("new service: %q", got)
	}

	h.write(t, "[[service]\nbroken")
	if _, err := h.gw.Reload(); !errors.Is(err, ErrReload) {
		t.Fatalf("broken file: %v", err)
	}
	if n := testutil.ToFloat64(h.gw.m.reloads.WithLabelValues("error")); n != 1 {
		t.Fatalf("reload errors counted %v", n)
	}
	check("broken")

	h.write(t, reloadConfig(b, `"acme", "globex"`, webService(web)))
	d, err = h.gw.Reload()
	if err != nil || len(d.Changed) != 1 || d.Changed[0].Name != "echo" {
		t.Fatalf("change: %+v %v", d, err)
	}
	check("changed")
	if got := h.dialLines(t, globexClient, "10.100.0.7:7").roundTrip(t, "new"); got != "b: new" {
		t.Fatalf("new flow after backend change: %q", got)
	}

	h.write(t, reloadConfig(b, `"globex"`, webService(web)))
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	check("tenant removed") // bound to acme at creation; never re-evaluated
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if c, err := h.client.DialTCP(ctx, acmeClient, netip.MustParseAddrPort("10.100.0.7:7")); err == nil {
		c.Close()
		t.Fatal("acme may no longer open flows to echo")
	}

	h.write(t, `
[gateway]
state_dir = "STATE"
drain_timeout = "1s"
[api]
listen = "off"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
`+webService(web))
	d, err = h.gw.Reload()
	if err != nil || fmt.Sprint(d.Removed) != "[echo]" {
		t.Fatalf("remove: %+v %v", d, err)
	}
	check("removed, draining")
	live.waitClosed(t, 3*time.Second, "drained flow closed")
}

func TestDiffTables(t *testing.T) {
	mk := func(svcs ...string) *table {
		t := &table{byName: map[string]*service{}}
		for _, s := range svcs {
			name, backend, _ := strings.Cut(s, "=")
			t.byName[name] = &service{spec: specFor(name, backend)}
		}
		return t
	}
	cases := []struct {
		name                    string
		old, new                *table
		added, removed, changed string
	}{
		{"nothing", mk("a=1.1.1.1"), mk("a=1.1.1.1"), "[]", "[]", "[]"},
		{"add", mk("a=1.1.1.1"), mk("a=1.1.1.1", "b=2.2.2.2"), "[b]", "[]", "[]"},
		{"remove", mk("a=1.1.1.1", "b=2.2.2.2"), mk("b=2.2.2.2"), "[]", "[a]", "[]"},
		{"change backends", mk("a=1.1.1.1"), mk("a=3.3.3.3"), "[]", "[]", "[{a [backends]}]"},
		{"all at once", mk("a=1.1.1.1", "b=2.2.2.2"), mk("b=9.9.9.9", "c=3.3.3.3"), "[c]", "[a]", "[{b [backends]}]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := diffTables(tc.old, tc.new)
			if got := fmt.Sprint(d.Added); got != tc.added {
				t.Errorf("added %s, want %s", got, tc.added)
			}
			if got := fmt.Sprint(d.Removed); got != tc.removed {
				t.Errorf("removed %s, want %s", got, tc.removed)
			}
			if got := fmt.Sprint(d.Changed); got != tc.changed {
				t.Errorf("changed %s, want %s", got, tc.changed)
			}
		})
	}
}

// TestDiffTablesNamesEveryKey: a changed service's fields are the keys of
// its [[service]] table that changed, in the order of the schema; where
// the service came from (file or API) is no key.
func TestDiffTablesNamesEveryKey(t *testing.T) {
	a := specFor("a", "192.0.2.1")
	a.Source = "file"
	b := catalog.Service{
		Name: "a", Tenants: []string{"acme"}, VIP: netip.MustParseAddr("10.100.0.9"), VIP6: netip.MustParseAddr("fd00::9"),
		Backends: []string{"192.0.2.2"}, BackendsSRV: "_http._tcp.example.net", Balance: catalog.LeastConn, ICMP: true,
		Ports:      []catalog.Port{{Protocol: catalog.TCP, Port: 80, Target: 80}},
		Health:     catalog.Health{Type: catalog.HealthTCP},
		Timeouts:   catalog.Timeouts{TCPIdle: time.Minute},
		FlowLimits: catalog.FlowLimits{MaxFlows: 1, MaxInflightHandshakes: 2, NewFlowsPerSecond: 3, NewFlowsBurst: 4},
		Source:     "api",
	}
	d := diffTables(&table{byName: map[string]*service{"a": {spec: a}}}, &table{byName: map[string]*service{"a": {spec: b}}})
	const want = "[{a [tenants vip vip6 backends backends_srv balance icmp port health timeouts max_flows max_inflight_handshakes new_flows_per_second new_flows_burst]}]"
	if got := fmt.Sprint(d.Changed); got != want {
		t.Errorf("changed %s, want %s", got, want)
	}
	b = a
	b.Source = "api"
	d = diffTables(&table{byName: map[string]*service{"a": {spec: a}}}, &table{byName: map[string]*service{"a": {spec: b}}})
	if len(d.Changed) != 0 {
		t.Errorf("only the source differs: changed %v", d.Changed)
	}
}

func specFor(name, backend string) (s catalog.Service) {
	s.Name = name
	s.Backends = []string{backend}
	return s
}

// TestRestartRequired: a reload names each key it does not apply as the
// file spells it (a section named whole hid which of its keys moved), and
// applies the others: after liveSettings, what still differs from the file
// is exactly what restartRequired named.
func TestRestartRequired(t *testing.T) {
	const head = "[gateway]\nstate_dir = \"/tmp/x\"\n" + twoTenants
	base, err := conf.ParseGateway("a.toml", []byte(head))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, file string
		want       []string
	}{
		{"nothing", head, []string{}},
		{"tun and dns", head + "[tun]\nname = \"other0\"\nmtu = 1400\n[dns]\nlisten = [\"127.0.0.1:5353\"]\n",
			[]string{"tun.name", "tun.mtu", "dns.listen"}},
		{"api, discovery, handshakes", head + "[api]\nlisten = \"127.0.0.1:9999\"\n[discovery]\nmin_ttl = \"1s\"\n" +
			"[limits]\nmax_inflight_handshakes = 5\n",
			[]string{"api.listen", "limits.max_inflight_handshakes", "discovery.min_ttl"}},
		{"the gateway's name", strings.Replace(head, "[gateway]\n", "[gateway]\nname = \"gw9\"\n", 1), []string{"gateway.name"}},
		{"live keys only", strings.Replace(head, "[gateway]\n", "[gateway]\ndrain_timeout = \"5s\"\n", 1) +
			"[limits]\nmax_flows = 7\nnew_flows_per_second = 3\n" + tcpService("web", `"acme"`, "", "192.0.2.10", 80),
			[]string{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			next, err := conf.ParseGateway("a.toml", []byte(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			got := restartRequired(base, next)
			if !slices.Equal(got, tc.want) {
				t.Errorf("restart required %q, want %q", got, tc.want)
			}
			if left := conf.ChangedKeys(liveSettings(base, next), next); !slices.Equal(left, got) {
				t.Errorf("after the live settings %q differ, want %q", left, got)
			}
		})
	}
}

// TestReloadWarnsRestart: a reload that leaves keys for a restart says so
// in one warning naming them all, as the relay and the agent do.
func TestReloadWarnsRestart(t *testing.T) {
	web := startLineEcho(t, "web")
	var logs syncLog
	h := newFileHarnessLog(t, reloadConfig(web, `"acme"`, ""), slog.New(slog.NewTextHandler(&logs, nil)))
	h.write(t, reloadConfig(web, `"acme"`, "[tun]\nmtu = 1400\n[dns]\nlisten = [\"127.0.0.1:0\"]\n"))
	d, err := h.gw.Reload()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tun.mtu", "dns.listen"}
	if !slices.Equal(d.RestartRequired, want) {
		t.Errorf("restart_required %q, want %q", d.RestartRequired, want)
	}
	// The file watcher may reload the same file too: every warning is
	// the whole list, and the reload above logged one.
	const line = `level=WARN msg="configuration changed; restart to apply: tun.mtu, dns.listen"`
	out := logs.String()
	if n := strings.Count(out, "restart to apply"); n == 0 || n != strings.Count(out, line) {
		t.Errorf("want each warning to be %s:\n%s", line, out)
	}
}

// TestAPIStatusCodes exercises every status code of the service and flow
// endpoints.
func TestAPIStatusCodes(t *testing.T) {
	web := startLineEcho(t, "web")
	h := newFileHarness(t, reloadConfig(web, `"acme"`, ""))
	api := h.gw.apiHandler("s3cret")
	do := func(method, path, body string, auth bool) (int, string) {
		t.Helper()
		token := ""
		if auth {
			token = "s3cret"
		}
		return serveAPI(t, api, method, path, body, token)
	}
	svcBody := func(name, vip string) string {
		return fmt.Sprintf(`{"name": %q, "tenants": ["acme"], "vip": %q, "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 7, "target": %d}], "health": {"type": "none"}}`, name, vip, web)
	}
	cases := []struct {
		name, method, path, body string
		auth                     bool
		status                   int
		contains                 string
	}{
		{"healthz open", "GET", "/healthz", "", false, 200, "ok"},
		{"metrics open", "GET", "/metrics", "", false, 200, "ztgate_vip_pool_capacity"},
		{"no token", "GET", "/v1/services", "", false, 401, "errors"},
		{"list", "GET", "/v1/services", "", true, 200, `"name": "echo"`},
		{"add", "POST", "/v1/services", svcBody("api1", ""), true, 201, `"source": "api"`},
		{"add duplicate name", "POST", "/v1/services", svcBody("api1", ""), true, 409, "exists"},
		{"add pinned on a used VIP", "POST", "/v1/services", svcBody("api2", "10.100.0.7"), true, 409, "10.100.0.7"},
		{"add invalid", "POST", "/v1/services", `{"name": "Bad Name!", "bogus": 1}`, true, 400, "bogus"},
		{"add with limits", "POST", "/v1/services", strings.Replace(svcBody("api3", ""), `"port"`,
			`"max_inflight_handshakes": 8, "new_flows_per_second": 5, "new_flows_burst": 10, "port"`, 1), true, 201, `"api3"`},
		{"add with limits over the gateway's", "POST", "/v1/services", strings.Replace(svcBody("api4", ""), `"port"`,
			`"max_inflight_handshakes": 5000, "port"`, 1), true, 400, "limits.max_inflight_handshakes 1024"},
		{"add with a negative limit", "POST", "/v1/services", strings.Replace(svcBody("api4", ""), `"port"`,
			`"new_flows_per_second": -1, "port"`, 1), true, 400, "new_flows_per_second: must not be negative"},
		{"add too big", "POST", "/v1/services", `{"name": "` + strings.Repeat("x", 2<<20) + `"}`, true, 413, "larger"},
		{"delete file service", "DELETE", "/v1/services/echo", "", true, 409, "configuration file"},
		{"delete unknown", "DELETE", "/v1/services/nope", "", true, 404, "nope"},
		{"delete api service", "DELETE", "/v1/services/api1", "", true, 204, ""},
		{"add in upper case", "POST", "/v1/services", svcBody("API5", ""), true, 201, `"name": "api5"`},
		{"delete by the name as posted", "DELETE", "/v1/services/API5", "", true, 204, ""},
		{"drain by the name in upper case", "POST", "/v1/services/ECHO/backends/127.0.0.1/drain", "", true, 200, `"draining"`},
		{"undrain by the name in upper case", "POST", "/v1/services/Echo/backends/127.0.0.1/undrain", "", true, 200, ""},
		{"close flows without filter", "DELETE", "/v1/flows", "", true, 400, "all=true"},
		{"close flows by service", "DELETE", "/v1/flows?service=echo", "", true, 200, `"closed"`},
		{"list flows by service in upper case", "GET", "/v1/flows?service=ECHO&tenant=ACME", "", true, 200, `"flows"`},
		{"reload", "POST", "/v1/reload", "", true, 200, `"added"`},
		{"drain unknown backend", "POST", "/v1/services/echo/backends/192.0.2.99/drain", "", true, 404, "errors"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := do(tc.method, tc.path, tc.body, tc.auth)
			if status != tc.status || !strings.Contains(body, tc.contains) {
				t.Fatalf("%s %s: %d %s; want %d containing %q", tc.method, tc.path, status, body, tc.status, tc.contains)
			}
		})
	}
}

// TestAPIServicePersists: a service added through the API survives a
// restart with the same VIP and shows source "api".
func TestAPIServicePersists(t *testing.T) {
	web := startLineEcho(t, "web")
	h := newFileHarness(t, reloadConfig(web, `"acme"`, ""))
	srv := httptest.NewServer(h.gw.apiHandler(""))
	body := fmt.Sprintf(`{"name": "api1", "tenants": ["acme"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 7, "target": %d}]}`, web)
	resp, err := http.Post(srv.URL+"/v1/services", "application/json", strings.NewReader(body))
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("add: %v %v", resp, err)
	}
	var added apiService
	json.NewDecoder(resp.Body).Decode(&added)
	resp.Body.Close()
	srv.Close()
	if got := h.dialLines(t, acmeClient, added.VIP+":7").roundTrip(t, "x"); got != "web: x" {
		t.Fatalf("api service: %q", got)
	}
	h.gw.Close()

	cfg, err := conf.LoadGateway(h.path)
	if err != nil {
		t.Fatal(err)
	}
	gw2, err := New(cfg, Options{Device: nil}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := gw2.tbl.Load().byName["api1"]
	if s == nil || s.spec.Source != "api" || s.vip.String() != added.VIP {
		t.Fatalf("after restart: %+v", s)
	}
}

// TestReloadRefusesLimitsBelowAPIService: a reload that lowers [limits]
// below the rate of a service added through the API is refused naming the
// service and the key, as a start with that file is.
func TestReloadRefusesLimitsBelowAPIService(t *testing.T) {
	web := startLineEcho(t, "web")
	h := newFileHarness(t, reloadConfig(web, `"acme"`, ""))
	srv := httptest.NewServer(h.gw.apiHandler(""))
	defer srv.Close()
	body := fmt.Sprintf(`{"name": "api1", "tenants": ["acme"], "backends": ["127.0.0.1"], "new_flows_per_second": 50, "port": [{"protocol": "tcp", "port": 7, "target": %d}]}`, web)
	resp, err := http.Post(srv.URL+"/v1/services", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("add: %d", resp.StatusCode)
	}

	h.write(t, reloadConfig(web, `"acme"`, "[limits]\nnew_flows_per_second = 10\n"))
	_, err = h.gw.Reload()
	if !errors.Is(err, ErrReload) || !strings.Contains(err.Error(), `"api1"`) ||
		!strings.Contains(err.Error(), "new_flows_per_second: 50 is more than limits.new_flows_per_second 10") {
		t.Fatalf("reload: %v; want it refused naming api1 and new_flows_per_second", err)
	}
	if got := h.gw.tbl.Load().limits.NewFlowsPerSecond; got == 10 {
		t.Fatalf("refused reload applied [limits] anyway")
	}
	h.gw.Close()

	cfg, err := conf.LoadGateway(h.path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(cfg, Options{Device: nil}, nil)
	if err == nil || !strings.Contains(err.Error(), "new_flows_per_second: 50 is more than limits.new_flows_per_second 10") {
		t.Fatalf("start with the refused file: %v; want it refused as the reload was", err)
	}
}

// TestReloadDrainsRemovedBackend: a reload that takes a backend out of a
// service closes the flows to it after drain_timeout, as documented; new
// flows go to the backend that replaced it.
func TestReloadDrainsRemovedBackend(t *testing.T) {
	a, b := startLineEchoAt(t, "127.0.0.1", "a"), startLineEchoAt(t, "127.0.0.2", "b")
	config := func(backend string, port int) string {
		return "\n[gateway]\nstate_dir = \"STATE\"\ndrain_timeout = \"1s\"\n[api]\nlisten = \"off\"\n" + twoTenants +
			tcpService("echo", `"acme"`, "10.100.0.7", backend, port)
	}
	h := newFileHarness(t, config("127.0.0.1", a))
	live := h.dialLines(t, acmeClient, "10.100.0.7:7")
	if got := live.roundTrip(t, "x"); got != "a: x" {
		t.Fatalf("before: %q", got)
	}
	h.write(t, config("127.0.0.2", b))
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := live.roundTrip(t, "still"); got != "a: still" {
		t.Fatalf("the flow ended before drain_timeout: %q", got)
	}
	if got := h.dialLines(t, acmeClient, "10.100.0.7:7").roundTrip(t, "new"); got != "b: new" {
		t.Fatalf("a new flow: %q", got)
	}
	live.waitClosed(t, 3*time.Second, "the removed backend's flow closed")
}

// TestStateDirExclusive: a second gateway on a running gateway's state
// directory is refused at New, saying why, and may start once the first
// has stopped.
func TestStateDirExclusive(t *testing.T) {
	state := t.TempDir()
	toml := strings.ReplaceAll(quietGateway+acmeTenant, "STATE", state)
	cfg, err := conf.ParseGateway("gw.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	first, err := New(cfg, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, Options{}, nil); err == nil || !strings.Contains(err.Error(), "locked by another ztgate process") {
		t.Fatalf("a second gateway on the state directory: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := New(cfg, Options{}, nil)
	if err != nil {
		t.Fatalf("after the first stopped: %v", err)
	}
	second.Close()
}

// TestFailedNewFreesStateDir: a New that fails once it has opened the VIP
// pool (a damaged api-services.json, a stored service the file defines
// too, a pin on a VIP held for another service) lets the state directory
// go: a New in the same process on that directory, once the cause is
// fixed, starts instead of finding it locked by the failed one.
func TestFailedNewFreesStateDir(t *testing.T) {
	store := `{"version": 1, "services": [{"name": "api1", "tenants": ["acme"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 7}]}]}`
	cases := []struct {
		name, store, extra string
		want               string
	}{
		{"damaged store", `{"version": 1, "serv`, "", "not a version 1 file"},
		{"entry that does not validate", `{"version": 1, "services": [{"name": "api1"}]}`, "", "entry 0"},
		{"name in the file and the store", store, tcpService("api1", `"acme"`, "10.100.0.9", "127.0.0.1", 7), "defined in the file and through the API"},
		{"pin on a held VIP", "", tcpService("web", `"acme"`, "10.100.0.7", "127.0.0.1", 7), "10.100.0.7"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			base := strings.ReplaceAll(quietGateway+acmeTenant, "STATE", state)
			if tc.store == "" {
				// A run with echo pinned to 10.100.0.7, then one without:
				// the VIP is held for echo.
				for _, extra := range []string{tcpService("echo", `"acme"`, "10.100.0.7", "127.0.0.1", 7), ""} {
					cfg, err := conf.ParseGateway("gw.toml", []byte(base+extra))
					if err != nil {
						t.Fatal(err)
					}
					g, err := New(cfg, Options{}, nil)
					if err != nil {
						t.Fatal(err)
					}
					g.Close()
				}
			} else if err := os.WriteFile(filepath.Join(state, apiServicesFile), []byte(tc.store), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := conf.ParseGateway("gw.toml", []byte(base+tc.extra))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := New(cfg, Options{}, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error saying %q", err, tc.want)
			}
			os.Remove(filepath.Join(state, apiServicesFile))
			cfg, err = conf.ParseGateway("gw.toml", []byte(base))
			if err != nil {
				t.Fatal(err)
			}
			g, err := New(cfg, Options{}, nil)
			if err != nil {
				t.Fatalf("New once the cause is gone: %v", err)
			}
			g.Close()
		})
	}
}

// TestReloadForgetsRemovedTenants: a reload that removes a tenant deletes
// its flow series at once when none of its flows is open, and keeps the
// other tenants'; a removed tenant's open flow (its source now another
// tenant's: a source in none has its flows ended) keeps its series until
// it ends. Once every flow has ended, no tenant holds counters.
func TestReloadForgetsRemovedTenants(t *testing.T) {
	port := startLineEcho(t, "echo")
	echo := func(tenants string) string {
		return tcpService("echo", tenants, "10.100.0.7", "127.0.0.1", port)
	}
	h := newFileHarness(t, quietGateway+twoTenants+echo(`"acme", "globex"`))
	flows := func(metric, tenant string) float64 {
		return metricValue(t, h.gw, metric, "protocol", "tcp", "service", "echo", "tenant", tenant)
	}
	live := h.dialLines(t, acmeClient, "10.100.0.7:7")
	if got := live.roundTrip(t, "hi"); got != "echo: hi" {
		t.Fatalf("acme: %q", got)
	}
	done := h.dialLines(t, globexClient, "10.100.0.7:7")
	if got := done.roundTrip(t, "hi"); got != "echo: hi" {
		t.Fatalf("globex: %q", got)
	}
	done.c.Close()
	waitFor(t, 3*time.Second, "globex's flow to end", func() bool { return flows("ztgate_flows_active", "globex") == 0 })

	h.write(t, quietGateway+acmeTenant+echo(`"acme"`))
	if d, err := h.gw.Reload(); err != nil || !d.TenantsChanged {
		t.Fatalf("remove globex: %+v %v", d, err)
	}
	for _, c := range []struct {
		metric, tenant string
		want           float64 // -1: no series
	}{
		{"ztgate_flows_total", "globex", -1},
		{"ztgate_flows_active", "globex", -1},
		{"ztgate_flows_total", "acme", 1},
		{"ztgate_flows_active", "acme", 1},
	} {
		if got := flows(c.metric, c.tenant); got != c.want {
			t.Errorf("globex removed: %s of %s = %v, want %v", c.metric, c.tenant, got, c.want)
		}
	}

	h.write(t, quietGateway+`
[[tenant]]
name = "globex"
sources = ["203.0.113.0/24", "198.51.100.0/24"]
`+echo(`"globex"`))
	if d, err := h.gw.Reload(); err != nil || !d.TenantsChanged {
		t.Fatalf("remove acme: %+v %v", d, err)
	}
	if got := flows("ztgate_flows_total", "acme"); got != 1 {
		t.Fatalf("acme removed with a flow open: flows_total %v, want its series kept", got)
	}
	if got := live.roundTrip(t, "still"); got != "echo: still" {
		t.Fatalf("acme's flow, its source globex's now: %q", got)
	}
	for _, f := range h.gw.flows.list(func(f *flow) bool { return f.peer.tenant == "acme" }) {
		f.close("test")
	}
	waitFor(t, 3*time.Second, "acme's series to go with its flow", func() bool {
		return flows("ztgate_flows_total", "acme") == -1 && flows("ztgate_flows_active", "acme") == -1
	})
	if got := h.gw.limits.entries(); got != "" {
		t.Errorf("tenant counters left after every flow ended: %s", got)
	}
}

// TestFlowAcrossTenantRemoval: a flow classified before a reload removed
// its LAN tenant, whose series are made after it, takes them with it when
// it ends; an agent's flow of a tenant that is not configured keeps its
// series while one of the tenant's ingresses is open, and takes them with
// it when none is.
func TestFlowAcrossTenantRemoval(t *testing.T) {
	cases := []struct {
		name    string
		peer    peer
		ingress bool   // an ingress of the tenant is open
		want    string // flowSeries after the flow ended
	}{
		{"LAN client", peer{tenant: "acme", identity: lanIdentity}, false, ""},
		{"agent connected", peer{tenant: "acme", identity: "acme/agent/laptop"}, true, "acme/tcp:1/0"},
		{"agent gone", peer{tenant: "acme", identity: "acme/agent/laptop"}, false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newUnitGateway(t)
			g.limits = newFlowLimits()
			g.ingresses = newIngressTable(prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_ingresses"}), g)
			if tc.ingress {
				if err := g.ingresses.add(&ingress{peer: tc.peer}); err != nil {
					t.Fatal(err)
				}
			}
			svc := &service{spec: catalog.Service{Name: "web"}, st: g.state("web")}
			classified := &table{byName: map[string]*service{"web": svc}, tenants: newTenantTable([]catalog.Tenant{{Name: "acme"}})}
			g.tbl.Store(&table{byName: classified.byName, tenants: newTenantTable(nil)}) // the reload
			d := decision{svc: svc, peer: tc.peer}
			if reason := g.admit(classified, d); reason != "" {
				t.Fatal(reason)
			}
			f := g.newFlow("tcp", netip.MustParseAddrPort("198.51.100.10:40000"), webVIP, d, &backend{addr: netip.MustParseAddr("192.0.2.10")})
			if got := flowSeries(t, g.m); got != "acme/tcp:1/1" {
				t.Fatalf("series of the open flow: %q", got)
			}
			g.endFlow(f)
			if got := flowSeries(t, g.m); got != tc.want {
				t.Errorf("series after the flow: %q, want %q", got, tc.want)
			}
		})
	}
}

// webRemovals are the two ways a reload of reloadConfig(echo, `"acme"`,
// webService(web)) takes web's flows away: its service, or its backend
// (another address takes its place).
var webRemovals = []struct {
	name    string
	removed func(echo, web int) string
}{
	{"service", func(echo, web int) string { return reloadConfig(echo, `"acme"`, "") }},
	{"backend", func(echo, web int) string {
		return reloadConfig(echo, `"acme"`, tcpService("web", `"*"`, "10.100.0.8", "127.0.0.2", web))
	}},
}

// TestReloadAddBackKeepsFlows: a service (or a backend) that a reload
// removed and the next one added back before drain_timeout passed takes up
// its state again; its live flows belong to a service in the table and must
// not be closed by the removal's pending drain. (A file watcher reloads on
// every save, so an intermediate save without the service is enough.)
func TestReloadAddBackKeepsFlows(t *testing.T) {
	for _, tc := range webRemovals {
		// At once: the gateway may still be setting the flow up (its
		// handshake done, not yet in the flow table) when the reload
		// removes its service or backend.
		for _, atOnce := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/at once %v", tc.name, atOnce), func(t *testing.T) {
				testAddBackKeepsFlow(t, tc.removed, atOnce)
			})
		}
	}
}

func testAddBackKeepsFlow(t *testing.T, removed func(echo, web int) string, atOnce bool) {
	echo, web := startLineEcho(t, "echo"), startLineEcho(t, "web")
	full := reloadConfig(echo, `"acme"`, webService(web)) // drain_timeout = "1s"
	h := newFileHarness(t, full)
	live := h.dialLines(t, acmeClient, "10.100.0.8:7")
	if !atOnce {
		if got := live.roundTrip(t, "x"); got != "web: x" {
			t.Fatalf("before: %q", got)
		}
	}
	h.write(t, removed(echo, web))
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	h.write(t, full)
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // past drain_timeout
	for _, f := range h.gw.flows.list(nil) {
		if reason, closed := f.closed(); closed {
			t.Fatalf("the flow of %s, back in the table, was closed: %s", f.svc.spec.Name, reason)
		}
	}
	if got := live.roundTrip(t, "after"); got != "web: after" {
		t.Fatalf("after: %q", got)
	}
}

// TestReloadRemovedAgainDrainsInFull: a service (or a backend) removed,
// added back and removed again has its flows drained drain_timeout after
// the last removal, not at the first removal's deadline, which the
// addition made void.
func TestReloadRemovedAgainDrainsInFull(t *testing.T) {
	const drainTimeout = 2 * time.Second
	longer := func(cfg string) string {
		return strings.Replace(cfg, `drain_timeout = "1s"`, `drain_timeout = "2s"`, 1)
	}
	for _, tc := range webRemovals {
		t.Run(tc.name, func(t *testing.T) {
			echo, web := startLineEcho(t, "echo"), startLineEcho(t, "web")
			full := longer(reloadConfig(echo, `"acme"`, webService(web)))
			h := newFileHarness(t, full)
			live := h.dialLines(t, acmeClient, "10.100.0.8:7")
			if got := live.roundTrip(t, "x"); got != "web: x" { // the flow is in the gateway's table
				t.Fatalf("before: %q", got)
			}
			reload := func(cfg string) time.Time {
				t.Helper()
				before := time.Now() // the drain's timer starts inside Reload
				h.write(t, cfg)
				if _, err := h.gw.Reload(); err != nil {
					t.Fatal(err)
				}
				return before
			}
			first := reload(longer(tc.removed(echo, web)))
			reload(full)
			time.Sleep(time.Second)
			last := reload(longer(tc.removed(echo, web)))
			time.Sleep(time.Until(first.Add(drainTimeout + 500*time.Millisecond)))
			// Past the first removal's deadline; the last's is 1 s later
			// (unless this machine was too slow to tell them apart).
			if time.Since(last) < drainTimeout-200*time.Millisecond {
				if got := live.roundTrip(t, "x"); got != "web: x" {
					t.Fatalf("the flow %v after its last removal, before drain_timeout: %q", time.Since(last), got)
				}
			}
			live.waitClosed(t, 3*time.Second, "the flow to be drained after the last removal")
			if took := time.Since(last); took < drainTimeout {
				t.Errorf("closed %v after the last removal, before drain_timeout %v", took, drainTimeout)
			}
		})
	}
}

// fullListener is a loopback listener with a backlog of 0 whose accept
// queue is full: a connection attempt's SYN is dropped, and the dialer
// retransmits it a second later. unblock makes room and serves lines.
func fullListener(t *testing.T, name string) (port int, unblock func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	port = l.Addr().(*net.TCPAddr).Port
	filler, err := net.Dial("tcp", l.Addr().String()) // fills the accept queue
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return port, func() { serveLineEcho(t, l, name) }
}

// TestDrainCatchesFlowsInDial: a TCP flow whose backend was being dialled
// when a reload removed its service (or its backend) is a flow of the
// removed service too; it must be closed after drain_timeout like the
// flows that were open at the reload. The drain lists only the flows in
// the flow table at the swap, and a flow enters it after its dial and
// handshake, so such a flow runs on until it ends by itself.
func TestDrainCatchesFlowsInDial(t *testing.T) {
	cases := []struct {
		name  string
		after func(echo, other int) string
	}{
		{"service removed", func(echo, other int) string { return reloadConfig(echo, `"acme"`, "") }},
		{"backend removed", func(echo, other int) string {
			return reloadConfig(echo, `"acme"`, tcpService("web", `"*"`, "10.100.0.8", "127.0.0.2", other))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			echo := startLineEcho(t, "echo")
			other := startLineEchoAt(t, "127.0.0.2", "other")
			web, unblock := fullListener(t, "web")
			h := newFileHarness(t, reloadConfig(echo, `"acme"`, webService(web))) // drain_timeout = "1s"
			st := h.gw.stateOf("web")

			res := h.dialLater(acmeClient, "10.100.0.8:7")
			waitFor(t, 3*time.Second, "the gateway to dial the backend", func() bool { return st.handshakes.Load() == 1 })

			h.write(t, tc.after(echo, other))
			if _, err := h.gw.Reload(); err != nil {
				t.Fatal(err)
			}
			unblock() // the dial's retransmitted SYN gets through
			r := <-res
			if r.err != nil {
				t.Fatalf("dial: %v", r.err)
			}
			t.Cleanup(func() { r.c.Close() })
			live := &lineConn{c: r.c, r: bufio.NewReader(r.c)}
			if got := live.roundTrip(t, "x"); got != "web: x" {
				t.Fatalf("the flow dialled across the reload: %q", got)
			}
			live.waitClosed(t, 4*time.Second, "the flow of the removed service or backend to be drained")
		})
	}
}

// dialResult is the outcome of a dial started by dialLater.
type dialResult struct {
	c   net.Conn
	err error
}

// dialLater dials dst over TCP from src in the background, with 5 s to
// succeed, and hands over the outcome.
func (h *harness) dialLater(src netip.Addr, dst string) <-chan dialResult {
	res := make(chan dialResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := h.client.DialTCP(ctx, src, netip.MustParseAddrPort(dst))
		res <- dialResult{c, err}
	}()
	return res
}
