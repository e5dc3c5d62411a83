package gateway

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/resolver"
)

// closedPort returns a loopback port nothing listens on (for TCP and UDP).
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	return ap
}

// udpServer answers each datagram with reply(request); nil means silence.
func udpServer(t *testing.T, reply func([]byte) []byte) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if r := reply(buf[:n]); r != nil {
				pc.WriteTo(r, from)
			}
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// dnsReply turns a query into a response with rcode and the ID changed by
// idDelta: enough for CheckProbeReply, with no DNS library.
func dnsReply(rcode byte, idDelta uint16) func([]byte) []byte {
	return func(q []byte) []byte {
		if len(q) < 12 {
			return nil
		}
		r := append([]byte(nil), q...)
		id := uint16(r[0])<<8 | uint16(r[1]) + idDelta
		r[0], r[1] = byte(id>>8), byte(id)
		r[2] |= 0x80 // QR
		r[3] = r[3]&0xf0 | rcode
		return r
	}
}

func TestProbes(t *testing.T) {
	var hosts atomic.Value
	hosts.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hosts.Store(r.Host)
		switch r.URL.Path {
		case "/ok":
			fmt.Fprintln(w, "ok")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/moved":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		default:
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	web := srv.Listener.Addr().(*net.TCPAddr).AddrPort()
	closed := closedPort(t)
	echo := udpServer(t, func(b []byte) []byte { return append([]byte("pong:"), b...) })
	silent := udpServer(t, func([]byte) []byte { return nil })
	dnsOK := udpServer(t, dnsReply(0, 0))
	dnsNX := udpServer(t, dnsReply(3, 0))
	dnsFail := udpServer(t, dnsReply(2, 0))
	dnsWrongID := udpServer(t, dnsReply(0, 1))

	httpCheck := func(path string, status int) catalog.Health {
		return catalog.Health{Type: catalog.HealthHTTP, Path: path, ExpectStatus: status}
	}
	udpCheck := func(send, expect string) catalog.Health {
		return catalog.Health{Type: catalog.HealthUDP, Send: send, Expect: expect}
	}
	dnsCheck := catalog.Health{Type: catalog.HealthUDP} // without a payload: a DNS query when the port probed is 53
	cases := []struct {
		name    string
		health  catalog.Health
		target  netip.AddrPort
		wantErr string // "" for success
	}{
		{"tcp accepts", catalog.Health{Type: catalog.HealthTCP}, web, ""},
		{"tcp refused", catalog.Health{Type: catalog.HealthTCP}, closed, "connection refused"},
		{"http 200", httpCheck("/ok", 0), web, ""},
		{"http 503", httpCheck("/down", 0), web, "status 503, want 2xx"},
		{"http expected status", httpCheck("/204", 204), web, ""},
		{"http other status than expected", httpCheck("/ok", 204), web, "status 200, want 204"},
		{"http redirect not followed", httpCheck("/moved", 0), web, "status 302"},
		{"http timeout", httpCheck("/slow", 0), web, "deadline exceeded"},
		{"http refused", httpCheck("/ok", 0), closed, "connection refused"},
		{"udp reply contains expect", udpCheck("ping", "pong:ping"), echo, ""},
		{"udp any reply", udpCheck("ping", ""), echo, ""},
		{"udp reply lacks expect", udpCheck("ping", "PONG"), echo, `does not contain "PONG"`},
		{"udp port unreachable", udpCheck("ping", ""), closed, "port unreachable"},
		{"udp silence", udpCheck("ping", ""), silent, "no reply"},
		{"dns answer", dnsCheck, dnsOK, ""},
		{"dns NXDOMAIN is an answer", dnsCheck, dnsNX, ""},
		{"dns SERVFAIL", dnsCheck, dnsFail, "SERVFAIL"},
		{"dns wrong id", dnsCheck, dnsWrongID, "id"},
		{"dns not a DNS server", dnsCheck, echo, "malformed"},
		{"dns port unreachable", dnsCheck, closed, "port unreachable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A DNS check is one of port 53 (the probed port): its
			// server is a stand-in on another port.
			port := tc.target.Port()
			if tc.health == dnsCheck {
				port = 53
			}
			p := newProber(tc.health, port, tc.target.Addr().String(), "ztna.internal.")
			defer p.close()
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := p.probe(ctx, tc.target)
			if took := time.Since(start); took > time.Second {
				t.Fatalf("probe took %v despite a 200ms timeout", took)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("probe failed: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("probe error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	t.Run("none has no prober", func(t *testing.T) {
		if p := newProber(catalog.Health{Type: catalog.HealthNone}, 80, "", ""); p != nil {
			t.Fatalf("prober %T for type none", p)
		}
	})
	t.Run("http sends the backend's host name", func(t *testing.T) {
		for _, tc := range []struct{ host, want string }{
			{"app1.corp.example", "app1.corp.example"},
			{"", web.String()}, // a backend given by address (backend.checkHost)
		} {
			p := newProber(httpCheck("/ok", 0), web.Port(), tc.host, "")
			if err := p.probe(context.Background(), web); err != nil {
				t.Fatal(err)
			}
			p.close()
			if got := hosts.Load().(string); got != tc.want {
				t.Errorf("host %q: Host %q, want %q", tc.host, got, tc.want)
			}
		}
	})
}

// TestUDPProbeDNS: a UDP check without a payload is a DNS query when the
// port it probes is 53, whatever health.port says (an SRV backend is
// probed on its record's port).
func TestUDPProbeDNS(t *testing.T) {
	cases := []struct {
		name       string
		healthPort uint16
		probed     uint16
		send       string
		dns        bool
	}{
		{"53, as health.port", 53, 53, "", true},
		{"53, health.port another (an SRV record's 53)", 5353, 53, "", true},
		{"another port, health.port 53 (an SRV record's port)", 53, 5353, "", false},
		{"another port", 5353, 5353, "", false},
		{"53 with a payload", 53, 53, "ping", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := catalog.Health{Type: catalog.HealthUDP, Port: tc.healthPort, Send: tc.send}
			if got := newUDPProbe(h, tc.probed, "ztna.internal.").dns; got != tc.dns {
				t.Errorf("DNS query %v, want %v", got, tc.dns)
			}
		})
	}
}

// TestProbesLeakNoFDs runs many checks of every kind, passing and failing,
// and counts the process's open files before and after.
func TestProbesLeakNoFDs(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	web := srv.Listener.Addr().(*net.TCPAddr).AddrPort()
	echo := udpServer(t, func(b []byte) []byte { return b })
	silent := udpServer(t, func([]byte) []byte { return nil })
	closed := closedPort(t)
	checks := []struct {
		h       catalog.Health
		targets []netip.AddrPort
	}{
		{catalog.Health{Type: catalog.HealthTCP}, []netip.AddrPort{web, closed}},
		{catalog.Health{Type: catalog.HealthHTTP, Path: "/"}, []netip.AddrPort{web, closed}},
		{catalog.Health{Type: catalog.HealthUDP, Send: "x"}, []netip.AddrPort{echo, closed, silent}},
	}
	// Finalisers close a leaked socket at the next collection and would
	// hide the leak.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	before := openFDs(t)
	for range 50 {
		for _, c := range checks {
			p := newProber(c.h, 0, "", "") // no check here depends on the port (UDP with a payload)
			for _, target := range c.targets {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				p.probe(ctx, target)
				cancel()
			}
			p.close()
		}
	}
	// The server side of the last HTTP checks may still be closing.
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := openFDs(t); after > before+2 {
		t.Fatalf("open files: %d before, %d after 450 checks", before, after)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// FuzzUDPProbeCheck feeds arbitrary replies to the UDP check: it never
// panics, and it passes only replies that contain what it expects.
func FuzzUDPProbeCheck(f *testing.F) {
	f.Add(dnsReply(0, 0)(resolver.ProbeQuery("ztna.internal.", 7)), uint16(7), true, "")
	f.Add([]byte("pong ping"), uint16(0), false, "pong")
	f.Add([]byte{}, uint16(0), false, "")
	f.Fuzz(func(t *testing.T, reply []byte, id uint16, dns bool, expect string) {
		p := &udpProbe{dns: dns, expect: []byte(expect)}
		err := p.check(reply, id)
		if err == nil && !strings.Contains(string(reply), expect) {
			t.Fatalf("reply %q passed without %q", reply, expect)
		}
	})
}
