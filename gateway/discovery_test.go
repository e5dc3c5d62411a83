package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/resolver"
	"github.com/ztgate/ztgate/resolver/resolvertest"
)

// discoveryConfig is a gateway whose service app (TCP 7 → port) resolves
// its backends with the nameserver ns; backends and srv are the service's
// TOML lines naming them (`backends = [...]`, `backends_srv = ...`).
func discoveryConfig(ns netip.AddrPort, backends, srv string, port int) string {
	return fmt.Sprintf(`
[gateway]
state_dir = "STATE"
drain_timeout = "1s"
[api]
listen = "off"
[discovery]
nameservers = ["%s"]
min_ttl = "100ms"
max_ttl = "1s"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
[[service]]
name = "app"
tenants = ["acme"]
vip = "10.100.0.9"
%s
%s
  [[service.port]]
  protocol = "tcp"
  port = 7
  target = %d
  [service.health]
  type = "tcp"
  interval = "100ms"
  timeout = "100ms"
  rise = 1
  fall = 1
`, ns, backends, srv, port)
}

func backendAddrs(h *harness, name string) []string {
	var out []string
	for _, b := range h.gw.tbl.Load().byName[name].st.backends.Load().list {
		out = append(out, fmt.Sprintf("%s:%d", b.addr, b.port))
	}
	slices.Sort(out)
	return out
}

// TestDiscoveryHostName: a backend given by name is re-resolved by its
// TTL; a new address takes flows once its health check passes, a vanished
// one leaves.
func TestDiscoveryHostName(t *testing.T) {
	dnsSrv := startDNS(t)
	port := startLineEchoPair(t, "127.0.0.1", "one", "127.0.0.2", "two")
	dnsSrv.SetHost("app.corp.example", 1, netip.MustParseAddr("127.0.0.1"))

	h := newFileHarness(t, discoveryConfig(dnsSrv.Addr(), `backends = ["app.corp.example"]`, "", port))
	if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != "[127.0.0.1:0]" {
		t.Fatalf("first resolution: %s", got)
	}
	if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, "x"); got != "one: x" {
		t.Fatalf("got %q", got)
	}

	dnsSrv.SetHost("app.corp.example", 1, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"))
	waitFor(t, 3*time.Second, "the new address to come up", func() bool {
		for _, b := range h.gw.tbl.Load().byName["app"].st.backends.Load().list {
			if b.addr == netip.MustParseAddr("127.0.0.2") && b.usable() {
				return true
			}
		}
		return false
	})
	seen := map[string]bool{}
	for i := range 8 {
		got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, fmt.Sprint(i))
		seen[got[:3]] = true
	}
	if !seen["one"] || !seen["two"] {
		t.Fatalf("flows did not spread over both addresses: %v", seen)
	}

	dnsSrv.SetHost("app.corp.example", 1, netip.MustParseAddr("127.0.0.2"))
	waitFor(t, 3*time.Second, "the vanished address to leave", func() bool {
		return fmt.Sprint(backendAddrs(h.harness, "app")) == "[127.0.0.2:0]"
	})
	if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, "y"); got != "two: y" {
		t.Fatalf("after the change: %q", got)
	}
}

