package relay

import (
	"time"

	"github.com/ztgate/ztgate/internal/monoclock"
)

// janitorEvery is how often the relay expires signaling sessions and
// sweeps the agents' flow tables (each at most every flowSweepEvery).
const janitorEvery = time.Second

// janitor runs the periodic clean-ups until the relay closes.
func (r *Relay) janitor() {
	defer r.wg.Done()
	t := time.NewTicker(janitorEvery)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case now := <-t.C:
			r.expireSignaling(now)
			r.sweepAdmitted()
			r.sweepFlows(monoclock.Now())
		}
	}
}

// sweepFlows removes the expired entries of every agent's flow table, so
// that idle agents do not keep counting against their gateways.
func (r *Relay) sweepFlows(now int64) {
	r.mu.RLock()
	agents := make([]*agent, 0, len(r.agents))
	for a := range r.agents {
		agents = append(agents, a)
	}
	r.mu.RUnlock()
	for _, a := range agents {
		a.flows.sweep(now)
	}
}
