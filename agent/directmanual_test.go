package agent

import (
	"testing"
	"time"

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
