package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/adminapi"
)

const drainPath = "/v1/services/web/backends/127.0.0.1/drain"

// apiCall sends one request to the gateway's API handler and returns the
// status and body; the body of every answer must be JSON.
func apiCall(t testing.TB, h http.Handler, method, path string, body []byte) (int, []byte) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "http://127.0.0.1:7780"+path, bytes.NewReader(body)))
	out := rec.Body.Bytes()
	if rec.Code != http.StatusNoContent && !json.Valid(out) {
		t.Fatalf("%s %s answered %d with a body that is not JSON: %q", method, path, rec.Code, out)
	}
	return rec.Code, out
}

// TestAPIBadBodies sends oversized and malformed bodies to the endpoints
// that read one, and a request without the token: 413, 400 or 401 with the
// errors, counted by reason in ztgate_api_requests_rejected_total, and
// nothing changes.
func TestAPIBadBodies(t *testing.T) {
	h := newHarness(t, limitsConfig(startHold(t), "", "", ""))
	api := h.gw.apiHandler("")
	locked := h.gw.apiHandler("s3cret")
	huge := append([]byte(`{"name": "big", "tenants": ["`), bytes.Repeat([]byte("a"), adminapi.MaxBodyBytes)...)
	cases := []struct {
		name, path string
		body       []byte
		status     int
		reason     adminapi.Reason // "": not a rejection, nothing counted
		noToken    bool
	}{
		{"service: oversized", "/v1/services", huge, http.StatusRequestEntityTooLarge, adminapi.BodyTooLarge, false},
		{"service: empty", "/v1/services", nil, http.StatusBadRequest, adminapi.InvalidRequest, false},
		{"service: not JSON", "/v1/services", []byte("name = 'web'"), http.StatusBadRequest, adminapi.MalformedBody, false},
		{"service: truncated", "/v1/services", []byte(`{"name": "x", "tenants": [`), http.StatusBadRequest, adminapi.MalformedBody, false},
		{"service: array", "/v1/services", []byte(`[{"name": "x"}]`), http.StatusBadRequest, adminapi.InvalidRequest, false},
		{"service: unknown field", "/v1/services", []byte(`{"name": "x", "tenants": ["*"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 1}], "evil": 1}`), http.StatusBadRequest, adminapi.InvalidRequest, false},
		{"service: wrong types", "/v1/services", []byte(`{"name": 7, "tenants": "acme", "port": {"port": -1}}`), http.StatusBadRequest, adminapi.InvalidRequest, false},
		{"service: trailing data", "/v1/services", []byte(`{"name": "x", "tenants": ["*"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 1}]} {}`), http.StatusBadRequest, adminapi.MalformedBody, false},
		{"service: NUL bytes", "/v1/services", []byte("{\"name\": \"x\x00\"}"), http.StatusBadRequest, adminapi.MalformedBody, false},
		{"service: exists", "/v1/services", []byte(`{"name": "web", "tenants": ["*"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 1}]}`), http.StatusConflict, "", false},
		{"service: no token", "/v1/services", []byte(`{"name": "x", "tenants": ["*"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 1}]}`), http.StatusUnauthorized, adminapi.Unauthorized, true},
		{"drain: oversized", drainPath, huge, http.StatusRequestEntityTooLarge, adminapi.BodyTooLarge, false},
		{"drain: not JSON", drainPath, []byte("30s"), http.StatusBadRequest, adminapi.MalformedBody, false},
		{"drain: unknown field", drainPath, []byte(`{"deadline": "1s", "force": true}`), http.StatusBadRequest, adminapi.InvalidRequest, false},
		{"drain: negative", drainPath, []byte(`{"deadline": "-1s"}`), http.StatusBadRequest, adminapi.InvalidRequest, false},
		{"drain: too long", drainPath, []byte(`{"deadline": "100000h"}`), http.StatusBadRequest, adminapi.InvalidRequest, false},
		{"drain: trailing data", drainPath, []byte(`{"deadline": "1s"}x`), http.StatusBadRequest, adminapi.MalformedBody, false},
		{"drain: no token", drainPath, []byte(`{"deadline": "1s"}`), http.StatusUnauthorized, adminapi.Unauthorized, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := rejections(t, h.gw)
			srv := api
			if tc.noToken {
				srv = locked
			}
			status, body := apiCall(t, srv, http.MethodPost, tc.path, tc.body)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			var e struct{ Errors []string }
			if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
				t.Fatalf("no errors in %s", body)
			}
			after := rejections(t, h.gw)
			for r, n := range after {
				want := before[r]
				if r == tc.reason {
					want++
				}
				if n < 0 || n != want {
					t.Errorf("ztgate_api_requests_rejected_total{reason=%q} went from %v to %v, want %v", r, before[r], n, want)
				}
			}
		})
	}
	if names := serviceNames(h.gw); !slices.Equal(names, []string{"web"}) {
		t.Fatalf("services after bad requests: %v", names)
	}
	if b := h.gw.tbl.Load().byName["web"].st.backends.Load().list[0]; b.describe().State == "draining" {
		t.Fatal("a bad drain request drained the backend")
	}
}

