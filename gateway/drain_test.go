package gateway

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

func TestParseDrainDeadline(t *testing.T) {
	cases := []struct {
		name, body, query string
		want              time.Duration
		wantErr           string
	}{
		{"no body, no query", "", "", 0, ""},
		{"blank body", " \n", "", 0, ""},
		{"empty object", "{}", "", 0, ""},
		{"null", "null", "", 0, ""},
		{"body deadline", `{"deadline": "30s"}`, "", 30 * time.Second, ""},
		{"query deadline", "", "1m", time.Minute, ""},
		{"both agree", `{"deadline": "30s"}`, "30s", 30 * time.Second, ""},
		{"both differ", `{"deadline": "30s"}`, "1m", 0, "differ"},
		{"empty deadline is none", `{"deadline": ""}`, "", 0, ""},
		{"not JSON", `deadline=30s`, "", 0, "body"},
		{"unknown field", `{"deadline": "30s", "force": true}`, "", 0, "unknown field"},
		{"number instead of string", `{"deadline": 30}`, "", 0, "body"},
		{"trailing data", `{"deadline": "30s"} {}`, "", 0, "after the JSON object"},
		{"not a duration", `{"deadline": "soon"}`, "", 0, "is not a duration"},
		{"zero", "", "0s", 0, "is not a duration"},
		{"negative", `{"deadline": "-5s"}`, "", 0, "is not a duration"},
		{"too long", "", "200h", 0, "is not a duration"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDrainDeadline([]byte(tc.body), tc.query)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func FuzzParseDrainDeadline(f *testing.F) {
	for _, s := range [][2]string{
		{"", ""}, {`{"deadline": "30s"}`, ""}, {"", "1m"}, {`{"deadline": "30s"}`, "1m"},
		{`{"deadline": 1}`, ""}, {"null", ""}, {`{"deadline":"1h"} x`, ""}, {"", "-1s"},
	} {
		f.Add([]byte(s[0]), s[1])
	}
	f.Fuzz(func(t *testing.T, body []byte, query string) {
		d, err := parseDrainDeadline(body, query)
		if err != nil && d != 0 {
			t.Fatalf("error %v with deadline %v", err, d)
		}
		if d < 0 || d > maxDrainDeadline {
			t.Fatalf("deadline %v out of range", d)
		}
	})
}

// drainGateway is a unit gateway with service web (backends 192.0.2.10 and
// 192.0.2.11, the latter configured as app2.corp.example) on a fake clock.
func drainGateway(t *testing.T) (*Gateway, *service, *fakeClock, http.Handler) {
	t.Helper()
	g, _ := newUnitGateway(t)
	clk := newFakeClock()
	st := g.state("web")
	st.health.clock = clk
	st.setBackends([]backendAddr{
		{addr: netip.MustParseAddr("192.0.2.10"), origin: "192.0.2.10"},
		{addr: netip.MustParseAddr("192.0.2.11"), origin: "app2.corp.example"},
	}, false)
	svc := &service{spec: catalog.Service{Name: "web"}, st: st}
	g.tbl.Store(&table{byName: map[string]*service{"web": svc}, byVIP: map[netip.Addr]*service{}})
	return g, svc, clk, g.apiHandler("")
}

// call serves one API request and decodes the JSON answer into v.
func call(t *testing.T, h http.Handler, method, path, body string, v any) int {
	t.Helper()
	code, answer := serveAPI(t, h, method, path, body, "")
	if v != nil {
		if err := json.Unmarshal([]byte(answer), v); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, path, code, answer, err)
		}
	}
	return code
}

// serveAPI serves one API request, with the bearer token when it is not "",
// and returns the answer's status and body.
func serveAPI(t *testing.T, h http.Handler, method, path, body, token string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(method, "http://127.0.0.1:7780"+path, strings.NewReader(body))
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	h.ServeHTTP(rec, r)
	return rec.Code, rec.Body.String()
}

func TestDrainAPI(t *testing.T) {
	g, svc, _, h := drainGateway(t)
	cases := []struct {
		name, path, body string
		status           int
		states           string // state of the two backends after, comma-separated
	}{
		{"unknown service", "/v1/services/nope/backends/192.0.2.10/drain", "", 404, "unknown,unknown"},
		{"unknown backend", "/v1/services/web/backends/192.0.2.99/drain", "", 404, "unknown,unknown"},
		{"not an address", "/v1/services/web/backends/x/drain", "", 404, "unknown,unknown"},
		{"bad body", "/v1/services/web/backends/192.0.2.10/drain", "{", 400, "unknown,unknown"},
		{"bad deadline", "/v1/services/web/backends/192.0.2.10/drain?deadline=soon", "", 400, "unknown,unknown"},
		{"body too large", "/v1/services/web/backends/192.0.2.10/drain", `{"deadline": "` + strings.Repeat("1", 1<<20) + `"}`, 413, "unknown,unknown"},
		{"drain by address", "/v1/services/web/backends/192.0.2.10/drain", "", 200, "draining,unknown"},
		{"drain again", "/v1/services/web/backends/192.0.2.10/drain", `{"deadline": "30s"}`, 200, "draining,unknown"},
		{"drain by host name", "/v1/services/web/backends/app2.corp.example/drain?deadline=1m", "", 200, "draining,draining"},
		{"undrain", "/v1/services/web/backends/192.0.2.10/undrain", "", 200, "unknown,draining"},
		{"undrain unknown backend", "/v1/services/web/backends/192.0.2.99/undrain", "", 404, "unknown,draining"},
		{"undrain twice", "/v1/services/web/backends/192.0.2.10/undrain", "", 200, "unknown,draining"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out struct {
				Errors   []string     `json:"errors"`
				Backends []apiBackend `json:"backends"`
			}
			if got := call(t, h, "POST", tc.path, tc.body, &out); got != tc.status {
				t.Fatalf("status %d, want %d: %v", got, tc.status, out.Errors)
			}
			if tc.status != 200 && len(out.Errors) == 0 {
				t.Fatal("error answer without errors")
			}
			var list struct {
				Services []apiService `json:"services"`
			}
			call(t, h, "GET", "/v1/services", "", &list)
			var states []string
			for _, b := range list.Services[0].Backends {
				states = append(states, b.State)
				if b.Healthy == (b.State == "draining") {
					t.Errorf("%s: healthy %v in state %s", b.Address, b.Healthy, b.State)
				}
			}
			if got := strings.Join(states, ","); got != tc.states {
				t.Fatalf("states %s, want %s", got, tc.states)
			}
		})
	}
	if v := metricValue(t, g, "ztgate_backend_healthy", "backend", "192.0.2.11", "service", "web"); v != 0 {
		t.Fatalf("gauge of the draining backend %v, want 0", v)
	}
	if b := svc.st.backends.Load().list[1]; b.drainUntil.IsZero() {
		t.Fatal("drain with a deadline shows no drain_until")
	}
}

