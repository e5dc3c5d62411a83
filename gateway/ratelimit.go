package gateway

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxRateSources bounds the buckets a generation of the rate table holds;
// the table holds at most two generations.
const maxRateSources = 16384

// rateKey names a token bucket: a source address alone (its rate of new
// flows, the tenant's or the gateway's), or a source address and a
// service (the service's rate per source).
type rateKey struct {
	service string // "" for the source's own bucket
	src     netip.Addr
}

// rateBucket is a token bucket with the settings it was made with.
type rateBucket struct {
	lim       *rate.Limiter
	perSecond int
	burst     int
	refill    time.Duration // time an empty bucket takes to fill up
}

// rateTable limits new flows with one token bucket per key ([limits],
// [[tenant]] and [[service]] new_flows_per_second and new_flows_burst). It
// stays bounded under a flood from many (spoofed) sources: buckets live in
// two generations, and the older one is dropped once every bucket in it has
// been idle for its refill time — a bucket dropped then is as good as a new
// one, so expiry loses nothing. A generation that fills up before then is
// rotated early; the keys it forgets start again with a full burst, which
// only a flood of maxRateSources keys within one period can cause, and
// which the tenant and handshake limits bound.
type rateTable struct {
	mu        sync.Mutex
	rotated   time.Time // when cur became the current generation
	cur, old  map[rateKey]*rateBucket
	curRefill time.Duration // the longest refill time of a bucket in cur
	oldRefill time.Duration // and in old
}

func newRateTable() *rateTable {
	return &rateTable{
		cur: make(map[rateKey]*rateBucket),
		old: make(map[rateKey]*rateBucket),
	}
}

// allow takes a token of key's bucket at now, with the rate and burst the
// running configuration gives that key (perSecond ≤ 0: unlimited). A
// bucket whose settings changed starts again full.
func (r *rateTable) allow(key rateKey, perSecond, burst int, now time.Time) bool {
	if perSecond <= 0 {
		return true
	}
	burst = max(burst, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(now)
	b := r.cur[key]
	if b == nil {
		if b = r.old[key]; b != nil {
			delete(r.old, key)
		}
	}
	if b == nil || b.perSecond != perSecond || b.burst != burst {
		b = &rateBucket{
			lim:       rate.NewLimiter(rate.Limit(perSecond), burst),
			perSecond: perSecond,
			burst:     burst,
			refill:    time.Duration(float64(burst) / float64(perSecond) * float64(time.Second)),
		}
	}
	r.cur[key] = b
	r.curRefill = max(r.curRefill, b.refill)
	return b.lim.AllowN(now, 1)
}

// expireLocked rotates the generations when every bucket of the old one
// has been idle for its refill time, or when the current one is full. The
// period is the longest refill time of the buckets held, at least a second.
func (r *rateTable) expireLocked(now time.Time) {
	period := max(time.Second, r.curRefill, r.oldRefill)
	age := now.Sub(r.rotated)
	switch {
	case age >= 2*period:
		clear(r.cur)
		clear(r.old)
		r.curRefill, r.oldRefill = 0, 0
	case age >= period || len(r.cur) >= maxRateSources:
		clear(r.old)
		r.cur, r.old = r.old, r.cur
		r.curRefill, r.oldRefill = 0, r.curRefill
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
