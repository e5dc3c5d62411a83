// Package monoclock is the clock of the stamps ztgate keeps as integers —
// a flow's last activity, a path's last answer, a probe's age, the TUN
// link's last write:
// nanoseconds on the monotonic clock since the process started. A step of
// the wall clock (NTP correcting a clock at boot, a resumed VM, an
// operator's date) does not move it; time.Time.UnixNano drops the
// monotonic reading and would, expiring every flow at once or keeping a
// dead path for as long as the clock went back.
package monoclock

import "time"

var epoch = time.Now()

// Now returns the monotonic nanoseconds since the process started.
func Now() int64 { return int64(time.Since(epoch)) }

// Of returns t as a stamp of the same clock: from t's monotonic reading,
// which every time.Now carries, or from its wall clock when it has none
// (a test's fake clock, whose stamps then agree with each other).
func Of(t time.Time) int64 { return int64(t.Sub(epoch)) }
