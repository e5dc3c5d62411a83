package agent

import (
	"context"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// TestDirectPathServiceLeavesDirectory: a pushed directory without a
// service that is on a direct path retires that path for the service, as
// the relay's error would (a relay that restarted since the path came up
// knows nothing of it): when the service comes back, its new flows take
// the relay, which chooses its gateway again, rather than the old path,
// and the agent offers again.
func TestDirectPathServiceLeavesDirectory(t *testing.T) {
	f := newDirectFixture(t)
	f.flow("one")
	f.answer("ops/gateway/gw1", f.gw.addr())
	next[tunnel.Result](t, f.relay)
	f.flow("two")
	if !f.gw.routed("two", testTimeout) {
		t.Fatal("no direct path")
	}
	without := directoryOf(true)
	without.Services = without.Services[1:] // "up" only
	f.relay.session().Send(without)
	waitFor(t, "web gone", func() bool { return f.a.dir.Load().byName["web"] == nil })
	f.relay.session().Send(directoryOf(true))
	waitFor(t, "web back", func() bool { return f.a.dir.Load().byName["web"] != nil })
	f.flow("three")
	if !f.relay.routed("three", testTimeout) {
		t.Fatal("a new flow of the service back in the directory took the old direct path")
	}
	if o := next[tunnel.Offer](t, f.relay); o.Service != "web" {
		t.Fatalf("offer %+v", o)
	}
}

// TestDirectShutdownClosesUnhandledDials: a dial that succeeded as the
// agent closed, its outcome still in the manager's events, has its session
// closed by the manager's shutdown rather than left open.
func TestDirectShutdownClosesUnhandledDials(t *testing.T) {
	f := newDirectFixture(t)
	d := newDirect(f.a)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s, err := tunnel.Dial(ctx, f.gw.addr(), tunnel.DialConfig{Credentials: f.a.creds, ExpectIdentity: "ops/gateway/gw1",
		Hello: f.a.hello()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close("test over")
	d.events <- dialed{service: "web", gateway: "ops/gateway/gw1", id: 1, s: s}
	d.shutdown()
	select {
	case <-s.Done():
	case <-time.After(time.Second):
		t.Fatal("the session of an unhandled dial is open after shutdown")
	}
}

// TestDirectDialOfServiceGoneNotTaken: a service that leaves the directory
// while its offer is answered and dialled does not take the path the dial
// brings up: when it comes back, its new flows take the relay (which
// chooses its gateway again), not the old gateway's path.
func TestDirectDialOfServiceGoneNotTaken(t *testing.T) {
	f := newDirectFixture(t)
	f.flow("one") // the offer goes out
	without := directoryOf(true)
	without.Services = without.Services[1:] // "up" only
	f.relay.session().Send(without)
	waitFor(t, "web gone", func() bool { return f.a.dir.Load().byName["web"] == nil })
	f.answer("ops/gateway/gw1", f.gw.addr())
	if r := next[tunnel.Result](t, f.relay); r.Success {
		t.Errorf("the dial of a service gone from the directory reported as taken: %+v", r)
	}
	f.relay.session().Send(directoryOf(true))
	waitFor(t, "web back", func() bool { return f.a.dir.Load().byName["web"] != nil })
	f.flow("two")
	if !f.relay.routed("two", testTimeout) {
		t.Fatal("a new flow of the service back in the directory took the path dialled while it was gone")
	}
}
