package agent

import (
	"testing"

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
