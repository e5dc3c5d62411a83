package adminapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// long is a timeout a test never reaches: the phases a case does not test
// get it, so that a slow machine cannot turn them into a cut.
const long = time.Minute

// testServer serves the API with timeouts to and a /v1/ of its own on
// loopback, and counts the connections it has closed.
type testServer struct {
	addr   string
	reg    *prometheus.Registry
	closed atomic.Int64
}

func startTestServer(t *testing.T, token string, to timeouts) *testServer {
	t.Helper()
	v1 := http.NewServeMux()
	v1.HandleFunc("GET /v1/thing", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, http.StatusOK, map[string]int{"n": 1}) })
	v1.HandleFunc("POST /v1/thing", func(w http.ResponseWriter, r *http.Request) {
		body, ok := ReadBody(w, r)
		if !ok {
			return
		}
		var v struct{ N int }
		if err := json.Unmarshal(body, &v); err != nil {
			RejectBody(w, r, body, err)
			return
		}
		WriteJSON(w, http.StatusOK, v)
	})
	v1.HandleFunc("GET /v1/big", func(w http.ResponseWriter, r *http.Request) {
		// Far more than loopback's socket buffers hold: a client that
		// does not read makes the write run into WriteTimeout.
		chunk := make([]byte, 64<<10)
		for range 1024 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	ts := &testServer{reg: prometheus.NewRegistry()}
	m, err := newMetrics(ts.reg)
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(handler(token, ts.reg, v1, m), m, to)
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		m.connState(c, st)
		if st == http.StateClosed {
			ts.closed.Add(1)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := serve(l, srv, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	ts.addr = s.Addr()
	return ts
}

// counts returns every series of the API's two counters, keyed
// "rejected/reason" and "closed/reason".
func (ts *testServer) counts(t *testing.T) map[string]float64 {
	t.Helper()
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		var kind string
		switch mf.GetName() {
		case "ztgate_api_requests_rejected_total":
			kind = "rejected/"
		case "ztgate_api_connections_closed_total":
			kind = "closed/"
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			out[kind+m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return out
}

// request sends raw on c (nothing when raw is empty) and expects an
// answer with status; the connection is closed then (by the client, or by
// the server first).
func request(raw string, status int) func(*testing.T, net.Conn) {
	return func(t *testing.T, c net.Conn) {
		if raw != "" {
			if _, err := io.WriteString(c, raw); err != nil {
				t.Fatal(err)
			}
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != status {
			t.Fatalf("status %d, want %d", resp.StatusCode, status)
		}
		c.Close()
	}
}

// send sends raw on c and leaves the connection open, as a stalled client
// does.
func send(raw string) func(*testing.T, net.Conn) {
	return func(t *testing.T, c net.Conn) {
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCounters drives one connection per case against a server of its own
// and checks, once the server has closed the connection, every series of
// ztgate_api_requests_rejected_total and
// ztgate_api_connections_closed_total.
func TestCounters(t *testing.T) {
	all := timeouts{readHeader: long, read: long, write: long, idle: long}
	with := func(f func(*timeouts)) timeouts { to := all; f(&to); return to }
	const short = 500 * time.Millisecond
	get := func(path, auth string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + "\r\n"
	}
	post := func(body string) string {
		return fmt.Sprintf("POST /v1/thing HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
	cases := []struct {
		name     string
		token    string
		to       timeouts
		client   func(*testing.T, net.Conn)
		rejected map[Reason]float64
		closed   map[string]float64
	}{
		{name: "good request", token: "s3cret", to: all,
			client: request(get("/v1/thing", "Authorization: Bearer s3cret\r\n"), http.StatusOK)},
		{name: "healthz", to: all, client: request(get("/healthz", ""), http.StatusOK)},
		{name: "no token", token: "s3cret", to: all, client: request(get("/v1/thing", ""), http.StatusUnauthorized),
			rejected: map[Reason]float64{Unauthorized: 1}},
		{name: "wrong token", token: "s3cret", to: all, client: request(get("/v1/thing", "Authorization: Bearer nope\r\n"), http.StatusUnauthorized),
			rejected: map[Reason]float64{Unauthorized: 1}},
		{name: "profiles without token", token: "s3cret", to: all, client: request(get("/debug/pprof/", ""), http.StatusUnauthorized),
			rejected: map[Reason]float64{Unauthorized: 1}},
		{name: "no such path", to: all, client: request(get("/nope", ""), http.StatusNotFound),
			rejected: map[Reason]float64{NoRoute: 1}},
		{name: "no such v1 path", token: "s3cret", to: all, client: request(get("/v1/nope", "Authorization: Bearer s3cret\r\n"), http.StatusNotFound),
			rejected: map[Reason]float64{NoRoute: 1}},
		{name: "wrong method", to: all, client: request("DELETE /v1/thing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", http.StatusMethodNotAllowed),
			rejected: map[Reason]float64{NoRoute: 1}},
		{name: "garbage request line", to: all, client: request("\x16\x03\x01 hello\r\n\r\n", http.StatusBadRequest),
			rejected: map[Reason]float64{MalformedRequest: 1}},
		{name: "headers too large", to: all,
			client:   request("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX: "+strings.Repeat("a", 128<<10)+"\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge),
			rejected: map[Reason]float64{MalformedRequest: 1}},
		{name: "good body", to: all, client: request(post(`{"n": 2}`), http.StatusOK)},
		{name: "oversized body", to: all, client: request(post(strings.Repeat("a", MaxBodyBytes+1)), http.StatusRequestEntityTooLarge),
			rejected: map[Reason]float64{BodyTooLarge: 1}},
		{name: "not JSON", to: all, client: request(post("n = 2"), http.StatusBadRequest),
			rejected: map[Reason]float64{MalformedBody: 1}},
		{name: "truncated JSON", to: all, client: request(post(`{"n": `), http.StatusBadRequest),
			rejected: map[Reason]float64{MalformedBody: 1}},
		{name: "JSON of the wrong shape", to: all, client: request(post(`{"n": "two"}`), http.StatusBadRequest),
			rejected: map[Reason]float64{InvalidRequest: 1}},
		{name: "empty body", to: all, client: request(post(""), http.StatusBadRequest),
			rejected: map[Reason]float64{InvalidRequest: 1}},
		{name: "body cut short", to: all, client: func(t *testing.T, c net.Conn) {
			io.WriteString(c, "POST /v1/thing HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"n\":")
			c.(*net.TCPConn).CloseWrite()
			request("", http.StatusBadRequest)(t, c)
		}, rejected: map[Reason]float64{BodyReadFailed: 1}},
		{name: "nothing sent", to: with(func(to *timeouts) { to.readHeader = short }),
			client: func(*testing.T, net.Conn) {},
			closed: map[string]float64{"header_timeout": 1}},
		{name: "half a header", to: with(func(to *timeouts) { to.readHeader = short }),
			client: send("GET /v1/thing HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
			closed: map[string]float64{"header_timeout": 1}},
		{name: "half a body", to: with(func(to *timeouts) { to.read = 2 * time.Second }),
			client:   send("POST /v1/thing HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"n\":"),
			rejected: map[Reason]float64{BodyReadFailed: 1},
			closed:   map[string]float64{"read_timeout": 1}},
		{name: "response not read", to: with(func(to *timeouts) { to.write = short }),
			client: send(get("/v1/big", "")),
			closed: map[string]float64{"write_timeout": 1}},
		{name: "idle after a request", to: with(func(to *timeouts) { to.idle = short }),
			client: func(t *testing.T, c net.Conn) {
				healthzOnce(t, c)
			},
			closed: map[string]float64{"idle_timeout": 1}},
		{name: "half the second request", to: with(func(to *timeouts) { to.readHeader = short }),
			client: func(t *testing.T, c net.Conn) {
				healthzOnce(t, c)
				io.WriteString(c, "GET /healthz HTTP/1.1\r\n")
			},
			closed: map[string]float64{"header_timeout": 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := startTestServer(t, tc.token, tc.to)
			c, err := net.Dial("tcp", ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tc.client(t, c)
			// The server counts when it closes the connection, whoever
			// hung up first.
			deadline := time.Now().Add(30 * time.Second)
			for ts.closed.Load() == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the server did not close the connection")
				}
				time.Sleep(5 * time.Millisecond)
			}
			want := map[string]float64{}
			for _, r := range reasons {
				want["rejected/"+string(r)] = tc.rejected[r]
			}
			for _, name := range cutNames[headerTimeout:] {
				want["closed/"+name] = tc.closed[name]
			}
			got := ts.counts(t)
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
			if len(got) != len(want) {
				t.Errorf("series %v, want %v", got, want)
			}
		})
	}
}

// TestMetricsRegistration: the roles and the tests build the API's
// handler more than once on one registry, and share its counters; a
// registry that holds other metrics under the API's names is an error.
func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	h1 := Handler("s3cret", reg, http.NewServeMux())
	h2 := Handler("s3cret", reg, http.NewServeMux())
	for _, h := range []http.Handler{h1, h2} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/x", nil))
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("status %d", rec.Code)
		}
	}
	ts := &testServer{reg: reg}
	if n := ts.counts(t)["rejected/unauthorized"]; n != 2 {
		t.Fatalf("unauthorized = %v, want 2 (one counter for both handlers)", n)
	}

	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztgate_api_requests_rejected_total", Help: "other"}))
	if _, err := newMetrics(bad); err == nil {
		t.Fatal("a conflicting collector was accepted")
	}
}

// healthzOnce sends one GET /healthz on c and reads its response.
func healthzOnce(t *testing.T, c net.Conn) {
	t.Helper()
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}