// TestDiscoverySRV: backends_srv takes targets, ports, priorities (failover
// tiers) and weights from SRV records.
func TestDiscoverySRV(t *testing.T) {
	dnsSrv := startDNS(t)
	p1 := startLineEchoAt(t, "127.0.0.1", "primary")
	p2 := startLineEchoAt(t, "127.0.0.2", "backup")
	dnsSrv.SetHost("a.corp.example", 60, netip.MustParseAddr("127.0.0.1"))
	dnsSrv.SetHost("b.corp.example", 60, netip.MustParseAddr("127.0.0.2"))
	dnsSrv.SetSRV("_echo._tcp.app.corp.example", 1,
		resolver.SRV{Target: "a.corp.example", Port: uint16(p1), Priority: 10, Weight: 5},
		resolver.SRV{Target: "b.corp.example", Port: uint16(p2), Priority: 20, Weight: 5})

	h := newFileHarness(t, discoveryConfig(dnsSrv.Addr(), "", `backends_srv = "_echo._tcp.app.corp.example"`, 9))
	want := fmt.Sprint([]string{fmt.Sprintf("127.0.0.1:%d", p1), fmt.Sprintf("127.0.0.2:%d", p2)})
	if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != want {
		t.Fatalf("SRV backends %s, want %s", got, want)
	}
	// Named by the SRV name (the API, drains), checked by their targets'
	// names (an HTTP check's Host: virtual hosts know no SRV owner name).
	for _, b := range h.gw.stateOf("app").backends.Load().list {
		if b.origin() != "_echo._tcp.app.corp.example" || !strings.HasSuffix(b.checkHost(), ".corp.example") || strings.HasPrefix(b.checkHost(), "_") {
			t.Errorf("backend %v: origin %q, check host %q; want the SRV name and its target", b.addr, b.origin(), b.checkHost())
		}
	}
	for i := range 4 {
		if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, fmt.Sprint(i)); got[:7] != "primary" {
			t.Fatalf("the lower priority must take every flow while it is up: %q", got)
		}
	}
	// The primary tier leaves: the next tier takes over.
	dnsSrv.SetSRV("_echo._tcp.app.corp.example", 1,
		resolver.SRV{Target: "b.corp.example", Port: uint16(p2), Priority: 20, Weight: 5})
	waitFor(t, 3*time.Second, "failover to the backup tier", func() bool {
		return len(backendAddrs(h.harness, "app")) == 1
	})
	if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, "z"); got != "backup: z" {
		t.Fatalf("after the primary left: %q", got)
	}
}

// TestDiscoveryBound: a name is re-resolved after its TTL clamped into
// [min_ttl, max_ttl]; a failed lookup is retried after min_ttl.
func TestDiscoveryBound(t *testing.T) {
	d := &discovery{min: 5 * time.Second, max: 5 * time.Minute}
	cases := []struct {
		name string
		ttl  time.Duration
		err  error
		want time.Duration
	}{
		{"TTL 0 waits min", 0, nil, 5 * time.Second},
		{"TTL below min waits min", time.Second, nil, 5 * time.Second},
		{"TTL at min", 5 * time.Second, nil, 5 * time.Second},
		{"TTL within the bounds is kept", time.Minute, nil, time.Minute},
		{"TTL at max", 5 * time.Minute, nil, 5 * time.Minute},
		{"TTL above max waits max", 24 * time.Hour, nil, 5 * time.Minute},
		{"a failed lookup retries at min", time.Hour, errors.New("SERVFAIL"), 5 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := d.bound(tc.ttl, tc.err); got != tc.want {
				t.Fatalf("bound(%v, %v) = %v, want %v", tc.ttl, tc.err, got, tc.want)
			}
		})
	}
}

// TestDiscoveryTTLBounds: a long TTL is cut to max_ttl (a change is seen
// although the answer claims to last an hour); a TTL of 0 is raised to
// min_ttl (the name is not re-resolved in a loop).
func TestDiscoveryTTLBounds(t *testing.T) {
	t.Run("max_ttl", func(t *testing.T) {
		dnsSrv := startDNS(t)
		dnsSrv.SetHost("app.corp.example", 3600, netip.MustParseAddr("127.0.0.1"))
		h := newFileHarness(t, discoveryConfig(dnsSrv.Addr(), `backends = ["app.corp.example"]`, "", 9))
		if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != "[127.0.0.1:0]" {
			t.Fatalf("first resolution: %s", got)
		}
		// The watcher resolves once more as it starts (each lookup is two
		// queries, A and AAAA); a change before that would be seen at once.
		waitFor(t, 15*time.Second, "the watcher's first lookup", func() bool { return dnsSrv.Queries() >= 4 })
		dnsSrv.SetHost("app.corp.example", 3600, netip.MustParseAddr("127.0.0.2"))
		// max_ttl is 1s: well within the deadline, not within the hour.
		waitFor(t, 15*time.Second, "the change behind a TTL of an hour", func() bool {
			return fmt.Sprint(backendAddrs(h.harness, "app")) == "[127.0.0.2:0]"
		})
	})
	t.Run("min_ttl", func(t *testing.T) {
		dnsSrv := startDNS(t)
		dnsSrv.SetHost("app.corp.example", 0, netip.MustParseAddr("127.0.0.1"))
		const minTTL = 500 * time.Millisecond
		cfg := strings.Replace(discoveryConfig(dnsSrv.Addr(), `backends = ["app.corp.example"]`, "", 9), `min_ttl = "100ms"`, `min_ttl = "500ms"`, 1)
		h := newFileHarness(t, cfg)
		if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != "[127.0.0.1:0]" {
			t.Fatalf("first resolution: %s", got)
		}
		start, before := time.Now(), dnsSrv.Queries()
		// Each lookup is two queries (A and AAAA). Waiting never fires a
		// timer early, so this bound holds however slow the machine.
		waitFor(t, 15*time.Second, "two re-resolutions", func() bool { return dnsSrv.Queries()-before >= 4 })
		time.Sleep(time.Second)
		lookups, took := (dnsSrv.Queries()-before)/2, time.Since(start)
		if most := int(took/minTTL) + 1; lookups > most {
			t.Fatalf("%d lookups in %v of a name with TTL 0; min_ttl %v allows %d", lookups, took, minTTL, most)
		}
	})
}

