package monoclock

import (
	"testing"
	"time"
)

func TestNowAdvances(t *testing.T) {
	a := Now()
	time.Sleep(2 * time.Millisecond)
	if d := time.Duration(Now() - a); d < 2*time.Millisecond || d > time.Minute {
		t.Fatalf("Now advanced %v over a 2 ms sleep", d)
	}
}

// TestOf: stamps of times from time.Now differ by their monotonic
// difference, stamps of times without a monotonic reading (a fake
// clock's) by their wall difference, and Of(time.Now()) is Now. (That a
// step of the system clock leaves the monotonic clock alone is the
// kernel's and Go's; a test here cannot step the clock of the machine.)
func TestOf(t *testing.T) {
	now := time.Now()
	cases := []struct {
		name string
		a, b time.Time
		want time.Duration // Of(b) - Of(a)
	}{
		{"same instant", now, now, 0},
		{"a later time.Now", now, now.Add(3 * time.Second), 3 * time.Second},
		{"fake clock, wall time only", now.Round(0), now.Round(0).Add(time.Hour), time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := time.Duration(Of(tc.b) - Of(tc.a)); got != tc.want {
				t.Fatalf("Of(b) - Of(a) = %v, want %v", got, tc.want)
			}
		})
	}
	// Now and Of(time.Now()) are the same clock.
	if d := time.Duration(Of(time.Now()) - Now()); d < -time.Second || d > time.Second {
		t.Fatalf("Of(time.Now()) - Now() = %v", d)
	}
}
