package gateway

import "time"

// clock is the time source of health checks and drain deadlines, so their
// tests run on a fake clock instead of sleeping.
type clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer whose C fires once after d.
	NewTimer(d time.Duration) clockTimer
	// AfterFunc calls f in its own goroutine after d, unless stopped first.
	// The timer's C is nil.
	AfterFunc(d time.Duration, f func()) clockTimer
}

// clockTimer is a timer of a clock, with the semantics of time.Timer
// (Go 1.23 and later: Stop and Reset leave no stale value in C).
type clockTimer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did.
	Stop() bool
	// Reset makes the timer fire after d.
	Reset(d time.Duration) bool
}

// realClock is the wall clock; now may replace time.Now (Options.Now).
type realClock struct{ now func() time.Time }

var _ clock = realClock{}

func (c realClock) Now() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

func (realClock) NewTimer(d time.Duration) clockTimer { return realTimer{time.NewTimer(d)} }

func (realClock) AfterFunc(d time.Duration, f func()) clockTimer {
	return realTimer{time.AfterFunc(d, f)}
}

// realTimer adapts a *time.Timer.
type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time        { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }
