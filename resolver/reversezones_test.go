package resolver

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// TestReverseZoneNames: the reverse zones a pool's PTR answers live in, as a
// host's resolver routes them to the server.
func TestReverseZoneNames(t *testing.T) {
	for _, tc := range []struct {
		pool  string
		limit int
		want  []string
	}{
		{"10.100.0.0/24", 64, []string{"0.100.10.in-addr.arpa"}},
		{"10.100.0.0/16", 64, []string{"100.10.in-addr.arpa"}},
		{"10.100.4.0/22", 64, []string{"4.100.10.in-addr.arpa", "5.100.10.in-addr.arpa", "6.100.10.in-addr.arpa", "7.100.10.in-addr.arpa"}},
		{"10.100.254.0/23", 64, []string{"254.100.10.in-addr.arpa", "255.100.10.in-addr.arpa"}},
		{"10.100.0.193/30", 64, []string{"192.0.100.10.in-addr.arpa", "193.0.100.10.in-addr.arpa", "194.0.100.10.in-addr.arpa", "195.0.100.10.in-addr.arpa"}},
		{"10.100.0.0/26", 63, nil},
		{"10.100.0.0/17", 64, nil},
		{"fd00:ab::/64", 64, []string{"0.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa"}},
		{"fd00:ab::/62", 64, []string{
			"0.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa", "1.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa",
			"2.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa", "3.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa"}},
		{"fd00:ab::ee0/123", 64, []string{
			// fd00:00ab:0000:0000:0000:0000:0000:0ee0: 31 nibbles
			"e.e." + strings.Repeat("0.", 21) + "b.a.0.0.0.0.d.f.ip6.arpa",
			"f.e." + strings.Repeat("0.", 21) + "b.a.0.0.0.0.d.f.ip6.arpa"}},
		{"0.0.0.0/0", 64, []string{"in-addr.arpa"}},
	} {
		t.Run(tc.pool, func(t *testing.T) {
			got := ReverseZones(netip.MustParsePrefix(tc.pool), tc.limit)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			apexesAnswered(t, netip.MustParsePrefix(tc.pool), got)
		})
	}
	if got := ReverseZones(netip.Prefix{}, 64); got != nil {
		t.Errorf("invalid pool: %q", got)
	}
	if got := ReverseZones(netip.MustParsePrefix("10.100.0.0/26"), 64); len(got) != 64 ||
		got[0] != "0.0.100.10.in-addr.arpa" || got[63] != "63.0.100.10.in-addr.arpa" {
		t.Errorf("/26 at limit 64: %d names %q", len(got), got)
	}
}

// apexesAnswered checks names against the server's own zone cut: a server
// for pool answers SOA at each name, with itself as the SOA's owner.
func apexesAnswered(t *testing.T, pool netip.Prefix, names []string) {
	t.Helper()
	z := poolZone(t, pool)
	for _, n := range names {
		wire, err := wireName(n+".", make([]byte, maxNameLen))
		if err != nil {
			t.Fatal(err)
		}
		a := z.resolve(newTestView(), &question{wire: wire, owner: n + ".", qtype: dns.TypeSOA, qclass: dns.ClassINET})
		if a.forward || !a.aa || findSOA(a) != n+"." {
			t.Errorf("%s: not an apex of the server (forward %v, aa %v, SOA at %q)", n, a.forward, a.aa, findSOA(a))
		}
	}
}