// TestDrainDeadline follows the flows of a drained backend on a fake clock:
// they survive until the deadline, then close with reason "drained"; an
// undrain or a newer drain cancels the older deadline.
func TestDrainDeadline(t *testing.T) {
	cases := []struct {
		name    string
		actions []string // "drain:<deadline>", "undrain", "advance:<d>"
		closed  bool     // the drained backend's flow at the end
	}{
		{"no deadline: flows go on", []string{"drain:", "advance:24h"}, false},
		{"before the deadline: flows go on", []string{"drain:30s", "advance:29s"}, false},
		{"at the deadline: flows close", []string{"drain:30s", "advance:30s"}, true},
		{"undrain cancels the deadline", []string{"drain:30s", "advance:10s", "undrain", "advance:1h"}, false},
		{"a new drain replaces the deadline", []string{"drain:30s", "advance:10s", "drain:1m", "advance:50s"}, false},
		{"the new deadline applies", []string{"drain:30s", "advance:10s", "drain:1m", "advance:60s"}, true},
		{"drain without deadline drops one", []string{"drain:30s", "drain:", "advance:1h"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, svc, clk, _ := drainGateway(t)
			bs := svc.st.backends.Load().list
			drained, other := testFlow(g, svc, bs[0]), testFlow(g, svc, bs[1])
			for _, a := range tc.actions {
				verb, arg, _ := strings.Cut(a, ":")
				switch verb {
				case "drain":
					d, _ := time.ParseDuration(arg) // "" is no deadline
					g.drainBackends(svc.st, bs[:1], d)
				case "undrain":
					g.undrainBackends(svc.st, bs[:1])
				case "advance":
					d, _ := time.ParseDuration(arg)
					clk.Advance(d)
				}
			}
			reason, closed := drained.closed()
			if closed != tc.closed || (closed && reason != "drained") {
				t.Fatalf("drained backend's flow: closed %v (%q), want %v", closed, reason, tc.closed)
			}
			if _, closed := other.closed(); closed {
				t.Fatal("a flow of the other backend was closed")
			}
		})
	}
}

