package resolver

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestReverseZones checks the zone cut of pools that are not octet or
// nibble aligned.
func TestReverseZones(t *testing.T) {
	vip := Entry{Name: "web", VIP: netip.MustParseAddr("10.100.1.5"), VIP6: netip.MustParseAddr("fd00:ab:0:10::5")}
	view := newTestView(vip)
	tests := []struct {
		name    string
		pool    string
		qname   string
		qtype   uint16
		forward bool   // not in the zone: forwarded
		rcode   int    // when in the zone
		soa     string // owner of the SOA in the answer or authority section
		ptr     bool   // a PTR answer
	}{
		{name: "/22: address", pool: "10.100.0.0/22", qname: "5.1.100.10.in-addr.arpa.", qtype: dns.TypePTR, ptr: true},
		{name: "/22: unknown address", pool: "10.100.0.0/22", qname: "6.1.100.10.in-addr.arpa.", qtype: dns.TypePTR,
			rcode: dns.RcodeNameError, soa: "1.100.10.in-addr.arpa."},
		{name: "/22: each /24 is an apex", pool: "10.100.0.0/22", qname: "3.100.10.in-addr.arpa.", qtype: dns.TypeSOA, soa: "3.100.10.in-addr.arpa."},
		{name: "/22: the /16 above is not ours", pool: "10.100.0.0/22", qname: "100.10.in-addr.arpa.", qtype: dns.TypeSOA, forward: true},
		{name: "/22: outside the pool", pool: "10.100.0.0/22", qname: "5.4.100.10.in-addr.arpa.", qtype: dns.TypePTR, forward: true},
		{name: "/26: each address is an apex", pool: "10.100.1.0/26", qname: "5.1.100.10.in-addr.arpa.", qtype: dns.TypeSOA, soa: "5.1.100.10.in-addr.arpa."},
		{name: "/26: PTR at an apex", pool: "10.100.1.0/26", qname: "5.1.100.10.in-addr.arpa.", qtype: dns.TypePTR, ptr: true},
		{name: "/26: unknown address is NODATA", pool: "10.100.1.0/26", qname: "6.1.100.10.in-addr.arpa.", qtype: dns.TypePTR,
			soa: "6.1.100.10.in-addr.arpa."},
		{name: "/26: outside the pool", pool: "10.100.1.0/26", qname: "70.1.100.10.in-addr.arpa.", qtype: dns.TypePTR, forward: true},
		{name: "/26: the /24 is not ours", pool: "10.100.1.0/26", qname: "1.100.10.in-addr.arpa.", qtype: dns.TypeSOA, forward: true},
		{name: "/60: apex of 15 nibbles", pool: "fd00:ab:0:10::/60", qname: "1.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa.", qtype: dns.TypeSOA,
			soa: "1.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa."},
		{name: "/60: 14 nibbles are not ours", pool: "fd00:ab:0:10::/60", qname: "0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa.", qtype: dns.TypeSOA,
			forward: true},
		{name: "/60: address", pool: "fd00:ab:0:10::/60", qname: reverseName(t, "fd00:ab:0:10::5"), qtype: dns.TypePTR, ptr: true},
		{name: "/60: empty non-terminal", pool: "fd00:ab:0:10::/60", qname: "0.1.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa.", qtype: dns.TypePTR,
			soa: "1.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa."},
		{name: "/60: nibble not hex", pool: "fd00:ab:0:10::/60", qname: "x.1.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa.", qtype: dns.TypePTR,
			rcode: dns.RcodeNameError, soa: "1.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa."},
		{name: "/60: outside the pool", pool: "fd00:ab:0:10::/60", qname: reverseName(t, "fd00:ab:0:20::5"), qtype: dns.TypePTR, forward: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			z := poolZone(t, netip.MustParsePrefix(tc.pool), netip.MustParseAddrPort("192.0.2.53:53"))
			name, err := wireName(tc.qname, make([]byte, maxNameLen))
			if err != nil {
				t.Fatal(err)
			}
			a := z.resolve(view, &question{wire: name, owner: tc.qname, qtype: tc.qtype, qclass: dns.ClassINET})
			if a.forward != tc.forward {
				t.Fatalf("forward %v, want %v", a.forward, tc.forward)
			}
			if tc.forward {
				return
			}
			if a.rcode != tc.rcode || !a.aa {
				t.Errorf("rcode %s aa %v, want %s true", dns.RcodeToString[a.rcode], a.aa, dns.RcodeToString[tc.rcode])
			}
			if got := len(a.ans) == 1 && a.ans[0].Header().Rrtype == dns.TypePTR; got != tc.ptr {
				t.Errorf("answer %v, want a PTR: %v", a.ans, tc.ptr)
			}
			if tc.soa != "" {
				if soa := findSOA(a); soa != tc.soa {
					t.Errorf("SOA at %q, want %q", soa, tc.soa)
				}
			}
		})
	}
}

