package gateway

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// routesDevice is a LAN device that records the routes the gateway gives
// it, as the TUN device takes them (netstack.TUN.SetRoutes).
type routesDevice struct {
	*netstacktest.Client
	mu     sync.Mutex
	routes []netip.Prefix
}

func (d *routesDevice) SetRoutes(routes []netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.routes = slices.Clone(routes)
	return nil
}

func (d *routesDevice) now() []netip.Prefix {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.routes)
}

// TestRelayPoolsRoutedIntoTUN: behind a relay, LAN clients reach the VIPs
// of the relay's pool and pool6 (configuration.md, relay.pool6), so the
// gateway must route those pools into its TUN device, with its own
// tun.pool (its address, where LAN clients ask DNS). Before, the TUN kept
// the routes of the file's pools from the start, and a relay pool other
// than tun.pool was routed nowhere: the LAN could not reach a VIP the
// relay assigned. A relay that moves its pools moves the routes; an
// assign the gateway ignores changes none.
func TestRelayPoolsRoutedIntoTUN(t *testing.T) {
	rl, toml := relayWebGateway(t, "gw-routes", "STATE", "[tun]\npool6 = \"fd00:ab::/120\"\n")
	var dev *routesDevice
	h := newHarness(t, toml, func(o *Options) {
		dev = &routesDevice{Client: o.Device.(*netstacktest.Client)}
		o.Device = dev
	})
	s, err := rl.await("gw-routes", 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close("test over")
	own := []netip.Prefix{netip.MustParsePrefix("10.100.0.0/24"), netip.MustParsePrefix("fd00:ab::/120")}
	for _, a := range []tunnel.Assign{
		{Pool: netip.MustParsePrefix("10.200.0.0/24"), Pool6: netip.MustParsePrefix("fd00:99::/120"),
			VIPs: []tunnel.VIPAssignment{{Service: "web", VIP: netip.MustParseAddr("10.200.0.10"), VIP6: netip.MustParseAddr("fd00:99::a")}}},
		// The relay restarted with another pool and no pool6.
		{Pool: netip.MustParsePrefix("10.201.7.0/24"),
			VIPs: []tunnel.VIPAssignment{{Service: "web", VIP: netip.MustParseAddr("10.201.7.20")}}},
		// The relay's pool is the gateway's own.
		{Pool: netip.MustParsePrefix("10.100.0.0/24"), Pool6: netip.MustParsePrefix("fd00:ab::/120"),
			VIPs: []tunnel.VIPAssignment{{Service: "web", VIP: netip.MustParseAddr("10.100.0.30")}}},
	} {
		a.Type, a.Zone, a.TTL = tunnel.MessageAssign, "ztna.internal", 30
		if err := s.Send(a); err != nil {
			t.Fatal(err)
		}
		want := slices.Clone(own)
		for _, p := range []netip.Prefix{a.Pool, a.Pool6} {
			if p.IsValid() && !slices.Contains(want, p) {
				want = append(want, p)
			}
		}
		waitFor(t, 5*time.Second, "the relay's pools routed into the TUN", func() bool {
			svc := h.gw.tbl.Load().byName["web"]
			return svc != nil && svc.vip == a.VIPs[0].VIP && slices.Equal(dev.now(), want)
		})
	}
	// An assign the gateway ignores (a VIP outside the pool) routes
	// nothing new.
	before := dev.now()
	bad := tunnel.Assign{Type: tunnel.MessageAssign, Zone: "ztna.internal", TTL: 30, Pool: netip.MustParsePrefix("10.202.0.0/24"),
		VIPs: []tunnel.VIPAssignment{{Service: "web", VIP: netip.MustParseAddr("10.9.9.9")}}}
	if err := s.Send(bad); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the bad assign counted", func() bool {
		return testutil.ToFloat64(h.gw.m.controlRejects.WithLabelValues("bad_assign")) == 1
	})
	if got := dev.now(); !slices.Equal(got, before) {
		t.Fatalf("an ignored assign changed the TUN's routes to %v, want %v", got, before)
	}
}

// TestRelayPoolMoveEndsFlows: a relay that moves its pool (restarted with
// another) takes the VIPs of the old one out of the gateway's netstack,
// which drops its LAN clients' packets to them from then on (not_routed).
// Their flows are ended at once (reason vip_unrouted), as those of a
// source that left every tenant are: before, they lived on until their
// idle timeout, holding their backend's connection, and a TCP one resent
// to its client, whose answers were dropped (found by
// TestRelayReloadRandom's LAN side). A VIP that moves inside the pool
// keeps its flows.
func TestRelayPoolMoveEndsFlows(t *testing.T) {
	rl, toml := relayWebGateway(t, "gw-poolmove", "STATE", acmeTenant)
	h := newHarness(t, toml)
	s, err := rl.await("gw-poolmove", 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close("test over")
	assign := func(pool string, vip string) netip.Addr {
		t.Helper()
		a := tunnel.Assign{Type: tunnel.MessageAssign, Zone: "ztna.internal", TTL: 30, Pool: netip.MustParsePrefix(pool),
			VIPs: []tunnel.VIPAssignment{{Service: "web", VIP: netip.MustParseAddr(vip)}}}
		if err := s.Send(a); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the VIP in the table", func() bool {
			svc := h.gw.tbl.Load().byName["web"]
			return svc != nil && svc.vip == a.VIPs[0].VIP
		})
		return a.VIPs[0].VIP
	}
	flowsTo := func(vip netip.Addr) int {
		return len(h.gw.flows.list(func(f *flow) bool { return f.vip.Addr() == vip }))
	}
	open := func(vip netip.Addr) {
		t.Helper()
		c, err := h.client.DialUDP(acmeClient, netip.AddrPortFrom(vip, 53))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the LAN flow", func() bool { return flowsTo(vip) == 1 })
	}
	old := assign("10.200.0.0/24", "10.200.0.10")
	open(old)
	// The VIP moves inside the pool: the flow stays.
	assign("10.200.0.0/24", "10.200.0.20")
	time.Sleep(100 * time.Millisecond)
	if n := flowsTo(old); n != 1 {
		t.Fatalf("the VIP moved inside the pool: %d flows to the old one, want 1 (kept)", n)
	}
	// The pool moves: the flow ends.
	assign("10.201.7.0/24", "10.201.7.10")
	waitFor(t, 5*time.Second, "the flow to a VIP outside the relay's pool now ended", func() bool { return flowsTo(old) == 0 })
}
