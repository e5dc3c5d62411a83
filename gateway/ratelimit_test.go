package gateway

import (
	"net/netip"
	"testing"
	"time"
)

func TestRateTable(t *testing.T) {
	a, b := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")
	t0 := time.Unix(1_000_000, 0)
	type step struct {
		src       netip.Addr
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
		{"unlimited", []step{{a, 0, 0, 0, 10000, 10000, 0}}},
		{"burst then refuse", []step{{a, 0, 10, 5, 8, 5, 1}}},
		{"sources are independent", []step{
			{a, 0, 10, 5, 5, 5, 1},
			{b, 0, 10, 5, 5, 5, 2},
			{a, 0, 10, 5, 1, 0, 2},
		}},
		{"tokens refill at the rate", []step{
			{a, 0, 10, 5, 5, 5, 1},
			{a, 100 * time.Millisecond, 10, 5, 3, 1, 1},
			{a, 400 * time.Millisecond, 10, 5, 5, 3, 1},
		}},
		{"idle buckets expire without loss", []step{
			{a, 0, 10, 5, 5, 5, 1},
			{b, 1500 * time.Millisecond, 10, 5, 1, 1, 2}, // rotation: a moves to the old generation
			{b, 3000 * time.Millisecond, 10, 5, 1, 1, 1}, // a, idle for a refill period, is gone
			{a, 3000 * time.Millisecond, 10, 5, 5, 5, 2}, // and comes back with a full burst
		}},
		{"a long pause forgets everything", []step{
			{a, 0, 10, 5, 5, 5, 1},
			{b, 10 * time.Second, 10, 5, 1, 1, 1},
		}},
		{"a new rate resets the buckets", []step{
			{a, 0, 10, 5, 5, 5, 1},
			{a, 0, 10, 8, 8, 8, 1},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRateTable()
			for i, s := range tc.steps {
				got := 0
				for range s.n {
					if r.allow(s.src, s.rate, s.bst, t0.Add(s.at)) {
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
		if !r.allow(src, 1000, 2000, now) {
			t.Fatalf("source %d refused its first flow", i)
		}
		if n := r.size(); n > 2*maxRateSources {
			t.Fatalf("%d buckets held, bound %d", n, 2*maxRateSources)
		}
	}
}