// poolZone is the zone of a server for pool (IPv4 or IPv6) forwarding to
// upstreams.
func poolZone(t *testing.T, pool netip.Prefix, upstreams ...netip.AddrPort) *zone {
	t.Helper()
	cfg := Config{Upstreams: upstreams}
	if pool.Addr().Is4() {
		cfg.Pool = pool
	} else {
		cfg.Pool6 = pool
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return newZone(&cfg, 1)
}

func reverseName(t *testing.T, addr string) string {
	name, err := dns.ReverseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	return name
}

func findSOA(a answer) string {
	for _, rr := range append(a.ans, a.ns...) {
		if soa, ok := rr.(*dns.SOA); ok {
			return strings.ToLower(soa.Hdr.Name)
		}
	}
	return ""
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := Config{Pool: netip.MustParsePrefix("10.100.0.0/24")}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Zone != DefaultZone || cfg.TTL != DefaultTTL || cfg.ForwardTimeout != DefaultForwardTimeout ||
		cfg.NSAddr != netip.MustParseAddr("10.100.0.1") || cfg.MaxUDPSize != DefaultMaxUDPSize || cfg.Readers < 1 {
		t.Errorf("defaults %+v", cfg)
	}
	if cfg, _ := (Config{MaxUDPSize: 100}).withDefaults(); cfg.MaxUDPSize != dns.MinMsgSize {
		t.Errorf("MaxUDPSize %d, want at least %d", cfg.MaxUDPSize, dns.MinMsgSize)
	}
}

func TestConfigInvalid(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // in the error
	}{
		{name: "upper-case zone", cfg: Config{Zone: "Ztna.internal."}, want: "zone"},
		{name: "zone not fully qualified", cfg: Config{Zone: "ztna.internal"}, want: "zone"},
		{name: "root zone", cfg: Config{Zone: "."}, want: "zone"},
		{name: "label too long", cfg: Config{Zone: strings.Repeat("a", 64) + "."}, want: "zone"},
		{name: "negative TTL", cfg: Config{TTL: -time.Second}, want: "ttl"},
		{name: "negative timeout", cfg: Config{ForwardTimeout: -1}, want: "timeouts"},
		{name: "negative limit", cfg: Config{MaxTCPConns: -1}, want: "limits"},
		{name: "upstream without port", cfg: Config{Upstreams: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0)}}, want: "upstreams[0]"},
		{name: "IPv6 pool as Pool", cfg: Config{Pool: netip.MustParsePrefix("fd00::/64")}, want: "pool"},
		{name: "IPv4 pool as Pool6", cfg: Config{Pool6: netip.MustParsePrefix("10.0.0.0/24")}, want: "pool6"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg, &testDir{}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error about %s", err, tc.want)
			}
		})
	}
	if _, err := New(Config{}, nil, nil); err == nil {
		t.Error("New with a nil Directory: no error")
	}
}

// TestSetPools: the reverse zones follow SetPools (an agent's pool follows
// what its server pushes): a PTR in the new pool is answered, one in the
// old pool no longer (REFUSED, with no upstreams), IPv6 as well.
func TestSetPools(t *testing.T) {
	web := Entry{Name: "web", VIP: netip.MustParseAddr("10.200.0.5"), VIP6: netip.MustParseAddr("fd00:cd::5")}
	old := Entry{Name: "old", VIP: netip.MustParseAddr("10.100.0.5")}
	dir := &testDir{def: newTestView(web, old)}
	cfg := testConfig() // 10.100.0.0/24, fd00:ab::/64
	s := newTestServer(t, cfg, dir)
	ptr := func(addr string) int {
		t.Helper()
		name, err := dns.ReverseAddr(addr)
		if err != nil {
			t.Fatal(err)
		}
		return mustUnpack(t, ask(t, s, mustPack(t, newQuery(name, dns.TypePTR, 0)), clientA, false)).Rcode
	}
	if got := ptr("10.200.0.5"); got != dns.RcodeRefused {
		t.Fatalf("PTR outside the pool: %s, want REFUSED", dns.RcodeToString[got])
	}
	// One reader's cache, which holds the REFUSED: it must not outlive the
	// zones it was answered from.
	wk := s.newWorker()
	name, _ := dns.ReverseAddr("10.200.0.5")
	raw := mustPack(t, newQuery(name, dns.TypePTR, 0))
	if out, _ := s.handle(wk, raw, clientA, false); mustUnpack(t, out).Rcode != dns.RcodeRefused {
		t.Fatal("the reader's first answer is not REFUSED")
	}
	serial := s.zone.Load().serial
	s.SetPools(netip.MustParsePrefix("10.200.0.0/16"), netip.MustParsePrefix("fd00:cd::/64"))
	if out, _ := s.handle(wk, raw, clientA, false); mustUnpack(t, out).Rcode != dns.RcodeSuccess {
		t.Errorf("the reader answered %s from its cache after SetPools", dns.RcodeToString[mustUnpack(t, out).Rcode])
	}
	for addr, want := range map[string]int{"10.200.0.5": dns.RcodeSuccess, "fd00:cd::5": dns.RcodeSuccess, "10.100.0.5": dns.RcodeRefused} {
		if got := ptr(addr); got != want {
			t.Errorf("PTR of %s after SetPools: %s, want %s", addr, dns.RcodeToString[got], dns.RcodeToString[want])
		}
	}
	if s.zone.Load().serial != serial+1 {
		t.Errorf("serial %d after SetPools, want %d", s.zone.Load().serial, serial+1)
	}
}
