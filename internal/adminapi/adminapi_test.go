package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ztgate_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	v1 := http.NewServeMux()
	v1.HandleFunc("GET /v1/thing", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, map[string]int{"n": 1}) })
	srv := httptest.NewServer(Handler("s3cret", reg, v1))
	defer srv.Close()
	cases := []struct {
		name, path, auth string
		status           int
		contains         string
	}{
		{"healthz open", "/healthz", "", 200, "ok"},
		{"metrics open", "/metrics", "", 200, "ztgate_test_total 1"},
		{"v1 without token", "/v1/thing", "", 401, `"errors"`},
		{"v1 wrong token", "/v1/thing", "Bearer nope", 401, "bearer token"},
		{"v1 with token", "/v1/thing", "Bearer s3cret", 200, `"n": 1`},
		{"profiles need the token", "/debug/pprof/", "", 401, "bearer token"},
		{"profiles with token", "/debug/pprof/", "Bearer s3cret", 200, "goroutine"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", srv.URL+tc.path, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.contains) {
				t.Fatalf("%d %s; want %d containing %q", resp.StatusCode, body, tc.status, tc.contains)
			}
		})
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "t")
	os.WriteFile(good, []byte(" tok\n"), 0o600)
	empty := filepath.Join(dir, "e")
	os.WriteFile(empty, []byte("\n"), 0o600)
	if tok, err := readToken(good); err != nil || tok != "tok" {
		t.Fatalf("good: %q %v", tok, err)
	}
	if tok, err := readToken(""); err != nil || tok != "" {
		t.Fatalf("none: %q %v", tok, err)
	}
	for _, p := range []string{empty, filepath.Join(dir, "missing")} {
		if _, err := readToken(p); err == nil {
			t.Fatalf("%s: no error", p)
		}
	}
}

func TestStartAndShutdown(t *testing.T) {
	s, err := Start(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.Shutdown(ctx)
	if off, err := Start(Config{}); off != nil || err != nil || off.Addr() != "" {
		t.Fatalf("off: %v %v", off, err)
	}
	var nilServer *Server
	nilServer.Shutdown(ctx)
}

// TestWarnsWithoutToken: an API with /v1/ on a non-loopback address and no
// token says so at start; on loopback, or with a token, it does not.
func TestWarnsWithoutToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, listen, token string
		warn                bool
	}{
		{"loopback", "127.0.0.1:0", "", false},
		{"any address, no token", "0.0.0.0:0", "", true},
		{"any address, a token", "0.0.0.0:0", tokenFile, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			s, err := Start(Config{Listen: netip.MustParseAddrPort(tc.listen), TokenFile: tc.token, Registry: prometheus.NewRegistry(),
				V1: http.NotFoundHandler(), Log: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			defer s.Shutdown(ctx)
			if got := strings.Contains(logs.String(), "without a token"); got != tc.warn {
				t.Errorf("warned %v, want %v:\n%s", got, tc.warn, logs.String())
			}
		})
	}
}

// TestShutdownEndsLongRequests: a request still running when Shutdown's
// context ends (a handler that waits for its request's context, as a CPU
// profile does) is cut off, and Shutdown returns.
func TestShutdownEndsLongRequests(t *testing.T) {
	started := make(chan struct{})
	ended := make(chan struct{})
	v1 := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-r.Context().Done():
		case <-time.After(time.Minute):
		}
		close(ended)
	})
	s, err := Start(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Registry: prometheus.NewRegistry(), V1: v1})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if resp, err := http.Get("http://" + s.Addr() + "/v1/long"); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	s.Shutdown(ctx)
	select {
	case <-ended:
	default:
		t.Fatal("the request still runs after Shutdown returned")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown took %v", d)
	}
}

// TestWriteErrorsBounded answers the errors of a hostile body, 250,000 of
// them and one quoting a value of 1 MiB: the answer lists the first
// maxErrors, each cut, and counts the rest, instead of one of tens of MiB.
func TestWriteErrorsBounded(t *testing.T) {
	errs := []error{errors.New("service.name: " + strings.Repeat("é", 1<<19))}
	for i := range 250_000 {
		errs = append(errs, fmt.Errorf("service.backends[%d]: \"!\" is not a domain name", i))
	}
	rec := httptest.NewRecorder()
	WriteErrors(rec, http.StatusBadRequest, errs...)
	if n := rec.Body.Len(); n > 128<<10 {
		t.Fatalf("answer of %d bytes for %d errors", n, len(errs))
	}
	var got struct{ Errors []string }
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Errors) != maxErrors+1 {
		t.Fatalf("%d errors listed, want %d and the count of the rest", len(got.Errors), maxErrors+1)
	}
	if first := got.Errors[0]; len(first) > maxErrorLen || !utf8.ValidString(first) || !strings.HasPrefix(first, "service.name: é") {
		t.Fatalf("first error not cut on a rune to %d bytes: %d bytes, %.40q", maxErrorLen, len(first), first)
	}
	if got.Errors[1] != errs[1].Error() {
		t.Fatalf("second error %q, want %q", got.Errors[1], errs[1].Error())
	}
	if last, want := got.Errors[maxErrors], fmt.Sprintf("… and %d more errors", len(errs)-maxErrors); last != want {
		t.Fatalf("last entry %q, want %q", last, want)
	}
}
