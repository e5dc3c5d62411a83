package gateway

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// results are check outcomes written as a string: '+' success, '-' failure.
// states are the expected states after each: 'u' unknown, 'U' up, 'D' down.
func TestBackendStateMachine(t *testing.T) {
	cases := []struct {
		name       string
		rise, fall int
		results    string
		states     string
	}{
		{"unknown to up after rise", 2, 3, "++", "uU"},
		{"unknown to down after fall", 2, 3, "---", "uuD"},
		{"rise 1 fall 1 flips each time", 1, 1, "+-+-", "UDUD"},
		{"up to down needs fall in a row", 2, 3, "++--+---", "uUUUUUUD"},
		{"down to up needs rise in a row", 2, 2, "--+-++", "uDDDDU"},
		{"a failure interrupts the rise from unknown", 3, 3, "++-+++", "uuuuuU"},
		{"a success interrupts the fall from unknown", 2, 2, "-+-", "uuu"},
		{"stays up on success", 1, 3, "+++++", "UUUUU"},
		{"stays down on failure", 2, 1, "-----", "DDDDD"},
	}
	letter := map[backendState]byte{stateUnknown: 'u', stateUp: 'U', stateDown: 'D'}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := &backend{addr: netip.MustParseAddr("192.0.2.10")}
			now := time.Unix(1000, 0)
			var got strings.Builder
			for i, r := range tc.results {
				now = now.Add(time.Second)
				msg := ""
				if r == '-' {
					msg = "connection refused"
				}
				before := b.state
				tr, changed := b.record(msg, tc.rise, tc.fall, now)
				got.WriteByte(letter[b.state])
				if changed != (before != b.state) {
					t.Fatalf("check %d: changed=%v but state went %s → %s", i, changed, before, b.state)
				}
				if changed && (tr.from != before || tr.to != b.state || !b.lastChange.Equal(now)) {
					t.Fatalf("check %d: transition %+v, last change %v", i, tr, b.lastChange)
				}
			}
			if got.String() != tc.states {
				t.Fatalf("states %q, want %q", got.String(), tc.states)
			}
		})
	}
}

func TestBackendLastError(t *testing.T) {
	b := &backend{}
	now := time.Unix(1000, 0)
	b.record("refused", 2, 2, now)
	if b.lastErr != "refused" {
		t.Fatalf("last error %q after a failure", b.lastErr)
	}
	b.record("", 2, 2, now)
	if b.lastErr != "refused" {
		t.Fatalf("last error %q cleared before the backend is up", b.lastErr)
	}
	b.record("", 2, 2, now)
	if b.state != stateUp || b.lastErr != "" {
		t.Fatalf("up: state %s, last error %q", b.state, b.lastErr)
	}
	tr, _ := b.record("timeout", 2, 1, now)
	if tr.err != "timeout" || b.describe().LastError != "timeout" {
		t.Fatalf("transition to down carries %q, API shows %q", tr.err, b.describe().LastError)
	}
}

