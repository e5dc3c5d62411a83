package gateway

import (
	"net/netip"
	"testing"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// TestLinkMTUFor checks the tunnel link's MTU derived from a session
// (docs/protocol.md, "Sizing"): a reply must fit the session's datagram
// with its framing, and the link, shared by every session, only goes down.
func TestLinkMTUFor(t *testing.T) {
	for _, tc := range []struct {
		name                           string
		current, maxDatagram, overhead int
		want                           int
		lower                          bool
	}{
		{"relay session lowers the initial link", tunnelLinkMTU, 1200, tunnel.TagReturnOverhead, 1195, true},
		{"direct session: raw packets", tunnelLinkMTU, 1200, 0, 1200, true},
		{"a smaller session lowers it again", 1195, 1100, tunnel.TagReturnOverhead, 1095, true},
		{"a larger session never raises it", 1095, 1452, tunnel.TagReturnOverhead, 1095, false},
		{"exactly the current size", 1195, 1200, tunnel.TagReturnOverhead, 1195, false},
		{"ended session changes nothing", 1195, 0, tunnel.TagReturnOverhead, 1195, false},
		{"datagram smaller than the framing", 1195, 4, tunnel.TagReturnOverhead, 1195, false},
		{"a tiny session lowers it to the floor only", tunnelLinkMTU, 100, 0, minLinkMTU, true},
		{"a tiny session under a floored link", minLinkMTU, 100, tunnel.TagReturnOverhead, minLinkMTU, false},
		{"a session just over the floor", tunnelLinkMTU, minLinkMTU + 1, 0, minLinkMTU + 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, lower := linkMTUFor(tc.current, tc.maxDatagram, tc.overhead)
			if got != tc.want || lower != tc.lower {
				t.Errorf("linkMTUFor(%d, %d, %d) = %d, %v; want %d, %v",
					tc.current, tc.maxDatagram, tc.overhead, got, lower, tc.want, tc.lower)
			}
		})
	}
}

// TestDirectoryPools: a direct agent's directory carries the pools the
// VIPs come from: the relay's, both of them, once the relay has assigned
// them (no IPv6 pool when the relay has none), else the gateway's own.
func TestDirectoryPools(t *testing.T) {
	local4, local6 := netip.MustParsePrefix("10.100.0.0/16"), netip.MustParsePrefix("fd00:100::/64")
	relay4, relay6 := netip.MustParsePrefix("10.200.0.0/16"), netip.MustParsePrefix("fd00:200::/64")
	for _, tc := range []struct {
		name                string
		relay               *relayState
		wantPool, wantPool6 netip.Prefix
	}{
		{"no relay", nil, local4, local6},
		{"relay not assigned yet", &relayState{}, local4, local6},
		{"relay with both pools", &relayState{pool: relay4, pool6: relay6}, relay4, relay6},
		{"relay without an IPv6 pool", &relayState{pool: relay4}, relay4, netip.Prefix{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &conf.Gateway{}
			cfg.TUN.Pool, cfg.TUN.Pool6 = local4, local6
			g := &Gateway{cfg: cfg, relay: tc.relay}
			g.tbl.Store(&table{byName: map[string]*service{}})
			d := g.directory("acme", tunnel.Identity{Tenant: "acme"})
			if d.Pool != tc.wantPool || d.Pool6 != tc.wantPool6 {
				t.Errorf("pools %v, %v; want %v, %v", d.Pool, d.Pool6, tc.wantPool, tc.wantPool6)
			}
		})
	}
}
