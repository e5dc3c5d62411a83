package relay

import (
	"testing"
	"time"
)

// TestSilence: a gateway is dead once it answered none of the pings of
// DeadAfter, whatever the relay's own pauses. A relay that did not run for
// a while (starved of CPU, paused) neither sent pings nor read the answers
// waiting for it; before, it took its own pause for the gateway's silence
// and closed every gateway at its next tick, one it had never pinged too.
func TestSilence(t *testing.T) {
	const interval, deadAfter = 250 * time.Millisecond, 2 * time.Second
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	// every returns n ticks, one per interval from the first at from.
	every := func(from time.Duration, n int) []time.Duration {
		var out []time.Duration
		for i := range n {
			out = append(out, from+time.Duration(i)*interval)
		}
		return out
	}
	tests := []struct {
		name  string
		ticks []time.Duration // since the session started
		heard map[int]uint64  // tick index → the gateway's count from then on (0 before)
		dead  int             // the tick at which it is dead; -1: never
	}{
		{"silent: dead after DeadAfter of pings", every(interval, 12), nil, 7},
		{"an answer starts over", every(interval, 20), map[int]uint64{4: 1}, 12},
		{"answering: never dead", every(interval, 20), map[int]uint64{
			0: 1, 2: 2, 4: 3, 6: 4, 8: 5, 10: 6, 12: 7, 14: 8, 16: 9, 18: 10}, -1},
		{"the first tick late: no ping was out", append([]time.Duration{ms(2900)}, every(ms(3150), 10)...), nil, 7},
		{"the relay paused after a few pings", append(every(interval, 3), every(ms(2850), 10)...), nil, 7},
		{"a long pause, then an answer waiting", append(every(interval, 2), ms(5000), ms(5250)), map[int]uint64{3: 1}, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			s := newSilence(interval, deadAfter, 0, start)
			heard, got := uint64(0), -1
			for i, at := range tc.ticks {
				if n, ok := tc.heard[i]; ok {
					heard = n
				}
				if _, dead := s.tick(start.Add(at), heard); dead {
					got = i
					break
				}
				s.pinged()
			}
			if got != tc.dead {
				t.Errorf("dead at tick %d, want %d", got, tc.dead)
			}
		})
	}
}
