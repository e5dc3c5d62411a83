package gateway

import (
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// transition is a change of a backend's state, for the one log line each
// change gets.
type transition struct {
	from, to backendState
	err      string // the last error when the change was made
}

// record applies one check result to the backend's state machine and
// reports a change of state. errMsg is empty for a success.
//
//	unknown ──rise successes──► up ──fall failures──► down
//	   └─────fall failures─────────────────────────►  │
//	                             up ◄──rise successes──┘
//
// Runs are consecutive: a success resets the failure run and the other way
// round. The last error stays visible until the backend is up and passing.
func (b *backend) record(errMsg string, rise, fall int, now time.Time) (transition, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	from := b.state
	if errMsg == "" {
		b.okRun++
		b.failRun = 0
		if b.state != stateUp && b.okRun >= rise {
			b.state = stateUp
		}
		if b.state == stateUp {
			b.probation = false
			b.lastErr = ""
		}
	} else {
		b.failRun++
		b.okRun = 0
		b.lastErr = errMsg
		if b.state != stateDown && b.failRun >= fall {
			b.state = stateDown
		}
	}
	if b.state == from {
		return transition{}, false
	}
	b.lastChange = now
	return transition{from: from, to: b.state, err: b.lastErr}, true
}

// noteError keeps a passive failure visible without changing the state:
// for services without active checks, which could never bring the backend
// back up.
func (b *backend) noteError(errMsg string) {
	b.mu.Lock()
	b.lastErr = errMsg
	b.mu.Unlock()
}

// observe applies a check result (nil error: success) of backend b of
// service svc, logs a change of state and updates the health gauge.
func (g *Gateway) observe(svc string, b *backend, h catalog.Health, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	tr, changed := b.record(msg, h.Rise, h.Fall, g.now())
	if !changed {
		return
	}
	g.setHealthGauge(svc, b)
	g.logTransition(svc, b, tr)
}

// forget drops what checks said of b when its service's checks are turned
// off: nothing would ever bring a down backend back up, nor clear the
// last error of a check that no longer runs. The backend is then as at a
// start without checks.
func (g *Gateway) forget(svc string, b *backend) {
	b.mu.Lock()
	tr := transition{from: b.state, to: stateUnknown, err: b.lastErr}
	b.state, b.okRun, b.failRun, b.probation, b.lastErr = stateUnknown, 0, 0, false, ""
	if tr.from != tr.to {
		b.lastChange = g.now()
	}
	b.mu.Unlock()
	if tr.from != tr.to {
		g.logTransition(svc, b, tr)
	}
}

// logTransition writes the one log line of a change of state.
func (g *Gateway) logTransition(svc string, b *backend, tr transition) {
	attrs := []any{"service", svc, "backend", b.label(), "from", tr.from.String(), "to", tr.to.String(), "error", tr.err}
	if tr.to == stateDown {
		g.log.Warn("backend health changed", attrs...)
		return
	}
	g.log.Info("backend health changed", attrs...)
}

// setHealthGauge sets ztgate_backend_healthy from whether the backend takes
// new flows. It sets nothing for an untracked backend, whose series is
// deleted: b.mu orders the two.
func (g *Gateway) setHealthGauge(svc string, b *backend) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.untracked {
		return
	}
	v := 0.0
	if b.usableLocked() {
		v = 1
	}
	g.m.backendHealthy.WithLabelValues(svc, b.label()).Set(v)
}
