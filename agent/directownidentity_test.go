package agent

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// TestDirectPathEndsOnOwnIdentityChange: credentials switched to a
// certificate of another identity end the agent's direct path and its
// relay session alike ("own identity changed: <old> -> <new>"); new flows
// take the relay, which the agent is back on at once with the new
// identity, and the direct path set up again presents the new identity
// to the gateway.
func TestDirectPathEndsOnOwnIdentityChange(t *testing.T) {
	f := newDirectFixture(t)
	f.flow("one")
	if !f.relay.routed("one", testTimeout) {
		t.Fatal("the first flow did not take the relay")
	}
	o := f.answer("ops/gateway/gw1", f.gw.addr())
	if res := next[tunnel.Result](t, f.relay); res.SessionID != o.SessionID || !res.Success {
		t.Fatalf("result %+v", res)
	}
	f.flow("two")
	if !f.gw.routed("two", testTimeout) {
		t.Fatal("a new flow did not take the direct path")
	}
	direct, relay := f.gw.session(), f.relay.session()
	if got := direct.Peer().String(); got != "acme/agent/laptop" {
		t.Fatalf("the direct path presents %s", got)
	}

	cert, key := f.pki.issue(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop-2"})
	if err := f.a.creds.ReloadFiles(tunnel.Files{Cert: cert, Key: key, CA: f.pki.caFile}); err != nil {
		t.Fatal(err)
	}
	want := "own identity changed: acme/agent/laptop -> acme/agent/laptop-2"
	for _, s := range []struct {
		what string
		s    *tunnel.Session
	}{{"direct path", direct}, {"relay session", relay}} {
		select {
		case <-s.s.Done():
			if err := s.s.Err(); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("the %s ended with %v, want %q", s.what, err, want)
			}
		case <-time.After(testTimeout):
			t.Fatalf("the %s of the old identity is still up", s.what)
		}
	}

	// Back on the relay, as the new identity; new flows take it.
	waitFor(t, "a new relay session", func() bool { return f.relay.session() != relay })
	if got := f.relay.session().Peer().String(); got != "acme/agent/laptop-2" {
		t.Fatalf("the agent redialed the relay as %s", got)
	}
	for i := 0; ; i++ {
		text := fmt.Sprintf("three-%d", i)
		f.flow(text)
		if f.relay.routed(text, 100*time.Millisecond) {
			break
		}
		if i > int(testTimeout/(100*time.Millisecond)) {
			t.Fatal("new flows did not go back to the relay")
		}
	}

	// The agent offers again; the new path presents the new identity.
	var again *tunnel.Offer
	for i := 0; again == nil; i++ {
		f.flow(fmt.Sprintf("later-%d", i))
		again = f.relay.offer(100 * time.Millisecond)
		if again == nil && i > int(testTimeout/(100*time.Millisecond)) {
			t.Fatal("no new offer")
		}
	}
	f.relay.session().Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: again.SessionID, Service: "web",
		Candidates: []netip.AddrPort{netip.MustParseAddrPort(f.gw.addr())}, Gateway: "ops/gateway/gw1"})
	if res := next[tunnel.Result](t, f.relay); res.SessionID != again.SessionID || !res.Success {
		t.Fatalf("result %+v", res)
	}
	waitFor(t, "a new direct path", func() bool { return f.gw.session() != direct })
	if got := f.gw.session().Peer().String(); got != "acme/agent/laptop-2" {
		t.Errorf("the new direct path presents %s", got)
	}
}