// TestDiscoveryVanishedDrains: when an address leaves the name's answer,
// new flows stop going to it at once while its live flow keeps working
// until drain_timeout, and is closed then.
func TestDiscoveryVanishedDrains(t *testing.T) {
	dnsSrv := startDNS(t)
	port := startLineEchoPair(t, "127.0.0.1", "one", "127.0.0.2", "two")
	one, two := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	dnsSrv.SetHost("app.corp.example", 1, one, two)
	const drainTimeout = 4 * time.Second
	cfg := strings.Replace(discoveryConfig(dnsSrv.Addr(), `backends = ["app.corp.example"]`, "", port), `drain_timeout = "1s"`, `drain_timeout = "4s"`, 1)
	h := newFileHarness(t, cfg)

	// Round robin over the two: one of two flows lands on 127.0.0.1.
	var held *lineConn
	for i := range 2 {
		c := h.dialLines(t, acmeClient, "10.100.0.9:7")
		if got := c.roundTrip(t, fmt.Sprint(i)); strings.HasPrefix(got, "one:") {
			held = c
		}
	}
	if held == nil {
		t.Fatal("no flow on 127.0.0.1 out of two")
	}

	changed := time.Now()
	dnsSrv.SetHost("app.corp.example", 1, two)
	waitFor(t, 15*time.Second, "127.0.0.1 to leave the backends", func() bool {
		return fmt.Sprint(backendAddrs(h.harness, "app")) == "[127.0.0.2:0]"
	})
	if got := held.roundTrip(t, "still"); got != "one: still" {
		t.Fatalf("the live flow on the vanished address: %q", got)
	}
	for i := range 4 {
		if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, fmt.Sprint(i)); got != fmt.Sprintf("two: %d", i) {
			t.Fatalf("a new flow after 127.0.0.1 left: %q", got)
		}
	}
	held.c.SetReadDeadline(time.Now().Add(drainTimeout + 15*time.Second))
	if _, err := held.r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the live flow after the drain deadline: %v, want it closed", err)
	}
	// The drain began after the change: the flow cannot close earlier.
	if took := time.Since(changed); took < drainTimeout {
		t.Fatalf("the live flow closed %v after the change, before drain_timeout %v", took, drainTimeout)
	}
}

const probationConfig = `
[gateway]
state_dir = "STATE"
[api]
listen = "off"
[discovery]
nameservers = ["%s"]
min_ttl = "100ms"
max_ttl = "1s"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
[[service]]
name = "app"
tenants = ["acme"]
vip = "10.100.0.9"
backends = ["app.corp.example"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = %d
  [service.health]
  type = "http"
  path = "/healthz"
  interval = "100ms"
  timeout = "100ms"
  rise = 1
  fall = 1000
`

