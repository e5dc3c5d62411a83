package relay

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
)

// TestAPISlowClient sends half a request to the relay's API: the server
// hangs up after its header timeout instead of holding the connection, and
// counts the cut.
func TestAPISlowClient(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the API's header timeout")
	}
	t.Parallel()
	r := startRelay(t, newPKI(t).relayConfig(t.TempDir()))
	c, err := net.Dial("tcp", r.APIAddr())
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
	waitFor(t, "the cut counted", func() bool {
		return apiCounter(t, r, "ztgate_api_connections_closed_total", "header_timeout") == 1
	})
}

// TestAPIRejections sends requests the relay's API refuses: each is
// answered with its error and counted by reason in
// ztgate_api_requests_rejected_total.
func TestAPIRejections(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := newPKI(t).relayConfig(dir)
	cfg.API.TokenFile = filepath.Join(dir, "api-token")
	if err := os.WriteFile(cfg.API.TokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, cfg)
	cases := []struct {
		name, method, path, auth string
		status                   int
		reason                   adminapi.Reason
	}{
		{"no token", "GET", "/v1/services", "", http.StatusUnauthorized, adminapi.Unauthorized},
		{"wrong token", "POST", "/v1/gateways/gw1/drain", "Bearer nope", http.StatusUnauthorized, adminapi.Unauthorized},
		{"no such path", "GET", "/v1/nope", "Bearer s3cret", http.StatusNotFound, adminapi.NoRoute},
		{"wrong method", "DELETE", "/v1/sessions", "Bearer s3cret", http.StatusMethodNotAllowed, adminapi.NoRoute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := apiCounter(t, r, "ztgate_api_requests_rejected_total", string(tc.reason))
			req, err := http.NewRequest(tc.method, "http://"+r.APIAddr()+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if n := apiCounter(t, r, "ztgate_api_requests_rejected_total", string(tc.reason)); n != before+1 {
				t.Fatalf("%s went from %v to %v", tc.reason, before, n)
			}
		})
	}
}

// apiCounter reads the series of one of the API's counters with reason;
// the API creates them all at the start.
func apiCounter(t *testing.T, r *Relay, name, reason string) float64 {
	t.Helper()
	mfs, err := r.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if l := m.GetLabel(); len(l) == 1 && l[0].GetName() == "reason" && l[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{reason=%q}", name, reason)
	return 0
}