// testFlow registers a flow bound to b with no connections.
func testFlow(g *Gateway, svc *service, b *backend) *flow {
	f := &flow{proto: "tcp", svc: svc, backend: b, done: make(chan struct{})}
	g.flows.add(f)
	return f
}

// TestDrainDeadlineKeptByAddBack: a service removed while a flow of it
// runs keeps its state, its backends and their drains; added back before
// that flow ends, a drained backend's deadline is armed again (the removal
// stopped its timer) and still closes the backend's flows when it passes.
func TestDrainDeadlineKeptByAddBack(t *testing.T) {
	g, svc, clk, _ := drainGateway(t)
	st := svc.st
	b := st.backends.Load().list[0]
	in := g.tbl.Load()
	empty := &table{byName: map[string]*service{}, byVIP: map[netip.Addr]*service{}}
	armed := func() bool {
		st.health.mu.Lock()
		defer st.health.mu.Unlock()
		e := st.health.entries[b]
		return e != nil && e.drain != nil
	}
	g.syncHealth()
	g.drainBackends(st, []*backend{b}, 30*time.Second)
	if !armed() {
		t.Fatal("no deadline after the drain")
	}
	if reason := st.reserveFlow(0); reason != "" { // a flow of the service runs
		t.Fatal(reason)
	}
	g.tbl.Store(empty) // removed
	g.syncHealth()
	g.reconcileStates(empty)
	clk.Advance(10 * time.Second)
	if g.state("web") != st { // added back
		t.Fatal("the state of a service with a live flow was not taken up again")
	}
	g.tbl.Store(in)
	g.syncHealth()
	g.reconcileStates(in)
	if !b.isDraining() || !armed() {
		t.Fatalf("after the service came back: draining %v, deadline armed %v", b.isDraining(), armed())
	}
	clk.Advance(19 * time.Second)
	if !armed() {
		t.Fatal("the deadline fired early")
	}
	clk.Advance(2 * time.Second) // 31 s after the drain
	if armed() {
		t.Fatal("the deadline did not fire 30 s after the drain")
	}
}

// TestDrainOfFreedState: a drain or undrain that found the service before
// its removal freed the state answers 404, not 200, and the service's
// description never shows the freed state's flow count.
func TestDrainOfFreedState(t *testing.T) {
	g, svc, _, api := drainGateway(t)
	bs := svc.st.backends.Load().list
	// Removed with no flows, so freed, while the table the handlers read
	// still has the service.
	g.reconcileStates(&table{byName: map[string]*service{}, byVIP: map[netip.Addr]*service{}})
	if n := g.describeService(svc).ActiveFlows; n != 0 {
		t.Errorf("a freed service's active flows: %d", n)
	}
	if g.drainBackends(svc.st, bs, time.Second) || g.undrainBackends(svc.st, bs) {
		t.Error("a drain of a freed state reported success")
	}
	for _, path := range []string{"drain", "undrain"} {
		if status, body := serveAPI(t, api, "POST", "/v1/services/web/backends/192.0.2.10/"+path, "", ""); status != http.StatusNotFound {
			t.Errorf("%s of a freed service: %d %s", path, status, body)
		}
	}
}

// srvDrainGateway is a unit gateway with service web: 192.0.2.10 given by
// address, and from SRV records 192.0.2.20 on ports 8080 and 8081 and
// 2001:db8::20 on 8080.
func srvDrainGateway(t *testing.T) (*service, http.Handler) {
	t.Helper()
	g, _ := newUnitGateway(t)
	st := g.state("web")
	st.health.clock = newFakeClock()
	const srv = "_web._tcp.corp.example"
	srvAddr := func(addr string, port uint16) backendAddr {
		return backendAddr{addr: netip.MustParseAddr(addr), origin: srv, host: "a.corp.example", port: port, priority: 10, weight: 1}
	}
	st.setBackends([]backendAddr{
		{addr: netip.MustParseAddr("192.0.2.10"), origin: "192.0.2.10"},
		srvAddr("192.0.2.20", 8080), srvAddr("192.0.2.20", 8081), srvAddr("2001:db8::20", 8080),
	}, false)
	svc := &service{spec: catalog.Service{Name: "web", BackendsSRV: srv}, st: st}
	g.tbl.Store(&table{byName: map[string]*service{"web": svc}, byVIP: map[netip.Addr]*service{}})
	return svc, g.apiHandler("")
}

