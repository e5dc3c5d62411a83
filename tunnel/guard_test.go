package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
)

// udpDropped sums ztgate_tunnel_udp_dropped_total over its reasons.
func (sf *sessionFixture) udpDropped() float64 {
	return testutil.ToFloat64(sf.ln.guard.m.dropped.WithLabelValues(dropNotQUIC)) + sumOther(sf)
}

func sumOther(sf *sessionFixture) float64 {
	mfs, err := sf.reg.Gather()
	if err != nil {
		sf.t.Fatal(err)
	}
	n := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "ztgate_tunnel_udp_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() != dropNotQUIC {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// TestGarbageDatagrams sends random datagrams of every kind to a listener:
// none breaks it, they are counted, and a real client still connects.
func TestGarbageDatagrams(t *testing.T) {
	sf := newSessionFixture(t, false)
	c, err := net.Dial("udp", sf.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Some garbage is answered rather than dropped: a short header of an
	// unknown connection by a stateless reset (when quic-go's reset queue
	// has room), a long header of an unknown version by a version
	// negotiation. Count the answers with the drops.
	var answers atomic.Int64
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 1500)
		for {
			if _, err := c.Read(buf); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // e.g. ICMP port unreachable surfacing as ECONNREFUSED
			}
			answers.Add(1)
		}
	}()
	defer func() { c.Close(); <-readerDone }()
	handled := func() float64 { return sf.udpDropped() + float64(answers.Load()) }
	rng := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		name  string
		first byte // the first byte's top bits; the rest is random
		mask  byte
	}{
		{"not QUIC", 0x00, 0x3f},
		{"short header", 0x40, 0x3f},
		{"long header", 0xc0, 0x3f},
		{"anything", 0x00, 0xff},
	}
	const each = 500
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := handled()
			for i := range each {
				b := make([]byte, 1+rng.IntN(1400))
				for j := range b {
					b[j] = byte(rng.Uint32())
				}
				b[0] = tc.first | b[0]&tc.mask
				if _, err := c.Write(b); err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
				if i%50 == 0 {
					time.Sleep(time.Millisecond) // stay within the socket's buffer
				}
			}
			// A long header that parses as an Initial of a known version
			// may be buffered or fail later: count only what must be.
			want := float64(each) * 0.7
			deadline := time.Now().Add(testTimeout)
			for handled()-before < want {
				if time.Now().After(deadline) {
					t.Fatalf("%v of %d datagrams counted as dropped or answered", handled()-before, each)
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("%v of %d counted as dropped or answered", handled()-before, each)
		})
	}
	sf.connect(sf.dialConfig(sf.agentCreds()))
}

// deafConn is a client socket that sends but never receives: its QUIC
// handshakes stay half-open at the server.
type deafConn struct {
	net.PacketConn
	once   sync.Once
	closed chan struct{}
}

func (c *deafConn) ReadFrom([]byte) (int, net.Addr, error) {
	<-c.closed
	return 0, nil, net.ErrClosed
}

func (c *deafConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.PacketConn.Close()
}

