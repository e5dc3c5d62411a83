package agent

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
	"github.com/ztgate/ztgate/tunnel/tunneltest"
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
// while its answer is dialled does not take the path the dial brings up:
// when it comes back, its new flows take the relay (which chooses its
// gateway again), not the old gateway's path. (The gateway's own
// candidate does not answer; the relay's forwarder, which is dialled
// forwardDelay later, does once the directory has changed. One that
// left before the answer came is TestDirectAnswerOfServiceGoneNotTakenOnLivePath's.)
func TestDirectDialOfServiceGoneNotTaken(t *testing.T) {
	f := newDirectFixture(t)
	// The gateway's candidate: it takes the agent's first packet, which
	// says the dial began, and never answers.
	mute, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dialled, read := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(read)
		if _, _, err := mute.ReadFrom(make([]byte, 2048)); err == nil {
			close(dialled)
		}
	}()
	defer func() { mute.Close(); <-read }()
	// The relay's forwarder: a gate that lets nothing through until the
	// service is gone, so that the dial cannot end before, however slowly
	// the directory arrives. (One that arrived after the dial's deadline
	// would fail the dial: no path either, and the test still passes.)
	gate, err := tunneltest.NewProxy(tunneltest.ProxyConfig{Target: f.gw.addr(), DropRate: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Close()
	f.flow("one") // the offer goes out
	o := next[tunnel.Offer](t, f.relay)
	f.relay.session().Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: o.SessionID, Service: "web",
		Candidates: []netip.AddrPort{netip.MustParseAddrPort(mute.LocalAddr().String())}, Gateway: "ops/gateway/gw1",
		ForwardPort: netip.MustParseAddrPort(gate.Addr()).Port()})
	select {
	case <-dialled:
	case <-time.After(testTimeout):
		t.Fatal("the answer was not dialled")
	}
	without := directoryOf(true)
	without.Services = without.Services[1:] // "up" only
	f.relay.session().Send(without)
	waitFor(t, "web gone", func() bool { return f.a.dir.Load().byName["web"] == nil })
	gate.SetDropRate(0) // QUIC's next Initial reaches the gateway: the dial ends now
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

// TestDirectAnswerOfServiceGoneNotTakenOnLivePath: an answer for a service
// that left the directory since it offered takes no path, not even the
// live one to the gateway it names (which the agent uses without a dial):
// when the service comes back, its new flows take the relay, which
// chooses its gateway again.
func TestDirectAnswerOfServiceGoneNotTakenOnLivePath(t *testing.T) {
	f := newDirectFixture(t)
	answer := func(o *tunnel.Offer) *tunnel.Result {
		t.Helper()
		f.relay.session().Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: o.SessionID, Service: o.Service,
			Candidates: []netip.AddrPort{netip.MustParseAddrPort(f.gw.addr())}, Gateway: "ops/gateway/gw1"})
		r := next[tunnel.Result](t, f.relay)
		if r.SessionID != o.SessionID {
			t.Fatalf("result %+v for offer %d", r, o.SessionID)
		}
		return r
	}
	udpFlow(t, f.dev, netip.AddrPortFrom(upVIP, 7), "one") // "up" goes direct: a live path to gw1
	if o := next[tunnel.Offer](t, f.relay); o.Service != "up" || !answer(o).Success {
		t.Fatalf("no direct path for up (offer %+v)", o)
	}
	f.flow("two") // web offers
	o := next[tunnel.Offer](t, f.relay)
	if o.Service != "web" {
		t.Fatalf("offer %+v, want web's", o)
	}
	without := directoryOf(true)
	without.Services = without.Services[1:] // "up" only
	f.relay.session().Send(without)
	waitFor(t, "web gone", func() bool { return f.a.dir.Load().byName["web"] == nil })
	if r := answer(o); r.Success {
		t.Errorf("the answer for a service gone from the directory took the live path: %+v", r)
	}
	f.relay.session().Send(directoryOf(true))
	waitFor(t, "web back", func() bool { return f.a.dir.Load().byName["web"] != nil })
	f.flow("three")
	if !f.relay.routed("three", testTimeout) {
		t.Fatal("a new flow of the service back in the directory took the live path its answer named while it was gone")
	}
	if o := next[tunnel.Offer](t, f.relay); o.Service != "web" {
		t.Fatalf("offer %+v, want web's again", o)
	}
}