// TestObserve checks what a transition makes visible: the gauge, one log
// line per change, and that passive failures count like failed checks
// except without active checks.
func TestObserve(t *testing.T) {
	h := catalog.Health{Type: catalog.HealthTCP, Rise: 1, Fall: 2}
	cases := []struct {
		name      string
		health    catalog.Health
		dialFails int
		wantState backendState
		wantGauge float64
		wantLogs  int
	}{
		{"one dial failure is one failed check", h, 1, stateUnknown, -1, 0},
		{"fall dial failures take it down", h, 2, stateDown, 0, 1},
		{"no active checks: state unchanged", catalog.Health{Type: catalog.HealthNone}, 5, stateUnknown, -1, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, logs := newUnitGateway(t)
			st := g.state("web")
			st.health.clock = newFakeClock() // the active checks never fire
			st.setBackends([]backendAddr{{addr: netip.MustParseAddr("192.0.2.10")}}, false)
			svc := &service{spec: catalog.Service{Name: "web", Health: tc.health}, st: st}
			g.tbl.Store(&table{byName: map[string]*service{"web": svc}})
			g.syncHealth()
			g.m.backendHealthy.Reset() // only what the dial failures set
			b := st.backends.Load().list[0]
			for range tc.dialFails {
				g.passiveFailure(svc, b, errors.New("connection refused"))
			}
			if b.state != tc.wantState {
				t.Fatalf("state %s, want %s", b.state, tc.wantState)
			}
			if !strings.Contains(b.lastErr, "connection refused") {
				t.Fatalf("last error %q", b.lastErr)
			}
			if v := metricValue(t, g, "ztgate_backend_healthy", "backend", "192.0.2.10", "service", "web"); v != tc.wantGauge {
				t.Fatalf("gauge %v, want %v", v, tc.wantGauge)
			}
			if n := strings.Count(logs.String(), "backend health changed"); n != tc.wantLogs {
				t.Fatalf("%d transition lines, want %d:\n%s", n, tc.wantLogs, logs.String())
			}
		})
	}
	t.Run("recovery logs one line and sets the gauge", func(t *testing.T) {
		g, logs := newUnitGateway(t)
		b := &backend{addr: netip.MustParseAddr("192.0.2.11")}
		g.observe("web", b, h, errors.New("refused"))
		g.observe("web", b, h, errors.New("refused"))
		g.observe("web", b, h, nil)
		if b.state != stateUp || metricValue(t, g, "ztgate_backend_healthy", "backend", "192.0.2.11", "service", "web") != 1 {
			t.Fatalf("state %s after recovery", b.state)
		}
		out := logs.String()
		for _, want := range []string{"from=unknown to=down error=refused", "from=down to=up"} {
			if !strings.Contains(out, want) {
				t.Fatalf("log lacks %q:\n%s", want, out)
			}
		}
	})
}

// TestHealthyAgreesWithGauge: the API's healthy of a backend is the
// ztgate_backend_healthy gauge, whether the backend takes new flows; a
// discovered address on probation is not healthy until its checks bring
// it up.
func TestHealthyAgreesWithGauge(t *testing.T) {
	cases := []struct {
		name      string
		state     backendState
		draining  bool
		probation bool
		want      bool
	}{
		{"unknown", stateUnknown, false, false, true},
		{"up", stateUp, false, false, true},
		{"down", stateDown, false, false, false},
		{"draining", stateUp, true, false, false},
		{"on probation", stateUnknown, false, true, false},
		{"on probation and down", stateDown, false, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newUnitGateway(t)
			b := &backend{addr: netip.MustParseAddr("192.0.2.10"), state: tc.state, draining: tc.draining, probation: tc.probation}
			g.setHealthGauge("web", b)
			gauge := metricValue(t, g, "ztgate_backend_healthy", "backend", "192.0.2.10", "service", "web") == 1
			if got := b.describe().Healthy; got != tc.want || gauge != tc.want {
				t.Fatalf("API healthy %v, gauge %v; want %v", got, gauge, tc.want)
			}
		})
	}
}

// TestBackendName: a backend is named by the configured name it came from
// and checked by its host name: a host name is both, an address names no
// host (its checks send the address), an SRV backend is named by the SRV
// name and checked by its record's target; a new name replaces the old.
func TestBackendName(t *testing.T) {
	addr := netip.MustParseAddr("192.0.2.10")
	b := &backend{addr: addr}
	if b.origin() != "192.0.2.10" || b.checkHost() != "" {
		t.Errorf("unnamed: origin %q, host %q", b.origin(), b.checkHost())
	}
	for _, tc := range []struct {
		a            backendAddr
		origin, host string
		changed      bool
	}{
		{backendAddr{addr: addr, origin: "192.0.2.10"}, "192.0.2.10", "", true},
		{backendAddr{addr: addr, origin: "192.0.2.10"}, "192.0.2.10", "", false},
		{backendAddr{addr: addr, origin: "app2.corp.example"}, "app2.corp.example", "app2.corp.example", true},
		{backendAddr{addr: addr, origin: "_http._tcp.corp.example", host: "web1.corp.example"}, "_http._tcp.corp.example", "web1.corp.example", true},
		{backendAddr{addr: addr, origin: "2001:db8::1"}, "2001:db8::1", "", true},
	} {
		if changed := b.setName(tc.a); changed != tc.changed || b.origin() != tc.origin || b.checkHost() != tc.host {
			t.Errorf("setName(%+v): changed %v, origin %q, host %q; want %v, %q, %q", tc.a, changed, b.origin(), b.checkHost(), tc.changed, tc.origin, tc.host)
		}
	}
}