// TestDiscoveryProbation: an address discovered for a running service
// enters through its health checks. Failing them, it takes no flow although
// it accepts connections and its state stays unknown (fall is high); once
// they pass, it takes its share.
func TestDiscoveryProbation(t *testing.T) {
	dnsSrv := startDNS(t)
	web, port := startSickables(t, "127.0.0.1", "127.0.0.3")
	web[1].sick.Store(true)
	dnsSrv.SetHost("app.corp.example", 1, netip.MustParseAddr("127.0.0.1"))
	h := newFileHarness(t, fmt.Sprintf(probationConfig, dnsSrv.Addr(), port))
	g := h.gw
	hc := h.httpClient(acmeClient)
	get := func() string {
		t.Helper()
		resp, err := hc.Get("http://10.100.0.9/who")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	newcomer := func() *backend {
		for _, b := range g.tbl.Load().byName["app"].st.backends.Load().list {
			if b.addr == netip.MustParseAddr("127.0.0.3") {
				return b
			}
		}
		return nil
	}

	dnsSrv.SetHost("app.corp.example", 1, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.3"))
	waitFor(t, 15*time.Second, "a failed check of the new address", func() bool {
		b := newcomer()
		return b != nil && b.describe().LastError != ""
	})
	for range 10 {
		if who := get(); who != "127.0.0.1" {
			t.Fatalf("a flow went to %s, a new address failing its checks", who)
		}
	}
	if ab := newcomer().describe(); ab.State != "unknown" || ab.Healthy {
		t.Fatalf("the new address: state %s, healthy %v; want unknown, not healthy", ab.State, ab.Healthy)
	}
	if v := metricValue(t, g, "ztgate_backend_healthy", "backend", "127.0.0.3", "service", "app"); v != 0 {
		t.Fatalf("gauge of the new address: %v", v)
	}

	web[1].sick.Store(false)
	waitFor(t, 15*time.Second, "the new address to come up", func() bool { return newcomer().usable() })
	seen := map[string]int{}
	for range 10 {
		seen[get()]++
	}
	if seen["127.0.0.1"] == 0 || seen["127.0.0.3"] == 0 {
		t.Fatalf("flows once the new address is up: %v", seen)
	}
}

// TestDiscoveryForgetsRemovedNames: when the service that named a backend
// is removed, its watcher stops and the answers for its names are
// forgotten; a service keeping its names keeps them.
func TestDiscoveryForgetsRemovedNames(t *testing.T) {
	dnsSrv := startDNS(t)
	port := startLineEcho(t, "one")
	dnsSrv.SetHost("app.corp.example", 60, netip.MustParseAddr("127.0.0.1"))
	dnsSrv.SetHost("other.corp.example", 60, netip.MustParseAddr("127.0.0.1"))
	config := discoveryConfig(dnsSrv.Addr(), `backends = ["app.corp.example"]`, "", port)
	i := strings.Index(config, "[[service]]")
	head, app := config[:i], config[i:]
	other := strings.NewReplacer(`name = "app"`, `name = "other"`, "10.100.0.9", "10.100.0.10",
		"app.corp.example", "other.corp.example").Replace(app)
	h := newFileHarness(t, head+app+other)
	cached := func() []string {
		d := h.gw.disc
		d.mu.Lock()
		defer d.mu.Unlock()
		var out []string
		for k := range d.cache {
			out = append(out, k)
		}
		for k := range d.watchers {
			out = append(out, "watcher "+k)
		}
		slices.Sort(out)
		return out
	}
	if got, want := fmt.Sprint(cached()), "[app.corp.example other.corp.example watcher app watcher other]"; got != want {
		t.Fatalf("before: %s, want %s", got, want)
	}
	h.write(t, head+other)
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(cached()), "[other.corp.example watcher other]"; got != want {
		t.Fatalf("after app was removed: %s, want %s", got, want)
	}
}

// blockedIn reports whether a goroutine waits for a mutex inside all of
// the functions named.
func blockedIn(funcs ...string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "sync.(*Mutex).Lock") || !strings.Contains(g, "runtime_SemacquireMutex") {
			continue
		}
		all := true
		for _, f := range funcs {
			all = all && strings.Contains(g, f)
		}
		if all {
			return true
		}
	}
	return false
}

