package gateway

import (
	"net/netip"
	"os"
	"slices"
	"testing"
)

func TestForwardingOff(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.100.0.0/24"), netip.MustParsePrefix("fd00:ed6e::/64")
	sysctls := func(v4, v6 string) func(string) ([]byte, error) {
		return func(path string) ([]byte, error) {
			switch path {
			case "/proc/sys/net/ipv4/ip_forward":
				return []byte(v4 + "\n"), nil
			case "/proc/sys/net/ipv6/conf/all/forwarding":
				if v6 == "" {
					return nil, os.ErrNotExist // no IPv6 in this kernel
				}
				return []byte(v6 + "\n"), nil
			}
			return nil, os.ErrNotExist
		}
	}
	for _, tc := range []struct {
		name  string
		pools []netip.Prefix
		read  func(string) ([]byte, error)
		want  []string
	}{
		{"forwarding", []netip.Prefix{v4, v6}, sysctls("1", "1"), nil},
		{"IPv4 off", []netip.Prefix{v4}, sysctls("0", "0"), []string{"net.ipv4.ip_forward"}},
		{"both off", []netip.Prefix{v4, v6}, sysctls("0", "0"), []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"}},
		{"IPv6 off, no IPv6 pool", []netip.Prefix{v4}, sysctls("1", "0"), nil},
		{"IPv6 off", []netip.Prefix{v4, v6}, sysctls("1", "0"), []string{"net.ipv6.conf.all.forwarding"}},
		{"unreadable", []netip.Prefix{v4, v6}, sysctls("1", ""), nil},
		{"two pools of a family, named once", []netip.Prefix{v4, netip.MustParsePrefix("10.200.0.0/24")}, sysctls("0", "1"), []string{"net.ipv4.ip_forward"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := forwardingOff(tc.pools, tc.read); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
