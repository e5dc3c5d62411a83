package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
)

// TestAPIClientThroughGuard: what ztgate status and reload send (Host as
// in -api, no Origin, no body) passes the admin API's refusal of browser
// requests, by address and by localhost.
func TestAPIClientThroughGuard(t *testing.T) {
	v1 := http.NewServeMux()
	v1.HandleFunc("GET /v1/services", func(w http.ResponseWriter, _ *http.Request) { adminapi.WriteJSON(w, 200, map[string]any{}) })
	v1.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, _ *http.Request) { adminapi.WriteJSON(w, 200, map[string]any{}) })
	srv := httptest.NewServer(adminapi.Handler("", nil, v1))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	for _, base := range []string{srv.URL, "127.0.0.1:" + port, "http://localhost:" + port} {
		c, err := newAPIClient(base, "", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, method := range []string{"GET", "POST"} {
			path := map[string]string{"GET": "/v1/services", "POST": "/v1/reload"}[method]
			status, body, err := c.do(method, path)
			if err != nil || status != 200 {
				t.Errorf("%s %s%s: %d %s %v", method, base, path, status, body, err)
			}
		}
	}
}
