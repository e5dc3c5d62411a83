package gateway

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when a test advances it. Timers
// fire in Advance: channel timers by a send, AfterFunc timers by calling
// their function synchronously.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

var _ clock = (*fakeClock)(nil)

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

type fakeTimer struct {
	clk    *fakeClock
	when   time.Time
	active bool
	c      chan time.Time
	f      func()
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) clockTimer {
	return c.add(&fakeTimer{clk: c, c: make(chan time.Time, 1)}, d)
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) clockTimer {
	return c.add(&fakeTimer{clk: c, f: f}, d)
}

func (c *fakeClock) add(t *fakeTimer, d time.Duration) *fakeTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.when, t.active = c.now.Add(d), true
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	was := t.active
	t.active = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	was := t.active
	t.when, t.active = t.clk.now.Add(d), true
	return was
}

// Advance moves the clock by d and fires the timers that are due, in
// order of their deadlines.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *fakeTimer
		for _, t := range c.timers {
			if t.active && !t.when.After(end) && (next == nil || t.when.Before(next.when)) {
				next = t
			}
		}
		if next == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		c.now = next.when
		next.active = false
		c.mu.Unlock()
		if next.f != nil {
			next.f()
			continue
		}
		select {
		case next.c <- next.when:
		default:
		}
	}
}

// pending returns how many timers are armed.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if t.active {
			n++
		}
	}
	return n
}

// waitPending waits (in real time, bounded) until n timers are armed: the
// goroutines under test have reached their next wait.
func (c *fakeClock) waitPending(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.pending() != n {
		if time.Now().After(deadline) {
			t.Fatalf("fake clock: %d timers armed, want %d", c.pending(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// nextDeadline returns when the earliest armed timer fires.
func (c *fakeClock) nextDeadline() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var best *fakeTimer
	for _, t := range c.timers {
		if t.active && (best == nil || t.when.Before(best.when)) {
			best = t
		}
	}
	if best == nil {
		return 0, false
	}
	return best.when.Sub(c.now), true
}
