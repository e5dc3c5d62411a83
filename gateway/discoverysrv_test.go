package gateway

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/resolver"
)

// TestSRVBackendSeriesApart: SRV records may put several backends on one
// address, on different ports. Each has its own series, labelled by
// address and port: one down and one up show 0 and 1, a failed dial
// counts for its own backend only, and the one that leaves loses its
// series while the other keeps its own. A backend given by address keeps
// the address alone as its label.
func TestSRVBackendSeriesApart(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")
	cases := []struct {
		name   string
		before []backendAddr
		down   backendKey // marked down, its dial failed
		after  []backendAddr
		// label → the gauge's value (-1: no series), before and after
		gaugeBefore, gaugeAfter map[string]float64
		dialsBefore, dialsAfter map[string]float64
	}{
		{
			name:        "IPv4, one of two leaves",
			before:      []backendAddr{{addr: a, port: 80}, {addr: a, port: 81}, {addr: a}},
			down:        backendKey{a, 80},
			after:       []backendAddr{{addr: a, port: 81}, {addr: a}},
			gaugeBefore: map[string]float64{"192.0.2.10:80": 0, "192.0.2.10:81": 1, "192.0.2.10": 1},
			gaugeAfter:  map[string]float64{"192.0.2.10:80": -1, "192.0.2.10:81": 1, "192.0.2.10": 1},
			dialsBefore: map[string]float64{"192.0.2.10:80": 1, "192.0.2.10:81": -1, "192.0.2.10": -1},
			dialsAfter:  map[string]float64{"192.0.2.10:80": -1, "192.0.2.10:81": -1, "192.0.2.10": -1},
		},
		{
			name:        "IPv6, the address backend leaves",
			before:      []backendAddr{{addr: b, port: 80}, {addr: b}},
			down:        backendKey{b, 0},
			after:       []backendAddr{{addr: b, port: 80}},
			gaugeBefore: map[string]float64{"[2001:db8::10]:80": 1, "2001:db8::10": 0},
			gaugeAfter:  map[string]float64{"[2001:db8::10]:80": 1, "2001:db8::10": -1},
			dialsBefore: map[string]float64{"[2001:db8::10]:80": -1, "2001:db8::10": 1},
			dialsAfter:  map[string]float64{"[2001:db8::10]:80": -1, "2001:db8::10": -1},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newUnitGateway(t)
			st := g.state("web")
			svc := &service{spec: catalog.Service{Name: "web", Health: catalog.Health{Type: catalog.HealthNone}}, st: st}
			g.tbl.Store(&table{byName: map[string]*service{"web": svc}})
			st.setBackends(tc.before, false)
			g.syncHealth()
			for _, be := range st.backends.Load().list {
				if be.key() == tc.down {
					be.mu.Lock()
					be.state = stateDown
					be.mu.Unlock()
					g.setHealthGauge("web", be)
					g.countDialError("web", be)
				}
			}
			check := func(when string, gauge, dials map[string]float64) {
				t.Helper()
				for label, want := range gauge {
					if v := metricValue(t, g, "ztgate_backend_healthy", "backend", label, "service", "web"); v != want {
						t.Errorf("%s: ztgate_backend_healthy{backend=%q} = %v, want %v", when, label, v, want)
					}
				}
				for label, want := range dials {
					if v := metricValue(t, g, "ztgate_dial_errors_total", "backend", label, "service", "web"); v != want {
						t.Errorf("%s: ztgate_dial_errors_total{backend=%q} = %v, want %v", when, label, v, want)
					}
				}
			}
			check("before", tc.gaugeBefore, tc.dialsBefore)
			st.setBackends(tc.after, false)
			g.syncHealth()
			check("after", tc.gaugeAfter, tc.dialsAfter)
		})
	}
}