// TestSRVBackendsListed: GET /v1/services names each backend as the
// metrics' backend label does, address:port for one from an SRV record,
// with the record's port apart, so that two SRV backends on one address
// can be told apart; address stays the address.
func TestSRVBackendsListed(t *testing.T) {
	_, h := srvDrainGateway(t)
	var list struct {
		Services []struct {
			Backends []map[string]any `json:"backends"`
		} `json:"services"`
	}
	if code := call(t, h, "GET", "/v1/services", "", &list); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	type row struct {
		address, backend string
		port             float64 // 0: no port field
	}
	want := []row{
		{"192.0.2.10", "192.0.2.10", 0},
		{"192.0.2.20", "192.0.2.20:8080", 8080},
		{"192.0.2.20", "192.0.2.20:8081", 8081},
		{"2001:db8::20", "[2001:db8::20]:8080", 8080},
	}
	var got []row
	for _, b := range list.Services[0].Backends {
		port, hasPort := b["port"].(float64)
		if _, present := b["port"]; present && !hasPort {
			t.Errorf("backend %v: port is not a number", b)
		}
		address, _ := b["address"].(string)
		backend, _ := b["backend"].(string)
		got = append(got, row{address, backend, port})
	}
	if !slices.Equal(got, want) {
		t.Errorf("backends %v, want %v", got, want)
	}
}

// TestDrainSRVBackendByPort: the drain API names one SRV backend by its
// address and port, as the listing and the metrics do; an address alone
// still drains every backend on that address, and the SRV name all of
// its backends.
func TestDrainSRVBackendByPort(t *testing.T) {
	cases := []struct {
		name, backend string
		status        int
		draining      []string // labels of the draining backends after
		errHas        string   // in the error of a failure
	}{
		{"address:port: that backend alone", "192.0.2.20:8080", 200, []string{"192.0.2.20:8080"}, ""},
		{"the other port", "192.0.2.20:8081", 200, []string{"192.0.2.20:8081"}, ""},
		{"address: every backend on it", "192.0.2.20", 200, []string{"192.0.2.20:8080", "192.0.2.20:8081"}, ""},
		{"IPv6 address:port", "[2001:db8::20]:8080", 200, []string{"[2001:db8::20]:8080"}, ""},
		{"IPv6 address:port, escaped", "%5B2001:db8::20%5D:8080", 200, []string{"[2001:db8::20]:8080"}, ""},
		{"IPv6 address", "2001:db8::20", 200, []string{"[2001:db8::20]:8080"}, ""},
		{"the SRV name: all of its backends", "_web._tcp.corp.example", 200, []string{"192.0.2.20:8080", "192.0.2.20:8081", "[2001:db8::20]:8080"}, ""},
		{"a port no record has", "192.0.2.20:9000", 404, nil, `service "web" has no backend "192.0.2.20:9000"`},
		{"a backend given by address has no port of its own", "192.0.2.10:80", 404, nil, "name one given by address by its address (192.0.2.10)"},
		{"port out of range", "192.0.2.20:70000", 404, nil, `no backend "192.0.2.20:70000"`},
		{"no backend on the address", "192.0.2.99:8080", 404, nil, `no backend "192.0.2.99:8080"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svc, h := srvDrainGateway(t)
			var out struct {
				Errors []string `json:"errors"`
			}
			if got := call(t, h, "POST", "/v1/services/web/backends/"+tc.backend+"/drain", "", &out); got != tc.status {
				t.Fatalf("status %d, want %d: %v", got, tc.status, out.Errors)
			}
			if tc.status != 200 && (len(out.Errors) != 1 || !strings.Contains(out.Errors[0], tc.errHas)) {
				t.Fatalf("errors %q, want one with %q", out.Errors, tc.errHas)
			}
			var draining []string
			for _, b := range svc.st.backends.Load().list {
				if b.describe().State == "draining" {
					draining = append(draining, b.label())
				}
			}
			if !slices.Equal(draining, tc.draining) {
				t.Fatalf("draining %q, want %q", draining, tc.draining)
			}
			if tc.status != 200 {
				return
			}
			if got := call(t, h, "POST", "/v1/services/web/backends/"+tc.backend+"/undrain", "", &out); got != 200 {
				t.Fatalf("undrain: status %d: %v", got, out.Errors)
			}
			for _, b := range svc.st.backends.Load().list {
				if s := b.describe().State; s == "draining" {
					t.Errorf("%s still draining after undrain", b.label())
				}
			}
		})
	}
}