// TestHalfOpenHandshakes opens 2,000 QUIC handshakes that never complete:
// the listener holds state for at most a quarter of its bound, then asks
// for a Retry that the deaf client never answers, so the rest cost it
// nothing; a real client still connects, and the slots return when the
// handshakes end.
func TestHalfOpenHandshakes(t *testing.T) {
	if testing.Short() {
		t.Skip("opens thousands of handshakes")
	}
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true") // the deaf socket is not a *net.UDPConn
	sf := newSessionFixture(t, false)
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deaf := &deafConn{PacketConn: udp, closed: make(chan struct{})}
	tr := &quic.Transport{Conn: deaf}
	defer tr.Close()
	defer deaf.Close() // first: the transport waits for its reader
	addr := sf.ln.Addr()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	const halfOpen = 2000
	for range halfOpen {
		wg.Go(func() {
			tr.Dial(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPNV2}}, quicConfig(false))
		})
	}
	g := sf.ln.guard
	deadline := time.Now().Add(testTimeout)
	for testutil.ToFloat64(g.m.retries) < halfOpen/2 {
		if time.Now().After(deadline) {
			t.Fatalf("%v retries asked, %d handshakes held", testutil.ToFloat64(g.m.retries), g.inflight.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := g.inflight.Load(); n > g.retryAt {
		t.Fatalf("%d half-open handshakes held, want at most %d", n, g.retryAt)
	}
	// A real client connects, redialling as agents and gateways do: under
	// the flood (and a loaded machine) its Initials may be lost to it a few
	// times, each loss doubling its probe timeout.
	start := time.Now()
	for attempt := 1; ; attempt++ {
		_, _, err := sf.dialAccept(sf.addr(), sf.dialConfig(sf.agentCreds()), HandshakeTimeout)
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatalf("a real client did not connect in %d attempts (%v): %v", attempt, time.Since(start).Round(time.Millisecond), err)
		}
		t.Logf("attempt %d: %v", attempt, err)
	}
	t.Logf("%d held, %v retries asked; a real client connected in %v",
		g.inflight.Load(), testutil.ToFloat64(g.m.retries), time.Since(start).Round(time.Millisecond))
	cancel()
	wg.Wait()
	deadline = time.Now().Add(HandshakeTimeout + 5*time.Second)
	for g.inflight.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d handshake slots still held after the clients gave up", g.inflight.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHandshakeBound fills the bound itself (with address validation
// out of reach): the next connection is refused as busy and counted.
func TestHandshakeBound(t *testing.T) {
	g, err := newGuard(4, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.retryAt = 1 << 30
	var ctxs []context.Context
	for i := range 4 {
		ctx, err := g.connContext(context.Background(), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		ctxs = append(ctxs, ctx)
	}
	if _, err := g.connContext(context.Background(), nil); err == nil {
		t.Fatal("a connection over the bound was admitted")
	}
	if n := testutil.ToFloat64(g.m.busy); n != 1 {
		t.Fatalf("busy refusals counted: %v", n)
	}
	// One ends before its handshake completes, one completes: both slots
	// come back, once each.
	ended, cancel := context.WithCancel(ctxs[0])
	g.connTracer(ended, false, quic.ConnectionID{})
	cancel()
	s := ctxs[1].Value(slotKey{}).(*handshakeSlot)
	s.release()
	s.release()
	deadline := time.Now().Add(time.Second)
	for g.inflight.Load() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d slots held, want 2", g.inflight.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRecordEventCachesTriggers checks that quic-go's drops are counted by
// trigger, each trigger's series resolved once and then reused.
func TestRecordEventCachesTriggers(t *testing.T) {
	g, err := newGuard(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		g.RecordEvent(qlog.PacketDropped{Trigger: qlog.PacketDropUnknownConnectionID})
	}
	g.RecordEvent(qlog.PacketDropped{Trigger: qlog.PacketDropHeaderParseError})
	if v := testutil.ToFloat64(g.m.dropped.WithLabelValues("unknown_connection_id")); v != 3 {
		t.Errorf("unknown_connection_id = %v, want 3", v)
	}
	if v := testutil.ToFloat64(g.m.dropped.WithLabelValues("header_parse_error")); v != 1 {
		t.Errorf("header_parse_error = %v, want 1", v)
	}
	g.m.mu.RLock()
	cached := len(g.m.byTrigger)
	g.m.mu.RUnlock()
	if cached != 2 {
		t.Errorf("%d triggers cached, want 2", cached)
	}
	if g.m.droppedBy(qlog.PacketDropUnknownConnectionID) != g.m.droppedBy(qlog.PacketDropUnknownConnectionID) {
		t.Error("a trigger's counter is resolved again on every drop")
	}
}