// TestDiscoveryApplyRacesReload: a discovery watcher checks that its
// service is unchanged (discovery.apply) and then sets the backends it
// resolved, without holding anything a reload takes. A reload that replaces
// the service's host names by IP literals between the two has its backend
// set overwritten by the old names' addresses; the new spec has no names,
// so no watcher ever corrects it: the service runs on backends that are in
// no configuration until the next reload.
func TestDiscoveryApplyRacesReload(t *testing.T) {
	dnsSrv := startDNS(t)
	port := startLineEchoPair(t, "127.0.0.1", "one", "127.0.0.2", "two")
	dnsSrv.SetHost("app.corp.example", 1, netip.MustParseAddr("127.0.0.1"))
	h := newFileHarness(t, discoveryConfig(dnsSrv.Addr(), `backends = ["app.corp.example"]`, "", port))
	st := h.gw.stateOf("app")

	// The interleaving, made likely by holding the state's lock: the
	// reload's build waits for it first, then the watcher (its check
	// passed: the old table is still in), and the lock usually goes to
	// them in that order (the test fails in most runs, not all).
	st.mu.Lock()
	var unlock sync.Once
	defer unlock.Do(st.mu.Unlock)
	h.write(t, discoveryConfig(dnsSrv.Addr(), `backends = ["127.0.0.2"]`, "", port))
	reloaded := make(chan error, 1)
	go func() { _, err := h.gw.Reload(); reloaded <- err }()
	waitFor(t, 3*time.Second, "the reload to wait", func() bool {
		return blockedIn("(*Gateway).Reload")
	})
	waitFor(t, 3*time.Second, "the watcher to wait in apply", func() bool {
		return blockedIn("(*discovery).apply")
	})
	unlock.Do(st.mu.Unlock)
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the old watcher to stop", func() bool {
		h.gw.disc.mu.Lock()
		defer h.gw.disc.mu.Unlock()
		return len(h.gw.disc.watchers) == 0
	})
	time.Sleep(200 * time.Millisecond)
	if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != "[127.0.0.2:0]" {
		t.Fatalf("backends after the reload to 127.0.0.2: %s", got)
	}
}

