package conf

import "time"

// debouncer decides when a burst of changes is over: delay after the last
// change, but no later than maxWait after the first one, so that a file that
// keeps changing is still reloaded. Times are passed in, so tests drive it
// with a fake clock.
type debouncer struct {
	delay, maxWait time.Duration
	first, last    time.Time
	pending        bool
}

func newDebouncer(delay time.Duration) *debouncer {
	return &debouncer{delay: delay, maxWait: 10 * delay}
}

// change records a change at now and returns how long to wait before the
// next call of due.
func (d *debouncer) change(now time.Time) time.Duration {
	if !d.pending {
		d.pending, d.first = true, now
	}
	d.last = now
	return d.deadline().Sub(now)
}

// deadline is when the pending burst counts as over.
func (d *debouncer) deadline() time.Time {
	end := d.last.Add(d.delay)
	if limit := d.first.Add(d.maxWait); limit.Before(end) {
		return limit
	}
	return end
}

// due reports whether a pending burst is over at now; if so the burst is
// consumed and the caller acts on it.
func (d *debouncer) due(now time.Time) bool {
	if !d.pending || now.Before(d.deadline()) {
		return false
	}
	d.pending = false
	return true
}
