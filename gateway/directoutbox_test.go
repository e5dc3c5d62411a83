package gateway

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// heldSender is a slow agent's session: each SendDatagram waits until
// release is closed, as Session.SendDatagram waits while quic-go's queue
// is full (up to 5 ms a datagram, for as long as the peer stays slow),
// then fails with err, if set before release.
type heldSender struct {
	entered chan struct{} // a value per call
	release chan struct{}
	err     error
	sent    atomic.Int64
}

func newHeldSender() *heldSender {
	return &heldSender{entered: make(chan struct{}, 1<<14), release: make(chan struct{})}
}

func (s *heldSender) SendDatagram([]byte) error {
	s.entered <- struct{}{}
	<-s.release
	if s.err != nil {
		return s.err
	}
	s.sent.Add(1)
	return nil
}

// chanSender is a quick agent's session: it hands over a copy of every
// datagram at once.
type chanSender chan []byte

func (c chanSender) SendDatagram(b []byte) error {
	c <- append([]byte(nil), b...)
	return nil
}

// funcSender is a session that hands each datagram to a function.
type funcSender func(b []byte) error

func (f funcSender) SendDatagram(b []byte) error { return f(b) }

// testOutbox is the outbox of a test's ingress, whose session f is; it is
// closed when the test ends.
func testOutbox(t testing.TB, f funcSender) *tunnel.Outbox {
	o := tunnel.NewOutbox(f, directOutboxLen, nil, nil)
	t.Cleanup(o.Close)
	return o
}

// outputFixture is a gateway with only what its tunnel link's Output
// needs, and the direct ingresses a test adds to it.
type outputFixture struct {
	g       *Gateway
	out     *tunnelOutput
	held    []*heldSender
	ins     []*ingress
	writers sync.WaitGroup
}

func newOutputFixture(t *testing.T) *outputFixture {
	g := &Gateway{m: newMetrics(prometheus.NewRegistry()), flows: newFlowTable()}
	g.ingresses = newIngressTable(prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_ingresses"}), nil)
	f := &outputFixture{g: g, out: &tunnelOutput{g: g}}
	t.Cleanup(func() {
		for _, h := range f.held {
			select {
			case <-h.release:
			default:
				close(h.release)
			}
		}
		for _, in := range f.ins {
			g.closeIngress(in, "test_over")
		}
		f.writers.Wait()
	})
	return f
}

// add registers the direct ingress of agent name, whose replies s sends.
func (f *outputFixture) add(t *testing.T, name string, s tunnel.DatagramSender) *ingress {
	t.Helper()
	if h, ok := s.(*heldSender); ok {
		f.held = append(f.held, h)
	}
	in := f.g.directIngress(tunnel.Identity{Tenant: "acme", Role: tunnel.RoleAgent, Name: name}, s)
	in.pinInner(agentInner)
	if err := f.g.ingresses.add(in); err != nil {
		t.Fatal(err)
	}
	f.ins = append(f.ins, in)
	return in
}

// reply is a backend's UDP reply to in's agent, as the netstack writes it.
func reply(in *ingress, text string) []byte {
	return netstacktest.UDPDatagram(udpEchoVIP,
		netip.AddrPortFrom(in.synth, 40000), []byte(text))
}

// write hands pkts to the tunnel link's Output, and fails t unless it
// returns within a second: the link's one writer must not wait for any
// session.
func (f *outputFixture) write(t *testing.T, pkts ...[]byte) {
	t.Helper()
	done := make(chan struct{})
	f.writers.Go(func() {
		f.out.WritePackets(pkts)
		close(done)
	})
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("the tunnel link's writer waits for a slow agent's session")
	}
}

// TestTunnelOutputSlowAgentHoldsUpNoOther: the tunnel link has one writer
// for every session. An agent whose path is slow but not silent keeps
// quic-go's send queue full, and its session's SendDatagram waits up to
// 5 ms for each datagram; the writer must not wait with it, or every other
// agent's downlink goes at the slow agent's pace.
func TestTunnelOutputSlowAgentHoldsUpNoOther(t *testing.T) {
	f := newOutputFixture(t)
	slow := newHeldSender()
	quick := make(chanSender, 4)
	a := f.add(t, "laptop", slow)
	b := f.add(t, "desktop", quick)

	f.write(t, reply(a, "a1"), reply(a, "a2"), reply(b, "b1"))
	select {
	case got := <-quick:
		if _, dst, _ := netstack.IPv4Addrs(got); dst != agentInner || string(got[28:]) != "b1" {
			t.Errorf("the quick agent got %q to %v, want \"b1\" to %v", got[28:], dst, agentInner)
		}
	case <-time.After(time.Second):
		t.Fatal("the quick agent's reply not sent while the slow agent's send waits")
	}
}

