package gateway

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxRateSources bounds the sources whose buckets a generation of the rate
// table holds; the table holds at most two generations.
const maxRateSources = 16384

// rateTable limits the new flows of each source address ([limits]
// new_flows_per_second and new_flows_burst) with one token bucket per
// source. It stays bounded under a flood from many (spoofed) sources:
// buckets live in two generations, and the older one is dropped every
// refill period, the time an idle bucket takes to fill up again — a bucket
// dropped then is as good as a new one, so expiry loses nothing. A
// generation that fills up before its period ends is rotated early; the
// sources it forgets start again with a full burst, which only a flood of
// maxRateSources addresses within one period can cause, and which the
// tenant and handshake limits bound.
type rateTable struct {
	mu       sync.Mutex
	limit    rate.Limit
	burst    int
	period   time.Duration // refill time of a bucket, at least a second
	rotated  time.Time     // when cur became the current generation
	cur, old map[netip.Addr]*rate.Limiter
}

func newRateTable() *rateTable {
	return &rateTable{
		cur: make(map[netip.Addr]*rate.Limiter),
		old: make(map[netip.Addr]*rate.Limiter),
	}
}

// allow takes a token of src's bucket at now, with the rate and burst of
// the running configuration (perSecond ≤ 0: unlimited).
func (r *rateTable) allow(src netip.Addr, perSecond, burst int, now time.Time) bool {
	if perSecond <= 0 {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if rate.Limit(perSecond) != r.limit || burst != r.burst {
		r.resetLocked(perSecond, burst, now)
	}
	r.expireLocked(now)
	l := r.cur[src]
	if l == nil {
		if l = r.old[src]; l != nil {
			delete(r.old, src)
		} else {
			l = rate.NewLimiter(r.limit, r.burst)
		}
		r.cur[src] = l
	}
	return l.AllowN(now, 1)
}

// resetLocked forgets every bucket: the configured rate changed.
func (r *rateTable) resetLocked(perSecond, burst int, now time.Time) {
	r.limit, r.burst = rate.Limit(perSecond), max(burst, 1)
	r.period = max(time.Second, time.Duration(float64(r.burst)/float64(perSecond)*float64(time.Second)))
	clear(r.cur)
	clear(r.old)
	r.rotated = now
}

// expireLocked rotates the generations when a period has passed or the
// current one is full.
func (r *rateTable) expireLocked(now time.Time) {
	age := now.Sub(r.rotated)
	switch {
	case age >= 2*r.period:
		clear(r.cur)
		clear(r.old)
	case age >= r.period || len(r.cur) >= maxRateSources:
		clear(r.old)
		r.cur, r.old = r.old, r.cur
	default:
		return
	}
	r.rotated = now
}

// size returns the number of buckets held.
func (r *rateTable) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cur) + len(r.old)
}
