package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// TestProfilingOnlyForRoles: ZTGATE_PPROF is honoured by the roles only;
// the one-shot commands never try to listen on it. An address that cannot
// be listened on makes the attempt visible on stderr without serving
// anything.
func TestProfilingOnlyForRoles(t *testing.T) {
	t.Setenv("ZTGATE_PPROF", "no port here")
	missing := filepath.Join(t.TempDir(), "missing.toml")
	for _, tc := range []struct {
		args    []string
		profile bool
	}{
		{[]string{"version"}, false},
		{[]string{"check", missing}, false},
		{[]string{"gateway", "-config", missing}, true},
		{[]string{"relay", "-config", missing}, true},
		{[]string{"agent", "-config", missing}, true},
	} {
		var stdout, stderr bytes.Buffer
		run(tc.args, &stdout, &stderr)
		if got := strings.Contains(stderr.String(), "ZTGATE_PPROF"); got != tc.profile {
			t.Errorf("%v tried to start profiling: %v, want %v (stderr %q)", tc.args, got, tc.profile, stderr.String())
		}
	}
}

// TestProfilingLoopbackOnly: ZTGATE_PPROF serves without a token, so it is
// taken only on a loopback address.
func TestProfilingLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:6060", true},
		{"[::1]:6060", true},
		{"localhost:6060", true},
		{"127.0.0.2:0", true},
		{":6060", false},
		{"0.0.0.0:6060", false},
		{"[::]:6060", false},
		{"192.0.2.1:6060", false},
		{"no port here", false},
	} {
		if err := loopbackOnly(tc.addr); (err == nil) != tc.ok {
			t.Errorf("loopbackOnly(%q) = %v, want ok %v", tc.addr, err, tc.ok)
		}
	}
}

// TestProfilingHosts: the profiles are served to the loopback addresses
// and localhost, not to a web page's name (DNS rebinding).
func TestProfilingHosts(t *testing.T) {
	for _, tc := range []struct {
		host   string
		status int
	}{
		{"127.0.0.1:6060", http.StatusOK},
		{"[::1]:6060", http.StatusOK},
		{"localhost:6060", http.StatusOK},
		{"attacker.example:6060", http.StatusForbidden},
	} {
		r := httptest.NewRequest(http.MethodGet, "/debug/pprof/", nil)
		r.Host = tc.host
		w := httptest.NewRecorder()
		profileServer().Handler.ServeHTTP(w, r)
		if w.Code != tc.status {
			t.Errorf("Host %s: %d, want %d", tc.host, w.Code, tc.status)
		}
	}
}