// TestTunnelOutputOutboxFullDrops: while a slow agent's session takes
// nothing, its replies wait in a bounded outbox; beyond it they are
// dropped at once and counted as outbox_full. Every reply is then either
// sent, once the session takes them again, or counted: as send_error when
// the session fails it, as when the link's writer sent it itself.
func TestTunnelOutputOutboxFullDrops(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error // of the session's sends once it takes them
	}{
		{"sent", nil},
		{"send_error", tunnel.ErrDatagramQueueFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newOutputFixture(t)
			slow := newHeldSender()
			a := f.add(t, "laptop", slow)

			f.write(t, reply(a, "first"))
			<-slow.entered
			const burst = 4096
			pkts := make([][]byte, burst)
			for i := range pkts {
				pkts[i] = reply(a, "burst")
			}
			f.write(t, pkts...)
			full := int64(testutil.ToFloat64(f.g.m.dropped.WithLabelValues("outbox_full")))
			if full == 0 {
				t.Fatalf("a burst of %d replies to a session that takes nothing: none dropped as outbox_full", burst)
			}
			slow.err = tc.err
			close(slow.release)
			sendErrors := func() int64 { return int64(testutil.ToFloat64(f.g.m.dropped.WithLabelValues("send_error"))) }
			waitFor(t, 5*time.Second, "every queued reply sent or counted", func() bool {
				return slow.sent.Load()+sendErrors() == 1+burst-full
			})
			if tc.err == nil && sendErrors() != 0 {
				t.Errorf("%d replies counted as send_error by a session that took them all", sendErrors())
			}
		})
	}
}

// TestTunnelCloseIngressStopsOutbox: an agent that disconnects while
// replies wait for its session leaves no goroutine behind, and later
// replies to it are dropped as no_ingress. What was queued is dropped, not
// sent (tunnel's TestOutboxCloseDropsQueue), and counted as send_error: a
// reply its session could not send, as when the link's writer sent it
// itself to a closed session.
func TestTunnelCloseIngressStopsOutbox(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // after the fixture's own
	f := newOutputFixture(t)
	slow := newHeldSender()
	a := f.add(t, "laptop", slow)

	f.write(t, reply(a, "first"))
	<-slow.entered
	f.write(t, reply(a, "q1"), reply(a, "q2"), reply(a, "q3"))
	closed := make(chan struct{})
	go func() {
		f.g.closeIngress(a, "agent_disconnected")
		close(closed)
	}()
	waitFor(t, time.Second, "the ingress to close", a.closed.Load)
	close(slow.release)
	<-closed
	if sent, failed := slow.sent.Load(), testutil.ToFloat64(f.g.m.dropped.WithLabelValues("send_error")); sent+int64(failed) != 4 {
		t.Errorf("4 replies queued: %d sent, %v counted as send_error, the others lost without a count", sent, failed)
	}
	f.write(t, reply(a, "late"))
	if n := testutil.ToFloat64(f.g.m.dropped.WithLabelValues("no_ingress")); n != 1 {
		t.Errorf("a reply to a closed ingress: no_ingress %v, want 1", n)
	}
}

// addTag registers the ingress of relay tag id, whose replies leave on the
// relay session's outbox out, shared with the session's other tags.
func (f *outputFixture) addTag(t *testing.T, id uint32, out *tunnel.Outbox) *ingress {
	t.Helper()
	in := &ingress{peer: peer{tenant: "acme", identity: fmt.Sprintf("acme/agent/tag%d", id)},
		service: "web", services: []string{"web"}, out: out, tag: id, tagged: true}
	in.pinInner(agentInner)
	if err := f.g.ingresses.add(in); err != nil {
		t.Fatal(err)
	}
	f.ins = append(f.ins, in)
	return in
}