// rejections returns ztgate_api_requests_rejected_total by reason.
func rejections(t *testing.T, g *Gateway) map[adminapi.Reason]float64 {
	t.Helper()
	out := map[adminapi.Reason]float64{}
	for _, r := range []adminapi.Reason{adminapi.Unauthorized, adminapi.NoRoute, adminapi.MalformedRequest,
		adminapi.BodyTooLarge, adminapi.BodyReadFailed, adminapi.MalformedBody, adminapi.InvalidRequest,
		adminapi.ForbiddenHost, adminapi.CrossOrigin, adminapi.UnsupportedMediaType} {
		out[r] = metricValue(t, g, "ztgate_api_requests_rejected_total", "reason", string(r))
	}
	return out
}

func serviceNames(g *Gateway) []string {
	var names []string
	for n := range g.tbl.Load().byName {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// FuzzAPIBodies posts arbitrary bodies to POST /v1/services and to a
// drain: the answer is always a JSON body with a status from the API's
// contract, and a service that was added can be deleted again. Services
// that would make the gateway reach beyond this machine (health checks of
// a backend that is not on loopback, lookups of host or SRV names) are
// not posted.
func FuzzAPIBodies(f *testing.F) {
	f.Add([]byte(`{"name": "db", "tenants": ["acme"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 5432}]}`), false)
	f.Add([]byte(`{"name": "dns2", "tenants": ["*"], "vip": "10.100.0.53", "backends": ["127.0.0.1"], "balance": "source_hash",
		"port": [{"name": "dns", "protocol": "udp", "port": 53, "target": 5353}], "health": {"type": "udp", "interval": "1s"}}`), false)
	f.Add([]byte(`{"name": "web", "tenants": ["*"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 1}]}`), false)
	f.Add([]byte(`{"name": 1, "port": [{"port": 1.5}], "health": null}`), false)
	f.Add([]byte(`{"deadline": "30s"}`), true)
	f.Add([]byte(``), true)
	f.Add([]byte(`{"deadline": 30}`), true)

	h := newHarness(f, limitsConfig(startHold(f), "", "", ""))
	api := h.gw.apiHandler("")
	ctx := h.gw.running.ServiceContext()
	f.Fuzz(func(t *testing.T, body []byte, drain bool) {
		if !drain && len(body) <= adminapi.MaxBodyBytes {
			if svc, err := conf.ParseServiceJSON(body, ctx); err == nil && reachesOffHost(svc) {
				return // the API would accept it and start talking to the network
			}
		}
		if drain {
			status, out := apiCall(t, api, http.MethodPost, drainPath, body)
			if status != http.StatusOK && status != http.StatusBadRequest && status != http.StatusRequestEntityTooLarge {
				t.Fatalf("drain answered %d: %s", status, out)
			}
			if status == http.StatusOK {
				apiCall(t, api, http.MethodPost, strings.Replace(drainPath, "/drain", "/undrain", 1), nil)
			}
			return
		}
		status, out := apiCall(t, api, http.MethodPost, "/v1/services", body)
		switch status {
		case http.StatusCreated:
			var s struct{ Name string }
			if err := json.Unmarshal(out, &s); err != nil || s.Name == "" {
				t.Fatalf("201 without the service: %s", out)
			}
			if st, out := apiCall(t, api, http.MethodDelete, "/v1/services/"+s.Name, nil); st != http.StatusNoContent {
				t.Fatalf("delete %s: %d %s", s.Name, st, out)
			}
		case http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("POST /v1/services answered %d: %s", status, out)
		}
	})
}

// reachesOffHost reports whether adding svc would send packets beyond
// this machine: it names a backend that is not a loopback address literal
// (health checks) or a name to resolve (DNS lookups).
func reachesOffHost(svc catalog.Service) bool {
	if svc.BackendsSRV != "" {
		return true
	}
	for _, b := range svc.Backends {
		if a, err := netip.ParseAddr(b); err != nil || !a.IsLoopback() {
			return true
		}
	}
	return false
}

// TestAPISlowClient opens a connection to the API and sends half a request
// header: the server hangs up after its header timeout instead of holding
// the connection forever, and counts the cut.
func TestAPISlowClient(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the API's header timeout")
	}
	t.Parallel()
	cfg := strings.Replace(limitsConfig(startHold(t), "", "", ""), `listen = "off"`, `listen = "127.0.0.1:0"`, 1)
	h := newHarness(t, cfg)
	c, err := net.Dial("tcp", h.gw.APIAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	io.WriteString(c, "GET /v1/services HTTP/1.1\r\nHost: x\r\n")
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err = io.ReadAll(c)
	if d := time.Since(start); err != nil || d > adminapi.ReadHeaderTimeout+2*time.Second {
		t.Fatalf("connection held %v (header timeout %v): %v", d, adminapi.ReadHeaderTimeout, err)
	}
	// The server counts as it closes the connection, just after the
	// client sees it closed.
	waitFor(t, 10*time.Second, "the cut counted", func() bool {
		return metricValue(t, h.gw, "ztgate_api_connections_closed_total", "reason", "header_timeout") == 1
	})
}

// stalledWriter is the ResponseWriter of a client that reads nothing of
// an answer larger than the socket's buffers: a write waits until the test
// lets it go (or the server's write timeout would end it).
type stalledWriter struct {
	header  http.Header
	writing chan struct{} // closed by the first write
	release chan struct{}
	once    sync.Once
}

func (s *stalledWriter) Header() http.Header { return s.header }
func (s *stalledWriter) WriteHeader(int)     {}
func (s *stalledWriter) Write(b []byte) (int, error) {
	s.once.Do(func() { close(s.writing) })
	<-s.release
	return len(b), nil
}

// TestAPIAnswerHoldsNoLock adds a service through the API for a client
// that does not read its answer: while the answer waits to be written, the
// service table can still be changed (another API request, a reload, the
// relay's VIPs). Before, the handler wrote its answer under reloadMu.
func TestAPIAnswerHoldsNoLock(t *testing.T) {
	h := newHarness(t, limitsConfig(startHold(t), "", "", ""))
	api := h.gw.apiHandler("")
	w := &stalledWriter{header: http.Header{}, writing: make(chan struct{}), release: make(chan struct{})}
	added := make(chan struct{})
	go func() {
		defer close(added)
		body := `{"name": "db", "tenants": ["*"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 5432}]}`
		api.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "http://127.0.0.1:7780/v1/services", strings.NewReader(body)))
	}()
	defer func() { close(w.release); <-added }()
	select {
	case <-w.writing:
	case <-time.After(5 * time.Second):
		t.Fatal("the API never wrote its answer")
	}
	deleted := make(chan int, 1)
	go func() {
		status, _ := apiCall(t, api, http.MethodDelete, "/v1/services/db", nil)
		deleted <- status
	}()
	select {
	case status := <-deleted:
		if status != http.StatusNoContent {
			t.Fatalf("DELETE /v1/services/db answered %d while the POST's answer waited", status)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("DELETE /v1/services/db waited for another client to read its answer")
	}
}
