package adminapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestGuardBrowsers: what a web page can make a browser send to the API
// is refused before any handler (a DNS-rebound Host without a token, a
// change from another origin or in a form's encoding), in the API's error
// format and counted; what its clients send still works.
func TestGuardBrowsers(t *testing.T) {
	type hdr = map[string]string
	cases := []struct {
		name         string
		token        string
		method, path string
		host         string
		headers      hdr
		body         string
		status       int
		reason       Reason // "" : not counted as rejected
	}{
		// DNS rebinding: the page's name as Host.
		{"rebound name, v1", "", "GET", "/v1/thing", "attacker.example:7780", nil, "", 403, ForbiddenHost},
		// /healthz and /metrics are open to all who reach the port, by any
		// name (a Prometheus scraping gw1.example:7780).
		{"a name, metrics", "", "GET", "/metrics", "gw1.example:7780", nil, "", 200, ""},
		{"a name, healthz", "", "GET", "/healthz", "gw1.example", nil, "", 200, ""},
		{"a name, below metrics", "", "GET", "/metrics/x", "attacker.example:7780", nil, "", 403, ForbiddenHost},
		{"rebound name, profiles", "", "GET", "/debug/pprof/", "attacker.example:7780", nil, "", 403, ForbiddenHost},
		{"rebound name, change", "", "POST", "/v1/thing", "attacker.example:7780", nil, "", 403, ForbiddenHost},
		{"a name under localhost", "", "GET", "/v1/thing", "localhost.attacker.example:7780", nil, "", 403, ForbiddenHost},
		{"localhost with a trailing dot", "", "GET", "/v1/thing", "localhost.:7780", nil, "", 403, ForbiddenHost},
		// What the API's clients send.
		{"127.0.0.1:port", "", "GET", "/v1/thing", "127.0.0.1:7780", nil, "", 200, ""},
		{"127.0.0.1", "", "GET", "/v1/thing", "127.0.0.1", nil, "", 200, ""},
		{"[::1]:port", "", "GET", "/v1/thing", "[::1]:7780", nil, "", 200, ""},
		{"[::1]", "", "GET", "/v1/thing", "[::1]", nil, "", 200, ""},
		{"localhost:port", "", "GET", "/v1/thing", "localhost:7780", nil, "", 200, ""},
		{"LocalHost", "", "GET", "/v1/thing", "LocalHost", nil, "", 200, ""},
		{"a LAN address", "", "GET", "/metrics", "192.0.2.1:7780", nil, "", 200, ""},
		{"HTTP/1.0 without Host", "", "GET", "/healthz", "", nil, "", 200, ""},
		// With a token, any Host: the page does not know the token.
		{"token: a name", "s3cret", "GET", "/v1/thing", "gw1.example.com:7780", hdr{"Authorization": "Bearer s3cret"}, "", 200, ""},
		{"token: a name, metrics", "s3cret", "GET", "/metrics", "gw1.example.com:7780", nil, "", 200, ""},
		{"token: a name without it", "s3cret", "GET", "/v1/thing", "attacker.example:7780", nil, "", 401, Unauthorized},
		// Cross-site requests.
		{"form POST from another site", "", "POST", "/v1/thing", "127.0.0.1:7780",
			hdr{"Origin": "http://attacker.example", "Content-Type": "application/x-www-form-urlencoded"}, `{"a":1}`, 403, CrossOrigin},
		{"fetch without a body from another site", "", "POST", "/v1/thing", "127.0.0.1:7780",
			hdr{"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"}, "", 403, CrossOrigin},
		{"a binary body from another site", "", "POST", "/v1/thing", "127.0.0.1:7780",
			hdr{"Origin": "http://attacker.example"}, `{"a":1}`, 403, CrossOrigin},
		{"another port of localhost", "", "DELETE", "/v1/thing", "localhost:7780",
			hdr{"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}, "", 403, CrossOrigin},
		{"an opaque origin", "", "POST", "/v1/thing", "127.0.0.1:7780", hdr{"Origin": "null"}, "", 403, CrossOrigin},
		{"cross-site even with a token", "s3cret", "POST", "/v1/thing", "127.0.0.1:7780",
			hdr{"Sec-Fetch-Site": "cross-site", "Authorization": "Bearer s3cret"}, "", 403, CrossOrigin},
		{"cross-site GET reads nothing it may not", "", "GET", "/v1/thing", "127.0.0.1:7780",
			hdr{"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"}, "", 200, ""},
		{"same origin", "", "POST", "/v1/thing", "127.0.0.1:7780",
			hdr{"Origin": "http://127.0.0.1:7780", "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}, `{"a":1}`, 200, ""},
		// Bodies in a form's encoding or as text: the page needs no preflight for these.
		{"text/plain", "", "POST", "/v1/thing", "127.0.0.1:7780", hdr{"Content-Type": "text/plain"}, `{"a":1}`, 415, UnsupportedMediaType},
		{"urlencoded (curl -d)", "", "POST", "/v1/thing", "127.0.0.1:7780", hdr{"Content-Type": "application/x-www-form-urlencoded"}, `{"a":1}`, 415, UnsupportedMediaType},
		{"urlencoded, empty", "", "POST", "/v1/thing", "127.0.0.1:7780", hdr{"Content-Type": "application/x-www-form-urlencoded"}, "", 415, UnsupportedMediaType},
		{"multipart", "", "POST", "/v1/thing", "127.0.0.1:7780", hdr{"Content-Type": "multipart/form-data; boundary=x"}, "--x--", 415, UnsupportedMediaType},
		{"unparsable", "", "DELETE", "/v1/thing", "127.0.0.1:7780", hdr{"Content-Type": "json;;"}, "", 415, UnsupportedMediaType},
		{"text/plain with a token", "s3cret", "POST", "/v1/thing", "127.0.0.1:7780",
			hdr{"Content-Type": "text/plain", "Authorization": "Bearer s3cret"}, `{"a":1}`, 415, UnsupportedMediaType},
		{"JSON", "", "POST", "/v1/thing", "127.0.0.1:7780", hdr{"Content-Type": "application/json"}, `{"a":1}`, 200, ""},
		{"JSON with a charset", "", "POST", "/v1/thing", "localhost:7780", hdr{"Content-Type": "Application/JSON; charset=utf-8"}, `{"a":1}`, 200, ""},
		{"no body, no Content-Type (curl -X POST)", "", "POST", "/v1/thing", "127.0.0.1:7780", nil, "", 200, ""},
		{"a body without a Content-Type", "", "POST", "/v1/thing", "127.0.0.1:7780", nil, `{"a":1}`, 200, ""},
		{"DELETE", "", "DELETE", "/v1/thing", "127.0.0.1:7780", nil, "", 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			called := false
			v1 := http.NewServeMux()
			v1.HandleFunc("/v1/thing", func(w http.ResponseWriter, r *http.Request) {
				called = true
				WriteJSON(w, 200, map[string]int{"n": 1})
			})
			r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			r.Host = tc.host
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			Handler(tc.token, reg, v1).ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if strings.HasPrefix(tc.path, "/v1/") && called != (tc.status == 200) {
				t.Errorf("handler called: %v", called)
			}
			if tc.status >= 400 {
				var errs struct{ Errors []string }
				if err := json.Unmarshal(w.Body.Bytes(), &errs); err != nil || len(errs.Errors) != 1 {
					t.Errorf("answer %q is not the API's errors (%v)", w.Body, err)
				}
			}
			counts := (&testServer{reg: reg}).counts(t)
			for _, reason := range reasons {
				want := 0.0
				if reason == tc.reason {
					want = 1
				}
				if got := counts["rejected/"+string(reason)]; got != want {
					t.Errorf("rejected{reason=%q} = %v, want %v", reason, got, want)
				}
			}
		})
	}
}