// TestCheckPort: a health.port given explicitly is probed on every
// backend, an SRV one too, even when it is the port the default would
// have been (the first target); one not given is the traffic's port: the
// target for a backend given by address or host name, the record's port
// for an SRV backend.
func TestCheckPort(t *testing.T) {
	addr := netip.MustParseAddr("192.0.2.10")
	tcp := func(port uint16, set bool) catalog.Health {
		return catalog.Health{Type: catalog.HealthTCP, Port: port, PortSet: set}
	}
	// The service's port: tcp 80 → 8080, so health.port's default is 8080.
	cases := []struct {
		name   string
		health catalog.Health
		srv    uint16 // the backend's SRV port; 0: given by address
		want   uint16
	}{
		{"address, not given: the target", tcp(8080, false), 0, 8080},
		{"address, given", tcp(9000, true), 0, 9000},
		{"address, given as the target", tcp(8080, true), 0, 8080},
		{"SRV, not given: the record's port", tcp(8080, false), 5000, 5000},
		{"SRV, given: that port", tcp(9000, true), 5000, 9000},
		{"SRV, given as the target: that port", tcp(8080, true), 5000, 8080},
		{"SRV, given as the record's port", tcp(5000, true), 5000, 5000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := &backend{addr: addr, port: tc.srv}
			if got := checkPort(tc.health, b); got != tc.want {
				t.Errorf("checkPort = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestSRVHealthPort: an SRV backend is checked on its record's port, the
// port its flows go to, unless [service.health] port is given: then that
// port, the target's too, as for a backend given by address or host name.
func TestSRVHealthPort(t *testing.T) {
	const srvName = "_echo._tcp.app.corp.example"
	live := startLineEchoAt(t, "127.0.0.1", "live")
	closed, closed2 := int(closedPort(t).Port()), int(closedPort(t).Port())
	cases := []struct {
		name       string
		srvPort    int // 0: the backend is given by address, not by SRV
		target     int
		healthPort int // 0: not set
		want       string
	}{
		{"SRV: the record's port by default", live, closed, 0, "up"},
		{"SRV: the record's port by default, down", closed, live, 0, "down"},
		{"SRV: an explicit health.port wins", closed, closed2, live, "up"},
		{"SRV: an explicit health.port wins, down", live, live, closed2, "down"},
		{"SRV: an explicit health.port equal to the target wins too", live, closed, closed, "down"},
		{"address: health.port", 0, closed, live, "up"},
		{"address: the target by default", 0, closed, 0, "down"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dnsSrv := startDNS(t)
			dnsSrv.SetHost("a.corp.example", 60, netip.MustParseAddr("127.0.0.1"))
			backends, srv := `backends = ["127.0.0.1"]`, ""
			if tc.srvPort != 0 {
				dnsSrv.SetSRV(srvName, 60, resolver.SRV{Target: "a.corp.example", Port: uint16(tc.srvPort)})
				backends, srv = "", `backends_srv = "`+srvName+`"`
			}
			cfg := discoveryConfig(dnsSrv.Addr(), backends, srv, tc.target)
			if tc.healthPort != 0 {
				cfg = strings.Replace(cfg, `type = "tcp"`, fmt.Sprintf("type = \"tcp\"\n  port = %d", tc.healthPort), 1)
			}
			h := newFileHarness(t, cfg)
			var state string
			waitFor(t, 10*time.Second, "a check's result", func() bool {
				list := h.gw.stateOf("app").backends.Load().list
				if len(list) != 1 {
					return false
				}
				state = list[0].describe().State
				return state == "up" || state == "down"
			})
			if state != tc.want {
				t.Fatalf("backend %s, want %s", state, tc.want)
			}
		})
	}
}

// TestUDPCheckDNSByProbedPort: a UDP check without a payload sends a DNS
// query when the port it probes is 53, not when health.port is: an SRV
// backend whose record puts it on another port, in a service whose
// health.port is 53 by default (its target), gets the empty datagram of
// any UDP service and is up on any reply.
func TestUDPCheckDNSByProbedPort(t *testing.T) {
	var sawQuery atomic.Bool
	srv := udpServer(t, func(b []byte) []byte {
		sawQuery.Store(len(b) > 0)
		return []byte("pong")
	})
	cases := []struct {
		name    string
		backend backendAddr
		health  catalog.Health
	}{
		{"SRV backend off port 53, health.port 53 by default",
			backendAddr{addr: srv.Addr(), origin: "_dns._udp.corp.example", host: "a.corp.example", port: srv.Port(), priority: 10, weight: 1},
			catalog.Health{Type: catalog.HealthUDP, Port: 53}},
		{"address backend, health.port off 53",
			backendAddr{addr: srv.Addr(), origin: srv.Addr().String()},
			catalog.Health{Type: catalog.HealthUDP, Port: srv.Port(), PortSet: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sawQuery.Store(false)
			g, _ := newUnitGateway(t)
			clk := newFakeClock()
			st := g.state("dns")
			st.health.clock = clk
			st.health.randN = func(int64) int64 { return 0 }
			st.setBackends([]backendAddr{tc.backend}, false)
			h := tc.health
			h.Interval, h.Timeout, h.Rise, h.Fall = time.Second, time.Second, 1, 1
			ports := []catalog.Port{{Protocol: catalog.UDP, Port: 53, Target: 53}}
			g.tbl.Store(&table{byName: map[string]*service{"dns": {spec: catalog.Service{Name: "dns", Ports: ports, Health: h}, st: st}}})
			g.syncHealth()
			clk.waitPending(t, 1)
			clk.Advance(0) // the first check
			b := st.backends.Load().list[0]
			var state string
			waitFor(t, 5*time.Second, "a check's result", func() bool {
				state = b.describe().State
				return state != "unknown"
			})
			if state != "up" || sawQuery.Load() {
				t.Fatalf("backend %s (last error %q), a DNS query sent: %v; want up on an empty datagram", state, b.describe().LastError, sawQuery.Load())
			}
		})
	}
}
