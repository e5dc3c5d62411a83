package gateway

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

func TestDirectCandidates(t *testing.T) {
	observed := netip.MustParseAddrPort("198.51.100.7:61000")
	ifaces := tunnel.HostAddrs()
	var v4 []netip.AddrPort
	for _, a := range ifaces {
		if a.Is4() {
			v4 = append(v4, netip.AddrPortFrom(a, 4434))
		}
	}
	tests := []struct {
		name     string
		listen   string
		observed netip.AddrPort
		want     []netip.AddrPort // nil with wantAll: the interface addresses then observed
		wantAll  bool
	}{
		{"no listener", "", observed, nil, false},
		{"port 0", "192.0.2.1:0", observed, nil, false},
		{"specific address, then the observed one with the listen port", "192.0.2.1:4434", observed,
			[]netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434"), netip.MustParseAddrPort("198.51.100.7:4434")}, false},
		{"observed equal to the configured one", "198.51.100.7:4434", observed,
			[]netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:4434")}, false},
		{"loopback observed is left out", "192.0.2.1:4434", netip.MustParseAddrPort("127.0.0.1:5"),
			[]netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}, false},
		{"no observed address", "192.0.2.1:4434", netip.AddrPort{},
			[]netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4434")}, false},
		{"0.0.0.0: the IPv4 interface addresses", "0.0.0.0:4434", netip.AddrPort{}, v4, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &Gateway{cfg: &conf.Gateway{Tunnel: conf.Tunnel{Listen: tc.listen}}}
			got := g.directCandidates(tc.observed)
			want := tc.want
			if tc.wantAll && len(want) > 8 {
				want = want[:8]
			}
			if !slices.Equal(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
			for _, c := range got {
				if !tunnel.Dialable(c.Addr()) || c.Port() == 0 {
					t.Errorf("candidate %v", c)
				}
			}
		})
	}
}
