package gateway

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// TestPassiveFailureAfterChecksOff: a TCP flow classified by the table
// before a reload dials its backend; the reload turns the service's checks
// off (type none), which forgets the backend's state; then the dial fails.
// The failure must not count as a failed check (the old table's fall 1
// would take the backend down, and with no checker left nothing would
// bring it back): only its error is kept.
func TestPassiveFailureAfterChecksOff(t *testing.T) {
	g, svc, _ := checkedService(t) // web, 192.0.2.10, TCP checks, fall 1
	st := svc.st
	b := st.backends.Load().list[0]

	// The reload: same service, checks off.
	none := &service{spec: catalog.Service{Name: "web", Health: catalog.Health{Type: catalog.HealthNone}}, st: st}
	g.tbl.Store(&table{byName: map[string]*service{"web": none}})
	g.syncHealth()

	// The dial of the flow classified before the reload fails now.
	g.passiveFailure(svc, b, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})

	st.health.mu.Lock()
	e := st.health.entries[b]
	running := e != nil && e.cancel != nil
	st.health.mu.Unlock()
	if !b.usable() && !running {
		t.Fatalf("backend %s in state %s with no check running: out of rotation for good", b.addr, b.state)
	}
}

// TestHTTPCheckHostOfSRVBackend: an HTTP check of a backend found by
// backends_srv sends its SRV record's target as Host, not the SRV owner
// name (the backend's origin), which is no host name of the backend: a
// server with virtual hosts answered 404 or 421, and the working backend
// was marked down.
func TestHTTPCheckHostOfSRVBackend(t *testing.T) {
	const srv = "_http._tcp.corp.example"
	var (
		mu    sync.Mutex
		hosts []string
	)
	ts := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.Host)
		mu.Unlock()
		if strings.HasPrefix(r.Host, "_") { // a virtual host server: unknown host
			http.Error(w, "no such site", http.StatusMisdirectedRequest)
			return
		}
	}), ReadHeaderTimeout: 5 * time.Second}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); ts.Serve(l) }()
	t.Cleanup(func() { ts.Close(); <-done })
	port := uint16(l.Addr().(*net.TCPAddr).Port)

	g, _ := newUnitGateway(t)
	clk := newFakeClock()
	st := g.state("web")
	st.health.clock = clk
	st.health.randN = func(int64) int64 { return 0 }
	// What lookupSRV makes of an SRV record web1.corp.example:<port>.
	st.setBackends([]backendAddr{{addr: netip.MustParseAddr("127.0.0.1"), origin: srv, host: "web1.corp.example", port: port, priority: 10, weight: 1}}, false)
	// health.port is its default, the service's target: the record's port is checked.
	h := catalog.Health{Type: catalog.HealthHTTP, Port: 80, Path: "/", Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
	ports := []catalog.Port{{Protocol: catalog.TCP, Port: 80, Target: 80}}
	g.tbl.Store(&table{byName: map[string]*service{"web": {spec: catalog.Service{Name: "web", BackendsSRV: srv, Ports: ports, Health: h}, st: st}}})
	g.syncHealth()
	clk.waitPending(t, 1)
	b := st.backends.Load().list[0]
	clk.Advance(0) // the first check
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(t, g, "ztgate_health_checks_total", "result", "fail", "service", "web")+
		metricValue(t, g, "ztgate_health_checks_total", "result", "ok", "service", "web") < 0 {
		if time.Now().After(deadline) {
			t.Fatal("no check result")
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hosts) == 0 || hosts[0] != "web1.corp.example" {
		b.mu.Lock()
		defer b.mu.Unlock()
		t.Fatalf("check sent Host %q, want the SRV target web1.corp.example; backend now %s, last error %q", hosts, b.state, b.lastErr)
	}
}

// TestKeptBackendTakesItsNewName: a reload that names a backend by another
// host name resolving to the same address keeps the backend (its flows and
// health), under its new name: the drain API finds it by the name it is
// configured by now, and its HTTP checks send that name.
func TestKeptBackendTakesItsNewName(t *testing.T) {
	_, svc, _, api := drainGateway(t) // 192.0.2.11 as app2.corp.example
	st := svc.st
	// The reload: backends = ["192.0.2.10", "app3.corp.example"], and
	// app3.corp.example resolves to 192.0.2.11 too.
	st.setBackends([]backendAddr{
		{addr: netip.MustParseAddr("192.0.2.10"), origin: "192.0.2.10"},
		{addr: netip.MustParseAddr("192.0.2.11"), origin: "app3.corp.example"},
	}, false)
	if status, body := serveAPI(t, api, "POST", "/v1/services/web/backends/app3.corp.example/drain", "", ""); status != http.StatusOK {
		t.Errorf("drain by the configured name: %d %s", status, body)
	}
	b := st.backends.Load().list[1]
	if b.origin() != "app3.corp.example" || b.checkHost() != "app3.corp.example" {
		t.Errorf("backend named %q (checks send %q) after the reload, want app3.corp.example", b.origin(), b.checkHost())
	}
}

// TestDrainDeadlinePassesOnce: a drain deadline that has passed is not
// armed again by later syncs (a reload, a discovery change): it "passed"
// again at each, with a sweep of the flows and a log line.
func TestDrainDeadlinePassesOnce(t *testing.T) {
	g, svc, clk, _ := drainGateway(t)
	st := svc.st
	b := st.backends.Load().list[0]
	g.syncHealth()
	g.drainBackends(st, []*backend{b}, 30*time.Second)
	f := testFlow(g, svc, b)
	clk.Advance(30 * time.Second)
	if _, closed := f.closed(); !closed {
		t.Fatal("deadline did not close the flow")
	}
	for range 3 {
		g.syncHealth() // e.g. discovery changes
	}
	st.health.mu.Lock()
	e := st.health.entries[b]
	armed := e != nil && e.drain != nil
	st.health.mu.Unlock()
	n := clk.pending()
	clk.Advance(0)
	if armed {
		t.Fatalf("a passed drain deadline was armed again (%d timers pending)", n)
	}
}

// TestBackendBackAfterItsFlowsEnded: a backend that left its service while
// a flow was bound to it is the same one when it comes back while the flow
// runs (its health and drain with it). Once its flows have ended it comes
// back as a new one, as one that left without flows does. It came back as
// the one that left — down, or draining — when no other change of the set
// came between the end of its flows and its return, and as a new one when
// one did (a reload of any service, each lookup of a discovered name).
func TestBackendBackAfterItsFlowsEnded(t *testing.T) {
	a := backendAddr{addr: netip.MustParseAddr("192.0.2.10"), origin: "192.0.2.10"}
	other := backendAddr{addr: netip.MustParseAddr("192.0.2.11"), origin: "192.0.2.11"}
	tests := []struct {
		name    string
		flowEnd bool // its flow ended before it came back
		between bool // another change of the set came between
		same    bool
	}{
		{"back while its flow runs", false, false, true},
		{"back while its flow runs, after another change", false, true, true},
		{"back after its flow ended", true, false, false},
		{"back after its flow ended and another change", true, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newServiceState("web")
			st.setBackends([]backendAddr{a, other}, false)
			b := st.backends.Load().list[0]
			b.record("connection refused", 1, 1, time.Now()) // down
			b.active.Add(1)                                  // a flow
			st.setBackends([]backendAddr{other}, false)      // it leaves
			if tc.flowEnd {
				b.active.Add(-1)
			}
			if tc.between {
				st.setBackends([]backendAddr{other}, false)
			}
			st.setBackends([]backendAddr{a, other}, false) // it is back
			back := st.backends.Load().list[0]
			if same := back == b; same != tc.same {
				t.Fatalf("came back as the one that left: %v, want %v (state %s)", same, tc.same, back.state)
			}
		})
	}
}
