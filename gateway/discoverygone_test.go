package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/resolver"
	"github.com/ztgate/ztgate/resolver/resolvertest"
)

// TestDiscoveryNameGone: a name whose lookup fails (SERVFAIL) keeps its
// backends, and a name that no longer exists (NXDOMAIN) loses them, the
// same for a host name, an SRV record's target and the SRV name itself.
// The backends that leave are drained as any backend that leaves: new
// flows go to the others, a live flow is closed at drain_timeout.
func TestDiscoveryNameGone(t *testing.T) {
	const srvName = "_echo._tcp.app.corp.example"
	one, two := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	cases := []struct {
		name string
		// setup publishes the names; backends and srv are the service's
		// lines naming them. port is the echo servers' port.
		setup func(dns *resolvertest.Server, port int) (backends, srv string)
		name2 string // the name that fails, then goes
		gone  func(dns *resolvertest.Server)
		// before and after are the backends ("addr:SRV port").
		before, after func(port int) string
	}{
		{
			name: "host name",
			setup: func(dns *resolvertest.Server, port int) (string, string) {
				dns.SetHost("app.corp.example", 1, one)
				return `backends = ["app.corp.example", "127.0.0.2"]`, ""
			},
			name2:  "app.corp.example",
			gone:   func(dns *resolvertest.Server) { dns.SetHost("app.corp.example", 1) },
			before: func(int) string { return "[127.0.0.1:0 127.0.0.2:0]" },
			after:  func(int) string { return "[127.0.0.2:0]" },
		},
		{
			name: "SRV target",
			setup: func(dns *resolvertest.Server, port int) (string, string) {
				dns.SetHost("a.corp.example", 1, one)
				dns.SetHost("b.corp.example", 1, two)
				dns.SetSRV(srvName, 1,
					resolver.SRV{Target: "a.corp.example", Port: uint16(port), Priority: 10, Weight: 5},
					resolver.SRV{Target: "b.corp.example", Port: uint16(port), Priority: 10, Weight: 5})
				return "", `backends_srv = "` + srvName + `"`
			},
			name2:  "a.corp.example",
			gone:   func(dns *resolvertest.Server) { dns.SetHost("a.corp.example", 1) },
			before: func(p int) string { return fmt.Sprintf("[127.0.0.1:%d 127.0.0.2:%d]", p, p) },
			after:  func(p int) string { return fmt.Sprintf("[127.0.0.2:%d]", p) },
		},
		{
			name: "SRV name",
			setup: func(dns *resolvertest.Server, port int) (string, string) {
				dns.SetHost("a.corp.example", 1, one)
				// Priority 0, no weight: one tier with the address, in turn.
				dns.SetSRV(srvName, 1, resolver.SRV{Target: "a.corp.example", Port: uint16(port)})
				return `backends = ["127.0.0.2"]`, `backends_srv = "` + srvName + `"`
			},
			name2:  srvName,
			gone:   func(dns *resolvertest.Server) { dns.SetSRV(srvName, 1) },
			before: func(p int) string { return fmt.Sprintf("[127.0.0.1:%d 127.0.0.2:0]", p) },
			after:  func(int) string { return "[127.0.0.2:0]" },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dnsSrv := startDNS(t)
			port := startLineEchoPair(t, "127.0.0.1", "one", "127.0.0.2", "two")
			backends, srv := tc.setup(dnsSrv, port)
			h := newFileHarness(t, discoveryConfig(dnsSrv.Addr(), backends, srv, port))
			if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != tc.before(port) {
				t.Fatalf("backends %s, want %s", got, tc.before(port))
			}
			var held *lineConn // a flow on 127.0.0.1, which leaves
			for i := 0; i < 8 && held == nil; i++ {
				c := h.dialLines(t, acmeClient, "10.100.0.9:7")
				if got := c.roundTrip(t, fmt.Sprint(i)); strings.HasPrefix(got, "one:") {
					held = c
				}
			}
			if held == nil {
				t.Fatal("no flow on 127.0.0.1 out of 8")
			}

			// A failing resolver: the name keeps its backends, round
			// after round (min_ttl is 100ms).
			dnsSrv.SetServFail(tc.name2, true)
			before := dnsSrv.Queries()
			waitFor(t, 15*time.Second, "a few rounds of lookups", func() bool { return dnsSrv.Queries()-before >= 30 })
			if got := fmt.Sprint(backendAddrs(h.harness, "app")); got != tc.before(port) {
				t.Fatalf("while %s fails to resolve: backends %s, want %s", tc.name2, got, tc.before(port))
			}

			// The name no longer exists: its backends leave.
			dnsSrv.SetServFail(tc.name2, false)
			tc.gone(dnsSrv)
			waitFor(t, 10*time.Second, tc.name2+"'s backends to leave", func() bool {
				return fmt.Sprint(backendAddrs(h.harness, "app")) == tc.after(port)
			})
			for i := range 4 {
				if got := h.dialLines(t, acmeClient, "10.100.0.9:7").roundTrip(t, fmt.Sprint(i)); got != fmt.Sprintf("two: %d", i) {
					t.Fatalf("a new flow after %s went: %q", tc.name2, got)
				}
			}
			// drain_timeout is 1s: the live flow is closed then.
			held.c.SetReadDeadline(time.Now().Add(15 * time.Second))
			if _, err := held.r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the live flow of a backend gone from DNS: %v, want it closed by the drain", err)
			}
		})
	}
}

