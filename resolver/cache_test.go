package resolver

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

func TestCacheBound(t *testing.T) {
	c := newCache(4)
	v := newTestView()
	for i := range 100 {
		c.put(v, fmt.Appendf(nil, "k%d", i), cached{rcode: i})
	}
	n := 0
	for _, m := range []map[View]map[string]cached{c.cur, c.old} {
		for _, inner := range m {
			n += len(inner)
		}
	}
	if n > 8 {
		t.Errorf("%d entries held, want at most 2×4", n)
	}
	if _, ok := c.get(v, []byte("k99")); !ok {
		t.Error("the newest entry is gone")
	}
	if _, ok := c.get(v, []byte("k0")); ok {
		t.Error("the oldest entry is still there")
	}
}

func TestCacheKeepsHotEntries(t *testing.T) {
	c := newCache(4)
	v := newTestView()
	c.put(v, []byte("hot"), cached{rcode: 1})
	for i := range 20 { // asked once each, while "hot" is asked every time
		c.put(v, fmt.Appendf(nil, "cold%d", i), cached{})
		if e, ok := c.get(v, []byte("hot")); !ok || e.rcode != 1 {
			t.Fatalf("round %d: the hot entry was evicted", i)
		}
	}
}

func TestCacheDisabled(t *testing.T) {
	if c := newCache(-1); c != nil {
		t.Errorf("newCache(-1) = %v, want nil", c)
	}
}

// mapView is a View whose dynamic value is not comparable.
type mapView map[string]Entry

func (v mapView) Lookup(l string) (Entry, bool)    { e, ok := v[l]; return e, ok }
func (v mapView) Reverse(netip.Addr) (Entry, bool) { return Entry{}, false }

// structView is comparable by type but holds a non-comparable value.
type structView struct{ inner View }

func (v structView) Lookup(l string) (Entry, bool)      { return v.inner.Lookup(l) }
func (v structView) Reverse(a netip.Addr) (Entry, bool) { return v.inner.Reverse(a) }

func TestUncacheableViews(t *testing.T) {
	web, _, _, _ := testEntries()
	views := map[string]View{
		"map":                  mapView{"web": web},
		"struct holding a map": structView{inner: mapView{"web": web}},
		"nil":                  nil,
	}
	for name, v := range views {
		t.Run(name, func(t *testing.T) {
			s := newTestServer(t, testConfig(), &testDir{def: v})
			raw := ask(t, s, mustPack(t, newQuery("web.ztna.internal.", dns.TypeA, 0)), clientA, false)
			r := mustUnpack(t, raw)
			want := map[bool]int{true: dns.RcodeRefused, false: dns.RcodeSuccess}[v == nil]
			if r.Rcode != want || v != nil && len(r.Answer) != 1 {
				t.Errorf("rcode %s answer %v", dns.RcodeToString[r.Rcode], r.Answer)
			}
		})
	}
}

func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig()
	cfg.Registerer = reg
	a := newTestServer(t, cfg, testDirectory())
	b := newTestServer(t, cfg, testDirectory()) // a reload builds a new Server
	for _, s := range []*Server{a, b} {
		ask(t, s, mustPack(t, newQuery("web.ztna.internal.", dns.TypeA, 0)), clientA, false)
	}
	// ask answers three times per server.
	if n := counter(t, a, "ztgate_dns_queries_total", "rcode", "NOERROR"); n != 6 {
		t.Errorf("queries{NOERROR} = %v, want 6 from both servers", n)
	}
	if n := counter(t, a, "ztgate_dns_cache_lookups_total", "result", "miss"); n < 2 {
		t.Errorf("cache misses %v, want at least 2", n)
	}
	if _, err := New(Config{}, testDirectory(), nil); err != nil { // no Registerer at all
		t.Errorf("New without a Registerer: %v", err)
	}
}