// startDNS starts a DNS server for the test's names, stopped at its end.
func startDNS(t *testing.T) *resolvertest.Server {
	t.Helper()
	srv, err := resolvertest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// TestDiscoverySRVTargetFailureKeepsAddresses: an SRV target whose own
// lookup fails (the resolver answers SERVFAIL) keeps its last addresses, as
// a failed lookup of the SRV name or of a host name does; a target that no
// longer exists (NXDOMAIN) leaves, once a second NXDOMAIN confirms it
// (TestDiscoveryNegativeAnswers).
func TestDiscoverySRVTargetFailureKeepsAddresses(t *testing.T) {
	dnsSrv := startDNS(t)
	dnsSrv.SetHost("a.corp.example", 1, netip.MustParseAddr("127.0.0.1"))
	dnsSrv.SetHost("b.corp.example", 1, netip.MustParseAddr("127.0.0.2"))
	dnsSrv.SetSRV("_echo._tcp.app.corp.example", 1,
		resolver.SRV{Target: "a.corp.example", Port: 9, Priority: 10, Weight: 5},
		resolver.SRV{Target: "b.corp.example", Port: 9, Priority: 10, Weight: 5})
	h := newFileHarness(t, discoveryConfig(dnsSrv.Addr(), "", `backends_srv = "_echo._tcp.app.corp.example"`, 9))
	const both = "[127.0.0.1:9 127.0.0.2:9]"
	if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != both {
		t.Fatalf("SRV backends %s, want %s", got, both)
	}

	before := dnsSrv.Queries()
	dnsSrv.SetServFail("a.corp.example", true)
	// min_ttl is 100ms, max_ttl 1s: several rounds of lookups.
	waitFor(t, 15*time.Second, "a few rounds of lookups", func() bool { return dnsSrv.Queries()-before >= 30 })
	if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != both {
		t.Fatalf("while a.corp.example fails to resolve: backends %s, want %s", got, both)
	}
	dnsSrv.SetServFail("b.corp.example", true)
	before = dnsSrv.Queries()
	waitFor(t, 15*time.Second, "a few rounds of lookups", func() bool { return dnsSrv.Queries()-before >= 30 })
	if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != both {
		t.Fatalf("while every target fails to resolve: backends %s, want %s", got, both)
	}

	dnsSrv.SetServFail("a.corp.example", false)
	dnsSrv.SetServFail("b.corp.example", false)
	dnsSrv.SetHost("a.corp.example", 1)
	waitFor(t, 15*time.Second, "the target gone from DNS to leave", func() bool {
		return fmt.Sprint(backendAddrs(h.harness, "app")) == "[127.0.0.2:9]"
	})
}

// TestDiscoveryManyRecordsBounded: a name that answers thousands of
// addresses, or an SRV name of thousands of targets, gives a service at
// most maxDiscovered backends, and the same ones at every lookup (the
// lowest addresses of the best SRV records), not a set that grows with
// the answer or follows its order.
func TestDiscoveryManyRecordsBounded(t *testing.T) {
	many := func(n int, base string) []netip.Addr {
		out := make([]netip.Addr, n)
		a := netip.MustParseAddr(base)
		for i := range out {
			out[i], a = a, a.Next()
		}
		return out
	}
	noChecks := func(cfg string) string { return strings.Replace(cfg, `type = "tcp"`, `type = "none"`, 1) }
	t.Run("addresses", func(t *testing.T) {
		dnsSrv := startDNS(t)
		// 1,800 A records of 32 bytes each (the test server does not
		// compress names) fit a 64 KiB answer.
		addrs := many(1800, "127.1.0.1")
		dnsSrv.SetHost("app.corp.example", 1, append(addrs[900:], addrs[:900]...)...) // the lowest last
		h := newFileHarness(t, noChecks(discoveryConfig(dnsSrv.Addr(), `backends = ["app.corp.example"]`, "", 9)))
		got := backendAddrs(h.harness, "app")
		if len(got) != maxDiscovered {
			t.Fatalf("%d backends of an answer of 1800 addresses, want %d", len(got), maxDiscovered)
		}
		want := make([]string, maxDiscovered)
		for i := range want {
			want[i] = addrs[i].String() + ":0"
		}
		slices.Sort(want)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("backends %v..., want the lowest addresses %v...", got[:3], want[:3])
		}
		before := dnsSrv.Queries()
		waitFor(t, 15*time.Second, "a few rounds of lookups", func() bool { return dnsSrv.Queries()-before >= 6 })
		if got := backendAddrs(h.harness, "app"); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after more lookups: %d backends, want the same %d", len(got), maxDiscovered)
		}
	})
	t.Run("srv", func(t *testing.T) {
		dnsSrv := startDNS(t)
		var recs []resolver.SRV
		for i := range 1000 {
			target := fmt.Sprintf("t%d.corp.example", i)
			dnsSrv.SetHost(target, 60, many(4, fmt.Sprintf("127.2.%d.%d", i/50, 1+i%50*4))...)
			recs = append(recs, resolver.SRV{Target: target, Port: 9, Priority: uint16(10 + i%3), Weight: 5})
		}
		dnsSrv.SetSRV("_echo._tcp.app.corp.example", 60, recs...)
		cfg := strings.Replace(discoveryConfig(dnsSrv.Addr(), "", `backends_srv = "_echo._tcp.app.corp.example"`, 9), `max_ttl = "1s"`, `max_ttl = "60s"`, 1)
		h := newFileHarness(t, noChecks(cfg))
		if got := backendAddrs(h.harness, "app"); len(got) > maxDiscovered {
			t.Fatalf("%d backends of 1000 SRV targets of 4 addresses, want at most %d", len(got), maxDiscovered)
		}
		waitFor(t, 15*time.Second, "the watcher's first lookups", func() bool { return len(backendAddrs(h.harness, "app")) == maxDiscovered })
		for _, b := range h.gw.stateOf("app").backends.Load().list {
			if b.priority() != 10 {
				t.Fatalf("backend %v of priority %d kept while records of priority 10 were left out", b.addr, b.priority())
			}
		}
	})
}

// TestDiscoverySilentResolverStartsQuickly: with a resolver that never
// answers, a gateway whose services name many hosts starts within one
// first lookup's bound (firstLookupTimeout), not one per name, and its
// reloads and API changes, which build the table too, wait as long at
// most.
func TestDiscoverySilentResolverStartsQuickly(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ns := netip.MustParseAddrPort(pc.LocalAddr().String())
	var names []string
	for i := range 8 {
		names = append(names, fmt.Sprintf("%q", fmt.Sprintf("app%d.corp.example", i)))
	}
	cfg := discoveryConfig(ns, "backends = ["+strings.Join(names, ", ")+"]", "", 9)
	start := time.Now()
	h := newFileHarness(t, cfg)
	if took := time.Since(start); took > 3*firstLookupTimeout {
		t.Fatalf("the gateway took %v to start with 8 names and a silent resolver; want about %v", took, firstLookupTimeout)
	}
	if got := backendAddrs(h.harness, "app"); len(got) != 0 {
		t.Fatalf("backends %v with a silent resolver", got)
	}
}

