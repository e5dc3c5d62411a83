package gateway

import (
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
)

// TestMemoryTrimmer: memory goes back to the system when the flows fall to
// a quarter of a peak of at least 1000, once more after the netstack's
// TIME-WAIT has let the last endpoints go, and at most once per interval.
func TestMemoryTrimmer(t *testing.T) {
	type step struct {
		at    time.Duration // since the start
		flows int
		trims int // trims so far, after this step
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"a crowd that leaves: a trim, a second one after TIME-WAIT", []step{
			{0, 10000, 0},
			{time.Second, 2000, 1},
			{2 * time.Second, 0, 1},
			{netstack.TimeWait, 0, 1}, // its endpoints are still in TIME-WAIT
			{time.Second + netstack.TimeWait + time.Second, 0, 2},
			{9 * time.Second, 0, 2},
		}},
		{"a peak below 1000 flows: never", []step{
			{0, 999, 0},
			{time.Second, 0, 0},
			{20 * time.Second, 0, 0},
		}},
		{"flows above a quarter of the peak: not yet", []step{
			{0, 4000, 0},
			{time.Second, 1001, 0},
			{2 * time.Second, 1000, 1},
		}},
		{"at most once per interval, the second trim aside", []step{
			{0, 8000, 0},
			{time.Second, 0, 1},
			{time.Second + trimSecond, 0, 2},
			{time.Second + trimSecond + time.Second, 6000, 2}, // a new crowd, gone again at once
			{time.Second + trimSecond + 2*time.Second, 0, 2},
			{time.Second + trimInterval, 0, 3},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			trims := 0
			m := memoryTrimmer{free: func() { trims++ }}
			start := time.Unix(1_000_000, 0)
			for i, s := range tc.steps {
				if i > 0 && s.at <= tc.steps[i-1].at {
					t.Fatalf("step %d goes back in time", i)
				}
				m.observe(s.flows, start.Add(s.at))
				if trims != s.trims {
					t.Fatalf("step %d (%d flows at %v): %d trims, want %d", i, s.flows, s.at, trims, s.trims)
				}
			}
		})
	}
}