// TestDiscoveryNegativeAnswers: the answers a name gets, round after round
// of its watcher, and what is left of its backends. A negative answer
// (NXDOMAIN, or no record of the type asked) takes them away once a second
// one in a row, min_ttl or more after the first, confirms it; a failed
// lookup (SERVFAIL) keeps them and neither ends nor confirms a run of
// negative answers; an answer with addresses ends it. The same for a host
// name, an SRV record's target and the SRV name.
func TestDiscoveryNegativeAnswers(t *testing.T) {
	const (
		minTTL  = 5 * time.Second
		srvName = "_echo._tcp.app.corp.example"
	)
	one, two := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	// hostState makes a host name answer: "ok" its address, "nx" NXDOMAIN,
	// "nodata" no address (the name has another record), "servfail".
	hostState := func(dns *resolvertest.Server, name string, addr netip.Addr, state string) {
		dns.SetServFail(name, state == "servfail")
		dns.SetHost(name, 1)
		dns.SetSRV(name, 1)
		switch state {
		case "ok", "servfail":
			dns.SetHost(name, 1, addr)
		case "nodata":
			dns.SetSRV(name, 1, resolver.SRV{Target: "elsewhere.corp.example", Port: 1})
		}
	}
	kinds := []struct {
		name  string
		setup func(dns *resolvertest.Server)
		set   func(dns *resolvertest.Server, state string)
		round func(ctx context.Context, d *discovery) []backendAddr
		// the backends while the name resolves, and once it is gone
		kept, gone string
	}{
		{
			name:  "host name",
			setup: func(*resolvertest.Server) {},
			set: func(dns *resolvertest.Server, state string) {
				hostState(dns, "app.corp.example", one, state)
			},
			round: func(ctx context.Context, d *discovery) []backendAddr {
				got, _ := d.refreshHost(ctx, "app.corp.example")
				return got
			},
			kept: "[127.0.0.1:0]", gone: "[]",
		},
		{
			name: "SRV target",
			setup: func(dns *resolvertest.Server) {
				dns.SetHost("b.corp.example", 1, two)
				dns.SetSRV(srvName, 1,
					resolver.SRV{Target: "a.corp.example", Port: 80, Priority: 10, Weight: 5},
					resolver.SRV{Target: "a.corp.example", Port: 81, Priority: 10, Weight: 5},
					resolver.SRV{Target: "b.corp.example", Port: 80, Priority: 10, Weight: 5})
			},
			set: func(dns *resolvertest.Server, state string) {
				hostState(dns, "a.corp.example", one, state)
			},
			round: func(ctx context.Context, d *discovery) []backendAddr {
				got, _ := d.refreshSRV(ctx, srvName)
				return got
			},
			kept: "[127.0.0.1:80 127.0.0.1:81 127.0.0.2:80]", gone: "[127.0.0.2:80]",
		},
		{
			name:  "SRV name",
			setup: func(dns *resolvertest.Server) { dns.SetHost("a.corp.example", 1, one) },
			set: func(dns *resolvertest.Server, state string) {
				dns.SetServFail(srvName, state == "servfail")
				dns.SetSRV(srvName, 1)
				dns.SetHost(srvName, 1)
				switch state {
				case "ok", "servfail":
					dns.SetSRV(srvName, 1, resolver.SRV{Target: "a.corp.example", Port: 80})
				case "nodata":
					dns.SetHost(srvName, 1, netip.MustParseAddr("127.0.0.9"))
				}
			},
			round: func(ctx context.Context, d *discovery) []backendAddr {
				got, _ := d.refreshSRV(ctx, srvName)
				return got
			},
			kept: "[127.0.0.1:80]", gone: "[]",
		},
	}
	type step struct {
		state string        // what the name answers this round
		after time.Duration // since the last round
		gone  bool          // its backends are gone after the round
	}
	scenarios := []struct {
		name  string
		steps []step
	}{
		{"one NXDOMAIN, then the name is back", []step{
			{"nx", minTTL, false}, {"ok", minTTL, false}, {"ok", minTTL, false}}},
		{"two NXDOMAIN, min_ttl apart", []step{
			{"nx", minTTL, false}, {"nx", minTTL, true}, {"nx", minTTL, true}, {"ok", minTTL, false}}},
		{"NXDOMAIN answers within min_ttl do not confirm each other", []step{
			{"nx", minTTL, false}, {"nx", time.Second, false}, {"nx", 3 * time.Second, false}, {"nx", time.Second, true}}},
		{"no addresses, twice", []step{
			{"nodata", minTTL, false}, {"nodata", minTTL, true}}},
		{"NXDOMAIN, then no addresses", []step{
			{"nx", minTTL, false}, {"nodata", minTTL, true}}},
		{"SERVFAIL keeps the backends", []step{
			{"servfail", minTTL, false}, {"servfail", minTTL, false}, {"servfail", time.Hour, false}}},
		{"SERVFAIL neither ends nor confirms a run of NXDOMAIN", []step{
			{"nx", minTTL, false}, {"servfail", minTTL, false}, {"nx", minTTL, true}}},
		{"an answer ends a run of NXDOMAIN", []step{
			{"nx", minTTL, false}, {"ok", minTTL, false}, {"nx", minTTL, false}, {"nx", minTTL, true}}},
		{"SERVFAIL once gone brings nothing back", []step{
			{"nx", minTTL, false}, {"nx", minTTL, true}, {"servfail", minTTL, true}, {"ok", minTTL, false}}},
	}
	for _, k := range kinds {
		for _, sc := range scenarios {
			t.Run(k.name+"/"+sc.name, func(t *testing.T) {
				dnsSrv := startDNS(t)
				k.setup(dnsSrv)
				k.set(dnsSrv, "ok")
				g, _ := newUnitGateway(t)
				g.cfg.Discovery = conf.Discovery{Nameservers: []netip.AddrPort{dnsSrv.Addr()}, MinTTL: minTTL, MaxTTL: time.Minute}
				d := newDiscovery(g)
				now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
				d.now = func() time.Time { return now }
				ctx := context.Background()
				if got := fmt.Sprint(sortedAddrs(k.round(ctx, d))); got != k.kept {
					t.Fatalf("first round: %s, want %s", got, k.kept)
				}
				for i, s := range sc.steps {
					k.set(dnsSrv, s.state)
					now = now.Add(s.after)
					want := k.kept
					if s.gone {
						want = k.gone
					}
					if got := fmt.Sprint(sortedAddrs(k.round(ctx, d))); got != want {
						t.Fatalf("round %d (%s, %v later): %s, want %s", i+1, s.state, s.after, got, want)
					}
				}
			})
		}
	}
}

// sortedAddrs renders backend addresses as "addr:SRV port", sorted.
func sortedAddrs(as []backendAddr) []string {
	out := []string{}
	for _, a := range as {
		out = append(out, fmt.Sprintf("%s:%d", a.addr, a.port))
	}
	slices.Sort(out)
	return out
}
