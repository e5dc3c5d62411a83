package agent

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// TestTunnelMTU checks the TUN's MTU derived from a session's sizes
// (docs/protocol.md, "Sizing"): every packet the TUN takes must fit the
// agent's datagram with a 0x2F header for the longest service name, and
// the relay's bound onwards.
func TestTunnelMTU(t *testing.T) {
	for _, tc := range []struct {
		name                             string
		configured, maxDatagram, welcome int
		want                             int
	}{
		{"datagram lowers the configured bound", 1280, 1200, 0, 1200 - 2 - 63},
		{"welcome lowers it further", 1280, 1200, 1100, 1100},
		{"datagram tighter than the welcome", 1280, 1100, 1200, 1100 - 2 - 63},
		{"configured bound is the smallest", 1000, 1452, 1383, 1000},
		{"grown path still capped by the configuration", 1280, 1452, 1383, 1280},
		{"ended session: size unknown", 1280, 0, 0, 1280},
		{"unknown datagram, welcome known", 1280, 0, 1131, 1131},
		{"floored at 576", 1280, 600, 0, minMTU},
		{"small welcome floored at 576", 1280, 1200, 500, minMTU},
		{"small configuration floored at 576", 400, 1200, 0, minMTU},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tunnelMTU(tc.configured, tc.maxDatagram, tc.welcome); got != tc.want {
				t.Errorf("tunnelMTU(%d, %d, %d) = %d, want %d", tc.configured, tc.maxDatagram, tc.welcome, got, tc.want)
			}
		})
	}
}

// TestApplyMTURetriesAfterFailure checks that a TUN that cannot be resized
// leaves the agent's MTU and the local link as they were, so that the next
// session with the same size tries again.
func TestApplyMTURetriesAfterFailure(t *testing.T) {
	st, err := netstack.New(netstack.Config{
		Pools:   []netip.Prefix{netip.MustParsePrefix("10.100.0.0/24")},
		Local:   []netip.Addr{netip.MustParseAddr("10.100.0.1")},
		Handler: refuser{},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dev, err := netstacktest.NewClient(1280, innerAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	link, err := st.NewLink(netstack.LinkConfig{
		Name: "local", MTU: dev.MTU(), Output: dev,
		Headroom: dev.Headroom(), WriteCap: dev.WriteCap(), BatchSize: dev.BatchSize(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	a := &Agent{log: slog.New(slog.DiscardHandler), local: link}
	a.mtu.Store(1280)

	a.applyMTU(1100, func(int) error { return errors.New("device busy") })
	if got := a.mtu.Load(); got != 1280 {
		t.Errorf("after a failed resize the agent's MTU is %d, want 1280", got)
	}
	if got := link.MTU(); got != 1280 {
		t.Errorf("after a failed resize the local link's MTU is %d, want 1280", got)
	}

	tried := 0
	a.applyMTU(1100, func(mtu int) error { tried = mtu; return nil })
	if tried != 1100 {
		t.Errorf("the next session with the same size set the TUN to %d, want a retry with 1100", tried)
	}
	if got := a.mtu.Load(); got != 1100 {
		t.Errorf("after the retry the agent's MTU is %d, want 1100", got)
	}
	if got := link.MTU(); got != 1100 {
		t.Errorf("after the retry the local link's MTU is %d, want 1100", got)
	}
}

func TestPoolProblem(t *testing.T) {
	own, server := netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("203.0.113.5")
	tests := []struct {
		pool string
		ok   bool
	}{
		{"", true}, // none pushed
		{"10.100.0.0/24", true},
		{"10.0.0.0/8", true},
		{"10.100.0.0/29", true},
		{"0.0.0.0/0", false},
		{"10.0.0.0/7", false},
		{"10.100.0.0/30", false},
		{"2001:db8::/64", false},
		{"100.64.0.0/24", false},  // the agent's own address
		{"203.0.113.0/24", false}, // the server's
	}
	for _, tc := range tests {
		t.Run(tc.pool, func(t *testing.T) {
			var p netip.Prefix
			if tc.pool != "" {
				p = netip.MustParsePrefix(tc.pool)
			}
			if why := poolProblem(p, own, server); (why == "") != tc.ok {
				t.Errorf("poolProblem = %q, want ok=%v", why, tc.ok)
			}
		})
	}
}

// TestRefusedPoolKept: a server that pushes a pool holding the agent's
// own address has it refused; the pool in force and its route stay, the
// directory's services inside it are taken, and one outside it is not
// (its name would lead to an address the agent does not route).
func TestRefusedPoolKept(t *testing.T) {
	p := newPKI(t)
	outside := netip.MustParseAddr("100.64.5.5")
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) {
		d := directoryOf(true)
		d.Pool = netip.MustParsePrefix("100.64.0.0/10")
		d.Services = append(d.Services, tunnel.DirectoryService{Name: "far", VIP: outside, Healthy: true})
		s.Send(d)
	})
	a, _ := startAgent(t, p, relay.addr())
	d := a.dir.Load()
	if d.pool != netip.MustParsePrefix("10.100.0.0/24") {
		t.Errorf("pool %v, want the configured one kept", d.pool)
	}
	if _, ok := d.Lookup("web"); !ok {
		t.Error("the directory's services were not taken")
	}
	if _, ok := d.Lookup("far"); ok {
		t.Error("a service outside the pool in force is answered")
	}
	if _, ok := d.Reverse(outside); ok {
		t.Error("its VIP is still known")
	}
}

// TestTUNRoutesKeepDNS: the zone is answered at the gateway address
// (10.100.0.1) through the TUN whatever pool the server pushes: a pool that
// does not hold it (a relay's pool of 10.200.0.0/16) is routed together
// with that address, or the host's resolver would send its queries for the
// zone out of the default route.
func TestTUNRoutesKeepDNS(t *testing.T) {
	gw := netip.MustParseAddr("10.100.0.1")
	for _, tc := range []struct {
		pool string
		want []string
	}{
		{"10.100.0.0/24", []string{"10.100.0.0/24"}},
		{"10.0.0.0/8", []string{"10.0.0.0/8"}},
		{"10.200.0.0/16", []string{"10.200.0.0/16", "10.100.0.1/32"}},
	} {
		var want []netip.Prefix
		for _, w := range tc.want {
			want = append(want, netip.MustParsePrefix(w))
		}
		if got := tunRoutes(netip.MustParsePrefix(tc.pool), gw); !slices.Equal(got, want) {
			t.Errorf("tunRoutes(%s) = %v, want %v", tc.pool, got, want)
		}
	}
}