// TestTunnelOutputSlowRelayHoldsUpNoDirect: the replies of every agent
// behind a relay leave on the one session to the relay. While its send
// queue is full (a slow relay link), the tunnel link's writer must not
// wait with it: the direct agents' replies go on. Those to relayed agents
// are framed with their tag; closing one tag leaves the session's outbox
// to the others.
func TestTunnelOutputSlowRelayHoldsUpNoDirect(t *testing.T) {
	f := newOutputFixture(t)
	release := make(chan struct{})
	var (
		mu   sync.Mutex
		sent [][]byte
	)
	out := tunnel.NewOutbox(funcSender(func(b []byte) error {
		<-release
		mu.Lock()
		sent = append(sent, append([]byte(nil), b...))
		mu.Unlock()
		return nil
	}), relayOutboxLen, nil, nil)
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(func() { open(); out.Close() })
	t1, t2 := f.addTag(t, 7, out), f.addTag(t, 8, out)
	quick := make(chanSender, 4)
	d := f.add(t, "desktop", quick)

	f.write(t, reply(t1, "r1"), reply(t2, "r2"), reply(d, "d1"))
	select {
	case got := <-quick:
		if string(got[28:]) != "d1" {
			t.Errorf("the direct agent got %q, want \"d1\"", got[28:])
		}
	case <-time.After(time.Second):
		t.Fatal("the direct agent's reply not sent while the relay session's send waits")
	}

	f.g.closeIngress(t1, "tag_closed")
	f.write(t, reply(t2, "r3"))
	open()
	waitFor(t, 5*time.Second, "the relay session to send three replies", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(sent) == 3
	})
	mu.Lock()
	defer mu.Unlock()
	for i, want := range []struct {
		tag  uint32
		text string
	}{{7, "r1"}, {8, "r2"}, {8, "r3"}} {
		tag, pkt, err := tunnel.ParseTagReturn(sent[i])
		if err != nil || tag != want.tag || string(pkt[28:]) != want.text {
			t.Errorf("relay datagram %d: tag %d %q (%v), want tag %d %q", i, tag, pkt[min(28, len(pkt)):], err, want.tag, want.text)
			continue
		}
		if _, dst, _ := netstack.IPv4Addrs(pkt); dst != agentInner {
			t.Errorf("relay datagram %d to %v, want the agent's %v", i, dst, agentInner)
		}
	}
}

// TestTunnelOutputOutboxBudget: many slow agents at once do not each hold
// a full outbox. Past the budget shared by every session's outbox, a
// session that holds its reserve drops its new replies as outbox_budget,
// and an agent with little queued still gets its replies.
func TestTunnelOutputOutboxBudget(t *testing.T) {
	f := newOutputFixture(t)
	f.g.outboxes = tunnel.NewOutboxBudget(outboxBudget)
	const slowAgents = outboxBudget/directOutboxLen + 4
	for i := range slowAgents {
		slow := newHeldSender()
		in := f.add(t, fmt.Sprintf("slow-%d", i), slow)
		f.write(t, reply(in, "first"))
		<-slow.entered
		pkts := make([][]byte, directOutboxLen)
		for j := range pkts {
			pkts[j] = reply(in, "burst")
		}
		f.write(t, pkts...)
	}
	if got, most := f.g.outboxes.Queued(), int64(outboxBudget+slowAgents*tunnel.OutboxReserve); got > most {
		t.Errorf("%d slow agents hold %d replies queued, more than the budget %d and %d each", slowAgents, got, outboxBudget, tunnel.OutboxReserve)
	}
	if n := testutil.ToFloat64(f.g.m.dropped.WithLabelValues("outbox_budget")); n == 0 {
		t.Error("no reply dropped as outbox_budget with every outbox full")
	}
	// The relay session's outbox, which carries every relayed agent's
	// replies, is not held to the reserve by the direct agents.
	relaySession := newHeldSender()
	relayOut := f.g.relayOutbox(relaySession)
	t.Cleanup(func() { close(relaySession.release); relayOut.Close() })
	for i := range tunnel.OutboxReserve * 4 {
		if err := relayOut.SendCopy([]byte{0x45}); err != nil {
			t.Fatalf("the relay session's outbox refused reply %d with the direct outboxes' budget spent: %v", i, err)
		}
	}
	quick := make(chanSender, 1)
	in := f.add(t, "quick", quick)
	f.write(t, reply(in, "yours"))
	select {
	case b := <-quick:
		if !bytes.Contains(b, []byte("yours")) {
			t.Errorf("the quick agent got % x", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an agent with nothing queued got no reply while slow agents held the budget")
	}
}
