package agent

import (
	"fmt"
	"testing"
	"time"
)

// TestDirectServicesForgotten: the manager's table of services does not
// grow with every service the agent ever had traffic for. Rounds of
// services are offered, their offers go unanswered and fail; each
// service's state, with its backoff, is kept while the backoff runs and
// forgetAfter beyond, and forgotten then. The manager's clock is the
// test's.
func TestDirectServicesForgotten(t *testing.T) {
	f := newDirectFixture(t)
	d := f.manualDirect()
	const rounds, perRound = 5, 100
	now := time.Now()
	for r := range rounds {
		for i := range perRound {
			d.offer(fmt.Sprintf("svc-%d-%d", r, i), now)
		}
		now = now.Add(time.Second)
		d.tick(now)
		if n := len(d.svcs); n != perRound {
			t.Fatalf("round %d: %d services with offers in flight, want %d", r, n, perRound)
		}
		now = now.Add(offerTimeout) // every offer given up: a backoff of 1 s ± 20 %
		d.tick(now)
		first := d.svcs[fmt.Sprintf("svc-%d-0", r)]
		if first == nil || first.phase != phaseIdle || !first.retryAt.After(now) {
			t.Fatalf("round %d: state %+v after the offer timed out", r, first)
		}
		d.offer(fmt.Sprintf("svc-%d-0", r), now) // within its backoff: no offer
		if first.phase != phaseIdle {
			t.Fatalf("round %d: offered within the backoff", r)
		}
		now = now.Add(forgetAfter) // every backoff passed, not all forgetAfter ago
		d.tick(now)
		if d.svcs[fmt.Sprintf("svc-%d-0", r)] != first {
			t.Fatalf("round %d: a backoff forgotten less than forgetAfter after it passed", r)
		}
		now = now.Add(2 * time.Second)
		d.tick(now)
		if n := len(d.svcs); n != 0 {
			t.Fatalf("round %d: %d services kept after their backoffs passed %v ago", r, n, forgetAfter)
		}
	}
}