// TestDiscoveryOrderIgnoresAnswerOrder: resolvers rotate the addresses of
// their answers (round-robin DNS), and the backend set of a name followed
// each answer's order: with a flow or two between lookups, round_robin
// sent every flow to the same backend (the turn moved on by one as the
// answer rotated by one), and the order of a name's backends changed at
// every lookup. A name's backends are in address order, whatever the
// answer's, for a host name as for an SRV record's target.
func TestDiscoveryOrderIgnoresAnswerOrder(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	kinds := []struct {
		name   string
		lookup func(context.Context, *discovery) (resolved, time.Duration)
	}{
		{"host name", func(ctx context.Context, d *discovery) (resolved, time.Duration) {
			return d.lookupHost(ctx, "app.corp.example")
		}},
		{"SRV target", func(ctx context.Context, d *discovery) (resolved, time.Duration) {
			return d.lookupSRV(ctx, "_app._tcp.corp.example", resolved{})
		}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			dnsSrv := startDNS(t)
			dnsSrv.SetSRV("_app._tcp.corp.example", 60, resolver.SRV{Target: "app.corp.example", Port: 80})
			g, _ := newUnitGateway(t)
			g.cfg.Discovery = conf.Discovery{Nameservers: []netip.AddrPort{dnsSrv.Addr()}, MinTTL: time.Second, MaxTTL: time.Minute}
			d := newDiscovery(g)
			st := g.state("app")
			got := map[netip.Addr]int{}
			for i := range 8 {
				answer := []netip.Addr{a, b}
				if i%2 == 1 {
					answer = []netip.Addr{b, a} // rotated since the last lookup
				}
				dnsSrv.SetHost("app.corp.example", 60, answer...)
				r, _ := k.lookup(context.Background(), d)
				st.setBackends(r.addrs, false)
				set := st.backends.Load()
				if len(set.list) != 2 || set.list[0].addr != a {
					t.Fatalf("lookup %d answered %v: backends in the order %v, want %v first", i+1, answer, addrList(set.list), a)
				}
				got[st.picker.pick(set, catalog.RoundRobin, acmeClient, nil).addr]++
			}
			if got[a] != 4 || got[b] != 4 {
				t.Fatalf("round_robin over a rotating answer: %v, want 4 flows each", got)
			}
		})
	}
}

// TestDiscoveredAddressProbationAcrossReload: an address discovered for a
// running service takes flows once its checks bring it up, also when a
// reload builds the table from the watcher's answer before the watcher
// has applied it — a reload between a lookup and its application, or
// after another service's watcher asked the same name. The reload took
// the address in as one configured (no probation: it took flows before
// any check), and the watcher then found nothing new to apply.
func TestDiscoveredAddressProbationAcrossReload(t *testing.T) {
	dnsSrv := startDNS(t)
	one, two := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	dnsSrv.SetHost("app.corp.example", 3600, one)
	config := fmt.Sprintf(`
[gateway]
state_dir = "STATE"
[api]
listen = "off"
[discovery]
nameservers = ["%s"]
min_ttl = "1h"
max_ttl = "1h"
%s[[service]]
name = "app"
tenants = ["acme"]
vip = "10.100.0.9"
backends = ["192.0.2.1", "app.corp.example"]
  [[service.port]]
  protocol = "tcp"
  port = 7
  target = 7
  [service.health]
  type = "tcp"
  interval = "1h"
`, dnsSrv.Addr(), acmeTenant)
	h := newFileHarnessWith(t, config, nil, []netip.Addr{acmeClient}, func(g *Gateway) {
		g.stateOf("app").health.randN = func(n int64) int64 { return n - 1 } // no check within the test
	})
	// What a watcher's lookup stores before its answer is applied.
	h.gw.disc.store("app.corp.example", resolved{addrs: []backendAddr{
		{addr: one, origin: "app.corp.example"}, {addr: two, origin: "app.corp.example"}}})
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	for _, b := range h.gw.stateOf("app").backends.Load().list {
		if takes, want := b.describe().Healthy, b.addr != two; takes != want {
			t.Errorf("%s (%s) takes new flows: %v, want %v", b.addr, b.origin(), takes, want)
		}
	}
}
