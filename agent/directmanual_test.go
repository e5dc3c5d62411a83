package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// manualDirect is a direct-path manager of f's agent that no goroutine
// runs: the test calls its methods, with the times it chooses (the
// manager takes its clock as arguments), and reads its state without a
// race. It shares the agent's session to the relay, so the fake relay
// sees its offers and results; the agent's own manager stays idle as long
// as the test starts no flow before the manual one's offer. Its paths are
// closed and its goroutines waited for when the test ends.
func (f *directFixture) manualDirect() *direct {
	d := newDirect(f.a)
	f.t.Cleanup(d.shutdown)
	return d
}

// offerWeb makes d offer a direct path for the web service at now and
// returns the offer as the relay received it.
func (f *directFixture) offerWeb(d *direct, now time.Time) *tunnel.Offer {
	f.t.Helper()
	d.offer("web", now)
	o := next[tunnel.Offer](f.t, f.relay)
	if st := d.svcs["web"]; st == nil || st.phase != phaseOffered || st.id != o.SessionID {
		f.t.Fatalf("offer %+v, state %+v", o, st)
	}
	return o
}

// dialOutcome waits for the outcome of d's dial, which its manager would
// have taken from its events.
func dialOutcome(t *testing.T, d *direct) dialed {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		select {
		case ev := <-d.events:
			if r, ok := ev.(dialed); ok {
				return r
			}
		case <-deadline:
			t.Fatal("no dial outcome")
		}
	}
}

// TestDirectDialEndedByOwnIdentityChange: a dial that Dial ended because
// the agent's own identity changed meanwhile (ErrOwnIdentityChanged) is
// no failure: the service goes back to idle without a backoff and
// ztgate_agent_direct_events_total{event="failed"} stays, while the relay
// still hears that the offer did not succeed.
func TestDirectDialEndedByOwnIdentityChange(t *testing.T) {
	f := newDirectFixture(t)
	d := f.manualDirect()
	now := time.Now()
	o := f.offerWeb(d, now)
	d.svcs["web"].phase = phaseDialing
	failed := testutil.ToFloat64(f.a.m.directFailed)
	changed := &tunnel.OwnIdentityChangedError{Old: "acme/agent/laptop", New: "globex/agent/laptop"}
	d.onDialed(dialed{service: "web", gateway: "ops/gateway/gw1", id: o.SessionID, err: fmt.Errorf("tunnel: dial 127.0.0.1:1: %w", changed)}, now)
	if st := d.svcs["web"]; st.phase != phaseIdle || st.retryAt.After(now) {
		t.Errorf("web %+v after the dial ended for the new identity, want idle, retry at once (%v)", st, now)
	}
	if n := testutil.ToFloat64(f.a.m.directFailed); n != failed {
		t.Errorf("direct failures %v, want %v: nothing failed", n, failed)
	}
	if r := next[tunnel.Result](t, f.relay); r.SessionID != o.SessionID || r.Success {
		t.Errorf("result %+v, want the offer %d unsuccessful", r, o.SessionID)
	}
}
