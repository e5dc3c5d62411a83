package gateway

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestTunnelIPv6CountedNotIPv4: the tunnel carries IPv4 only; an IPv6
// packet from an agent (under a relay tag or on a direct session: both
// reach deliverTunnel) is dropped as not_ipv4, the reason the agent uses
// for the same packet, not as malformed, which stays for an IPv4 packet
// that does not parse. Before, both were malformed.
func TestTunnelIPv6CountedNotIPv4(t *testing.T) {
	h := newTunnelHarness(t, "")
	in, _ := h.testIngress(t, "acme")
	count := func(reason string) float64 { return testutil.ToFloat64(h.gw.m.dropped.WithLabelValues(reason)) }
	// An IPv6 UDP datagram: the header (version 6, payload length 9,
	// next header UDP, hop limit 64, source, destination), then UDP.
	v6 := append([]byte{0x60, 0, 0, 0, 0, 9, 17, 64}, netip.MustParseAddr("2001:db8::9").AsSlice()...)
	v6 = append(v6, netip.MustParseAddr("fd00::10").AsSlice()...)
	v6 = append(v6, 0x0f, 0xa0, 0, 53, 0, 9, 0, 0, 'x')
	for _, tc := range []struct {
		name, service string
		pkt           []byte
		reason        string
	}{
		{"IPv6 to any service", "", v6, "not_ipv4"},
		{"IPv6 as web's", "web", v6, "not_ipv4"},
		{"IPv6 header cut short", "", v6[:7], "not_ipv4"},
		{"IPv4 header cut short", "", []byte{0x45, 0, 0, 20}, "malformed"},
		{"empty", "", nil, "malformed"},
	} {
		notV4, malformed := count("not_ipv4"), count("malformed")
		h.gw.deliverTunnel(in, tc.service, append([]byte(nil), tc.pkt...), h.gw.tunLink)
		want := map[string]float64{"not_ipv4": notV4, "malformed": malformed}
		want[tc.reason]++
		for r, n := range want {
			if got := count(r); got != n {
				t.Errorf("%s: %s counted %v, want %v", tc.name, r, got, n)
			}
		}
	}
}
