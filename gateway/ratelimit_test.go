package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
)

func TestRateTable(t *testing.T) {
	a, b := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")
	srcA, srcB := rateKey{src: a}, rateKey{src: b}
	webA, dbA := rateKey{service: "web", src: a}, rateKey{service: "db", src: a}
	t0 := time.Unix(1_000_000, 0)
	type step struct {
		key       rateKey
		at        time.Duration // after t0
		rate, bst int
		n         int // attempts at that instant
		allowed   int // how many of them must pass
		size      int // buckets held afterwards; -1: don't check
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"unlimited", []step{{srcA, 0, 0, 0, 10000, 10000, 0}}},
		{"burst then refuse", []step{{srcA, 0, 10, 5, 8, 5, 1}}},
		{"burst 0 is 1", []step{{srcA, 0, 10, 0, 3, 1, 1}}},
		{"sources are independent", []step{
			{srcA, 0, 10, 5, 5, 5, 1},
			{srcB, 0, 10, 5, 5, 5, 2},
			{srcA, 0, 10, 5, 1, 0, 2},
		}},
		{"a source's buckets per service are independent of its own and of each other", []step{
			{srcA, 0, 10, 5, 5, 5, 1},
			{webA, 0, 2, 2, 3, 2, 2},
			{dbA, 0, 3, 3, 4, 3, 3},
			{srcA, 0, 10, 5, 1, 0, 3},
		}},
		{"tokens refill at the rate", []step{
			{srcA, 0, 10, 5, 5, 5, 1},
			{srcA, 100 * time.Millisecond, 10, 5, 3, 1, 1},
			{srcA, 400 * time.Millisecond, 10, 5, 5, 3, 1},
		}},
		{"idle buckets expire without loss", []step{
			{srcA, 0, 10, 5, 5, 5, 1},
			{srcB, 1500 * time.Millisecond, 10, 5, 1, 1, 2}, // rotation: a moves to the old generation
			{srcB, 3000 * time.Millisecond, 10, 5, 1, 1, 1}, // a, idle for a refill period, is gone
			{srcA, 3000 * time.Millisecond, 10, 5, 5, 5, 2}, // and comes back with a full burst
		}},
		{"a slow bucket outlives the second that fast ones take", []step{
			{webA, 0, 1, 10, 10, 10, 1}, // refills in 10 s
			{srcB, 1500 * time.Millisecond, 10, 5, 1, 1, 2},
			{srcB, 3 * time.Second, 10, 5, 1, 1, 2},
			{webA, 3 * time.Second, 1, 10, 4, 3, 2}, // kept: 3 tokens refilled, not a new burst
		}},
		{"a slow bucket expires after its refill time", []step{
			{webA, 0, 1, 10, 10, 10, 1},
			{srcB, 10 * time.Second, 10, 5, 1, 1, 2}, // rotation: web moves to the old generation
			{srcB, 20 * time.Second, 10, 5, 1, 1, 1}, // gone, as full as a new one
			{webA, 20 * time.Second, 1, 10, 11, 10, 2},
		}},
		{"a long pause forgets everything", []step{
			{srcA, 0, 10, 5, 5, 5, 1},
			{srcB, 10 * time.Second, 10, 5, 1, 1, 1},
		}},
		{"a new rate resets the bucket", []step{
			{srcA, 0, 10, 5, 5, 5, 1},
			{srcA, 0, 10, 8, 8, 8, 1},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRateTable()
			for i, s := range tc.steps {
				got := 0
				for range s.n {
					if r.allow(s.key, s.rate, s.bst, t0.Add(s.at)) {
						got++
					}
				}
				if got != s.allowed {
					t.Fatalf("step %d: %d of %d allowed, want %d", i, got, s.n, s.allowed)
				}
				if s.size >= 0 && r.size() != s.size {
					t.Fatalf("step %d: %d buckets held, want %d", i, r.size(), s.size)
				}
			}
		})
	}
}

// TestRateTableBounded floods the table from more sources than it holds
// within one refill period: it stays within two generations.
func TestRateTableBounded(t *testing.T) {
	r := newRateTable()
	now := time.Unix(1_000_000, 0)
	for i := range 5 * maxRateSources {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if !r.allow(rateKey{src: src}, 1000, 2000, now) {
			t.Fatalf("source %d refused its first flow", i)
		}
		if n := r.size(); n > 2*maxRateSources {
			t.Fatalf("%d buckets held, bound %d", n, 2*maxRateSources)
		}
	}
}

// TestOwnRate checks the rate and burst a tenant or service gets from its
// own keys and the gateway's [limits].
func TestOwnRate(t *testing.T) {
	gw := conf.Limits{NewFlowsPerSecond: 100, NewFlowsBurst: 150}
	cases := []struct {
		name             string
		own              catalog.FlowLimits
		global           conf.Limits
		wantRate, wantBu int
	}{
		{"none of its own", catalog.FlowLimits{}, gw, 0, 0},
		{"a burst without a rate is nothing", catalog.FlowLimits{NewFlowsBurst: 9}, gw, 0, 0},
		{"rate and burst", catalog.FlowLimits{NewFlowsPerSecond: 10, NewFlowsBurst: 15}, gw, 10, 15},
		{"default burst twice the rate", catalog.FlowLimits{NewFlowsPerSecond: 10}, gw, 10, 20},
		{"default burst at most the gateway's", catalog.FlowLimits{NewFlowsPerSecond: 90}, gw, 90, 150},
		{"capped by a lowered gateway rate", catalog.FlowLimits{NewFlowsPerSecond: 500, NewFlowsBurst: 600}, gw, 100, 150},
		{"no cap when the gateway is unlimited", catalog.FlowLimits{NewFlowsPerSecond: 500}, conf.Limits{}, 500, 1000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, b := ownRate(tc.own, tc.global)
			if r != tc.wantRate || b != tc.wantBu {
				t.Errorf("ownRate = %d/s burst %d, want %d/s burst %d", r, b, tc.wantRate, tc.wantBu)
			}
		})
	}
}

// TestTenantHandshakeBound checks the in-flight handshakes a tenant may
// hold: its own bound, else its share of the gateway's, never more than
// the gateway's.
func TestTenantHandshakeBound(t *testing.T) {
	tbl := &table{tenants: newTenantTable([]catalog.Tenant{
		{Name: "own", FlowLimits: catalog.FlowLimits{MaxInflightHandshakes: 100}},
		{Name: "big", FlowLimits: catalog.FlowLimits{MaxInflightHandshakes: 5000}},
		{Name: "rated", FlowLimits: catalog.FlowLimits{NewFlowsPerSecond: 5}},
	})}
	cases := []struct {
		tenant  string
		gateway int
		want    int
	}{
		{"own", 1024, 100},
		{"big", 1024, 1024}, // an API or stale value never exceeds the running bound
		{"rated", 1024, 512},
		{"unknown", 1024, 512},
		{"unknown", 1, 1},
	}
	for _, tc := range cases {
		g := &Gateway{cfg: &conf.Gateway{Limits: conf.Limits{MaxInflightHandshake: tc.gateway}}}
		if got := g.tenantHandshakes(tbl, tc.tenant); got != tc.want {
			t.Errorf("tenant %q with a gateway bound of %d: %d, want %d", tc.tenant, tc.gateway, got, tc.want)
		}
	}
}
