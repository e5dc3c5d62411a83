package gateway

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// checker runs the active checks of one backend of one service: the first
// at a random point within the interval, then every interval ± 10%, so
// the checks of many backends do not fire in lockstep.
type checker struct {
	target netip.AddrPort
	spec   catalog.Health
	probe  prober
	clock  clock
	// randN returns a random number in [0, n); n > 0.
	randN func(n int64) int64
	// report receives each result (nil: success) and how long it took.
	report func(err error, took time.Duration)
}

// run checks until ctx is done. A check in progress when ctx ends is
// abandoned without a result.
func (c *checker) run(ctx context.Context) {
	defer c.probe.close()
	t := c.clock.NewTimer(c.firstDelay())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		c.check(ctx)
		if ctx.Err() != nil {
			return
		}
		t.Reset(c.nextDelay())
	}
}

// check runs one probe bounded by the timeout and reports its result.
func (c *checker) check(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, c.spec.Timeout)
	start := c.clock.Now()
	err := c.probe.probe(pctx, c.target)
	cancel()
	if ctx.Err() != nil {
		return
	}
	c.report(err, c.clock.Now().Sub(start))
}

// firstDelay is uniform in [0, interval).
func (c *checker) firstDelay() time.Duration {
	return time.Duration(c.randN(int64(max(c.spec.Interval, 1))))
}

// nextDelay is uniform in [0.9, 1.1] × interval.
func (c *checker) nextDelay() time.Duration {
	spread := c.spec.Interval / 10
	return c.spec.Interval - spread + time.Duration(c.randN(int64(2*spread)+1))
}

// defaultRandN is randN for production.
func defaultRandN(n int64) int64 { return rand.Int64N(n) }
