package gateway

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/adminapi"
)

// TestAPIBrowserRequests sends the gateway's API what a web page can make
// a browser on the gateway's machine send: a service posted as text/plain
// or in a form's encoding (the page needs no preflight for these, and the
// handler took the body as JSON), a reload or a drain from another site, a
// DNS-rebound read of the services. Each is refused before its handler
// and nothing changes; what ztgate and curl send still works.
func TestAPIBrowserRequests(t *testing.T) {
	h := newHarness(t, limitsConfig(startHold(t), "", "", ""))
	api := h.gw.apiHandler("")
	const svc = `{"name": "db", "tenants": ["*"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 5432}]}`
	type hdr = map[string]string
	cases := []struct {
		name, method, path, host string
		headers                  hdr
		body                     string
		status                   int
		reason                   adminapi.Reason
	}{
		{"service as text/plain", "POST", "/v1/services", "127.0.0.1:7780", hdr{"Content-Type": "text/plain"}, svc, http.StatusUnsupportedMediaType, adminapi.UnsupportedMediaType},
		{"service as a form", "POST", "/v1/services", "127.0.0.1:7780", hdr{"Content-Type": "application/x-www-form-urlencoded"}, svc, http.StatusUnsupportedMediaType, adminapi.UnsupportedMediaType},
		{"service from another site", "POST", "/v1/services", "127.0.0.1:7780",
			hdr{"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, svc, http.StatusForbidden, adminapi.CrossOrigin},
		{"reload from another site", "POST", "/v1/reload", "127.0.0.1:7780", hdr{"Origin": "https://attacker.example"}, "", http.StatusForbidden, adminapi.CrossOrigin},
		{"reload as an empty form", "POST", "/v1/reload", "localhost:7780", hdr{"Content-Type": "application/x-www-form-urlencoded"}, "", http.StatusUnsupportedMediaType, adminapi.UnsupportedMediaType},
		{"drain from another site", "POST", drainPath, "127.0.0.1:7780", hdr{"Origin": "null"}, "", http.StatusForbidden, adminapi.CrossOrigin},
		{"close every flow from another site", "DELETE", "/v1/flows?all=true", "127.0.0.1:7780", hdr{"Sec-Fetch-Site": "cross-site"}, "", http.StatusForbidden, adminapi.CrossOrigin},
		{"rebound read of the services", "GET", "/v1/services", "attacker.example:7780", nil, "", http.StatusForbidden, adminapi.ForbiddenHost},
		{"rebound read of the flows", "GET", "/v1/flows", "attacker.example", nil, "", http.StatusForbidden, adminapi.ForbiddenHost},
		{"rebound read of the profiles", "GET", "/debug/pprof/", "attacker.example:7780", nil, "", http.StatusForbidden, adminapi.ForbiddenHost},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			r.Host = tc.host
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			before := rejections(t, h.gw)
			w := httptest.NewRecorder()
			api.ServeHTTP(w, r)
			if w.Code != tc.status || !strings.Contains(w.Body.String(), `"errors"`) {
				t.Fatalf("%d %s, want %d with errors", w.Code, w.Body, tc.status)
			}
			for reason, n := range rejections(t, h.gw) {
				want := before[reason]
				if reason == tc.reason {
					want++
				}
				if n != want {
					t.Errorf("ztgate_api_requests_rejected_total{reason=%q} went from %v to %v, want %v", reason, before[reason], n, want)
				}
			}
			if _, ok := h.gw.tbl.Load().byName["db"]; ok {
				t.Fatal("the service was added")
			}
			if b := h.gw.tbl.Load().byName["web"].st.backends.Load().list[0]; b.describe().State == "draining" {
				t.Fatal("the backend was drained")
			}
		})
	}

	// What ztgate reload and the documented curl commands send.
	for _, tc := range []struct {
		name, method, path, host string
		headers                  hdr
		body                     string
		status                   int
	}{
		{"reload (ztgate reload, curl -X POST)", "POST", "/v1/reload", "127.0.0.1:7780", nil, "", http.StatusConflict}, // no file to reload here
		{"read by localhost", "GET", "/v1/services", "localhost:7780", nil, "", http.StatusOK},
		{"service as JSON", "POST", "/v1/services", "127.0.0.1:7780", hdr{"Content-Type": "application/json"}, svc, http.StatusCreated},
		{"delete it", "DELETE", "/v1/services/db", "[::1]:7780", nil, "", http.StatusNoContent},
		{"drain with a deadline", "POST", drainPath, "127.0.0.1:7780", hdr{"Content-Type": "application/json"}, `{"deadline": "10m"}`, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			r.Host = tc.host
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			api.ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("%d %s, want %d", w.Code, w.Body, tc.status)
			}
		})
	}
}
