package agent

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// TestDirectNetworkChanged: after failed attempts a new flow offers no
// direct path until the backoff has passed (the second one: 1.6 to 2.4 s);
// a change of the host's network ends the backoff, and the next flow offers
// again at once.
func TestDirectNetworkChanged(t *testing.T) {
	f := newDirectFixture(t)
	// offerOnFlows opens flows until one offers, and returns the offer.
	offerOnFlows := func() *tunnel.Offer {
		t.Helper()
		deadline := time.Now().Add(testTimeout)
		for {
			f.flow("x")
			if o := f.relay.offer(100 * time.Millisecond); o != nil {
				return o
			}
			if time.Now().After(deadline) {
				t.Fatal("no offer")
			}
		}
	}
	for i := 1; i <= 2; i++ {
		o := offerOnFlows()
		f.relay.session().Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeNoGateway, SessionID: o.SessionID})
		waitFor(t, "the refusal taken", func() bool { return testutil.ToFloat64(f.a.m.directFailed) == float64(i) })
	}
	changed := time.Now()
	f.a.direct.networkChanged()
	if o := offerOnFlows(); o.Service != "web" {
		t.Fatalf("offer %+v", o)
	}
	if took := time.Since(changed); took > 1200*time.Millisecond {
		t.Errorf("offered %v after the network changed: the backoff was waited out", took)
	}
}

// TestDirectNetworkChangedState: only the services waiting out a backoff
// are let go, their backoffs from the start; offers in progress and
// backoffs already passed stay as they are.
func TestDirectNetworkChangedState(t *testing.T) {
	now := time.Unix(1e9, 0)
	waiting := &svcDirect{phase: phaseIdle, retryAt: now.Add(20 * time.Second)}
	for range 4 {
		waiting.backoff.Next()
	}
	passed := &svcDirect{phase: phaseIdle, retryAt: now.Add(-time.Second)}
	offered := &svcDirect{phase: phaseOffered, retryAt: now.Add(20 * time.Second)}
	d := &direct{log: slog.New(slog.DiscardHandler), svcs: map[string]*svcDirect{"a": waiting, "b": passed, "c": offered}}
	d.onNetworkChanged(now)
	if !waiting.retryAt.Equal(now) {
		t.Errorf("waiting: retry at %v, want now", waiting.retryAt)
	}
	if next := waiting.backoff.Next(); next > tunnel.RedialMin*12/10 {
		t.Errorf("waiting: next backoff %v, want about %v", next, tunnel.RedialMin)
	}
	if !passed.retryAt.Equal(now.Add(-time.Second)) || !offered.retryAt.Equal(now.Add(20*time.Second)) {
		t.Errorf("changed: passed %v, offered %v", passed.retryAt, offered.retryAt)
	}
}
