package agent

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"

	"github.com/ztgate/ztgate/tunnel"
)

// FuzzDirectory feeds arbitrary directory messages, as the relay or a
// gateway's direct path would push them on the control stream, through
// the decoder and the agent's view of them (newDirectory, keepPool with
// the pool applyDirectory would pick): nothing panics, every name answered
// has an IPv4 VIP in the pool that is not one of the agent's own
// addresses, and every address answered (PTR) names a service whose name
// is answered and which holds that address.
func FuzzDirectory(f *testing.F) {
	seed := func(d *tunnel.Directory) {
		b, err := json.Marshal(d)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	seed(directoryOf(true))
	d := directoryOf(false)
	d.Pool6 = netip.MustParsePrefix("fd00:cd::/64")
	d.Services = append(d.Services,
		tunnel.DirectoryService{Name: "far", VIP: netip.MustParseAddr("192.0.2.7"), VIP6: netip.MustParseAddr("fd00:cd::7")},
		tunnel.DirectoryService{Name: "web", VIP: netip.MustParseAddr("10.100.0.9"), VIP6: netip.MustParseAddr("fd00:cd::9")},
		tunnel.DirectoryService{Name: "gw", VIP: netip.MustParseAddr("10.100.0.1")})
	seed(d)
	f.Add(`{"type":"directory","pool":"10.0.0.0/8","services":[{"name":"a","vip":"10.0.0.5"},{"name":"a","vip":"192.0.2.1"}]}`)
	f.Add(`{"type":"directory","pool":"10.0.0.0/8","services":[{"name":"a","vip":"10.0.0.5"},{"name":"b","vip":"10.0.0.5"}]}`)
	f.Add(`{"type":"directory","services":[{"name":"a","vip":"::ffff:10.100.0.5","ports":[{"protocol":"sctp","port":1}]}]}`)
	f.Add(`{"type":"directory","pool":"fd00::/64","services":[{"name":"a","vip":"fd00::5"}]}`)

	inForce := netip.MustParsePrefix("10.100.0.0/24")
	gw, own, server := netip.MustParseAddr("10.100.0.1"), innerAddr, netip.MustParseAddr("127.0.0.1")
	f.Fuzz(func(t *testing.T, body string) {
		msg, err := tunnel.DecodeControl(tunnel.MessageDirectory, json.RawMessage(body), nil)
		if err != nil {
			return
		}
		next := newDirectory(msg.(*tunnel.Directory))
		pool := next.pool
		if poolProblem(pool, own, server) != "" || !pool.IsValid() {
			pool = inForce
		}
		next.keepPool(pool, gw, own)
		for name, s := range next.byName {
			e, ok := next.Lookup(name)
			if !ok || e.Name != name {
				t.Fatalf("Lookup(%q) = %+v, %v", name, e, ok)
			}
			if e.VIP.IsValid() && (!e.VIP.Is4() || !pool.Contains(e.VIP) || e.VIP == gw || e.VIP == own) {
				t.Fatalf("%q answered at %v (pool %v)", name, e.VIP, pool)
			}
			if s.entry.VIP.IsValid() && next.byVIP[s.entry.VIP] != s {
				t.Fatalf("%q at %v, whose PTR names another service", name, s.entry.VIP)
			}
		}
		for addr, s := range next.byVIP {
			e, ok := next.Reverse(addr)
			if !ok || e.Name != s.name {
				t.Fatalf("Reverse(%v) = %+v, %v", addr, e, ok)
			}
			if next.byName[s.name] != s {
				t.Fatalf("PTR of %v names %q, whose name answers another service or none", addr, s.name)
			}
			if addr != s.entry.VIP && addr != s.vip6 {
				t.Fatalf("PTR of %v names %q, which is at %v and %v", addr, s.name, s.entry.VIP, s.vip6)
			}
		}
	})
}

// TestDirectoryDuplicates: a directory naming a service twice, or two
// services at one VIP, keeps the first: its name, A and PTR agree. Before,
// the last one's name and the first one's PTR were both answered (a PTR
// naming a service whose name resolved elsewhere, or to nothing once
// keepPool took the last one out), and a VIP's traffic went to the last
// service that had it while its A answered the first one's name.
func TestDirectoryDuplicates(t *testing.T) {
	pool := netip.MustParsePrefix("10.100.0.0/24")
	in, in2, out := netip.MustParseAddr("10.100.0.5"), netip.MustParseAddr("10.100.0.6"), netip.MustParseAddr("192.0.2.1")
	v6 := netip.MustParseAddr("fd00:cd::5")
	for _, tc := range []struct {
		name     string
		services []tunnel.DirectoryService
		want     map[string]netip.Addr // name: VIP
		ignored  []string
	}{
		{"name twice", []tunnel.DirectoryService{{Name: "a", VIP: in}, {Name: "a", VIP: in2}},
			map[string]netip.Addr{"a": in}, []string{"a"}},
		{"name twice, the last outside the pool", []tunnel.DirectoryService{{Name: "a", VIP: in}, {Name: "a", VIP: out}},
			map[string]netip.Addr{"a": in}, []string{"a"}},
		{"VIP twice", []tunnel.DirectoryService{{Name: "a", VIP: in}, {Name: "b", VIP: in}},
			map[string]netip.Addr{"a": in}, []string{"b"}},
		{"IPv6 VIP twice", []tunnel.DirectoryService{{Name: "a", VIP: in, VIP6: v6}, {Name: "b", VIP: in2, VIP6: v6}},
			map[string]netip.Addr{"a": in}, []string{"b"}},
		{"distinct", []tunnel.DirectoryService{{Name: "a", VIP: in, VIP6: v6}, {Name: "b", VIP: in2}},
			map[string]netip.Addr{"a": in, "b": in2}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDirectory(&tunnel.Directory{Pool: pool, Services: tc.services})
			d.keepPool(pool)
			if len(d.byName) != len(tc.want) {
				t.Errorf("names %v, want %v", len(d.byName), tc.want)
			}
			for name, vip := range tc.want {
				if e, ok := d.Lookup(name); !ok || e.VIP != vip {
					t.Errorf("Lookup(%q) = %v, %v; want %v", name, e.VIP, ok, vip)
				}
				if e, ok := d.Reverse(vip); !ok || e.Name != name {
					t.Errorf("Reverse(%v) = %q, %v; want %q", vip, e.Name, ok, name)
				}
			}
			for _, addr := range []netip.Addr{in, in2, out, v6} {
				if e, ok := d.Reverse(addr); ok {
					if got, ok := d.Lookup(e.Name); !ok || got.VIP != tc.want[e.Name] {
						t.Errorf("PTR of %v names %q, which answers %v, %v", addr, e.Name, got.VIP, ok)
					}
				}
			}
			if !slices.Equal(d.ignored, tc.ignored) {
				t.Errorf("ignored %v, want %v", d.ignored, tc.ignored)
			}
		})
	}
}
