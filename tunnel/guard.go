package tunnel

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

// DefaultMaxHandshakes bounds the QUIC connections a listener holds
// between a client's first packet and the end of its handshake. quic-go
// keeps state for each (up to HandshakeTimeout); without a bound, a flood
// of Initial packets would hold memory and goroutines without limit.
const DefaultMaxHandshakes = 1024

// retryDivisor sets when a listener starts asking new clients to prove
// their address first (a QUIC Retry, one round trip more): at
// 1/retryDivisor of its handshake bound. A flood from spoofed addresses
// then creates no state at all, and real clients still get in.
const retryDivisor = 4

// errBusy refuses a connection over the handshake bound.
var errBusy = errors.New("tunnel: too many handshakes in progress")

// guard protects a listener's transport: it bounds the handshakes in
// progress, turns on address validation under load, and counts the UDP
// packets the transport drops before they reach a connection (garbage,
// unknown connections, packets over quic-go's own queues).
type guard struct {
	max, retryAt int64
	inflight     atomic.Int64
	m            *guardMetrics
}

// slotKey is the context key of a connection's handshake slot.
type slotKey struct{}

// handshakeSlot is one connection's place in the bound; release is
// idempotent.
type handshakeSlot struct {
	g    *guard
	done atomic.Bool
}

func (s *handshakeSlot) release() {
	if s.done.CompareAndSwap(false, true) {
		s.g.inflight.Add(-1)
	}
}

func newGuard(limit int, reg prometheus.Registerer) (*guard, error) {
	if limit <= 0 {
		limit = DefaultMaxHandshakes
	}
	m, err := newGuardMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &guard{max: int64(limit), retryAt: int64(max(1, limit/retryDivisor)), m: m}, nil
}

// transport returns the QUIC transport of a listener on conn with the
// guard's hooks and the listener's stateless reset key.
func (g *guard) transport(conn net.PacketConn, reset *quic.StatelessResetKey) *quic.Transport {
	return &quic.Transport{
		Conn:                conn,
		ConnectionIDLength:  connIDLen,
		StatelessResetKey:   reset,
		Tracer:              g,
		VerifySourceAddress: g.verifySource,
		ConnContext:         g.connContext,
	}
}

// config adds the guard's per-connection hook to a server configuration.
func (g *guard) config(c *quic.Config) *quic.Config {
	c.Tracer = g.connTracer
	return c
}

// verifySource asks for a Retry once many handshakes are in progress.
func (g *guard) verifySource(net.Addr) bool {
	if g.inflight.Load() < g.retryAt {
		return false
	}
	g.m.retries.Inc()
	return true
}

// connContext admits a new connection within the bound; it holds a slot
// until its handshake completes (handshakeDone) or the connection ends.
func (g *guard) connContext(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
	if g.inflight.Add(1) > g.max {
		g.inflight.Add(-1)
		g.m.busy.Inc()
		return ctx, errBusy
	}
	return context.WithValue(ctx, slotKey{}, &handshakeSlot{g: g}), nil
}

// connTracer is quic.Config.Tracer: it sees the context of every new
// connection and releases its slot when the connection ends, whatever
// ended it (a failed or abandoned handshake, a closed session). It traces
// nothing.
func (g *guard) connTracer(ctx context.Context, _ bool, _ quic.ConnectionID) qlogwriter.Trace {
	if s, ok := ctx.Value(slotKey{}).(*handshakeSlot); ok {
		context.AfterFunc(ctx, s.release)
	}
	return nil
}

// handshakeDone releases the slot of a connection whose handshake is
// complete.
func handshakeDone(conn *quic.Conn) {
	if s, ok := conn.Context().Value(slotKey{}).(*handshakeSlot); ok {
		s.release()
	}
}

// RecordEvent implements qlogwriter.Recorder for the transport: it counts
// the packets dropped before they reached a connection, by reason.
func (g *guard) RecordEvent(e qlogwriter.Event) {
	if d, ok := e.(qlog.PacketDropped); ok {
		g.m.droppedBy(d.Trigger).Inc()
	}
}

// Close implements qlogwriter.Recorder.
func (g *guard) Close() error { return nil }

// countNonQUIC reads and counts the datagrams that are not QUIC at all
// (the first two bits clear), which quic-go would drop silently, until
// ctx is done or the transport closes.
func (g *guard) countNonQUIC(ctx context.Context, tr *quic.Transport) {
	buf := make([]byte, 1500)
	for {
		if _, _, err := tr.ReadNonQUICPacket(ctx, buf); err != nil {
			return
		}
		g.m.notQUIC.Inc()
	}
}

// dropNotQUIC labels datagrams that are not QUIC packets.
const dropNotQUIC = "not_quic"

// guardMetrics are the collectors of every listener's guard.
type guardMetrics struct {
	dropped *prometheus.CounterVec
	notQUIC prometheus.Counter // dropped's dropNotQUIC child
	busy    prometheus.Counter
	retries prometheus.Counter

	// byTrigger caches dropped's children by quic-go's drop trigger, a
	// small fixed set, so that a flood resolves no label per datagram.
	mu        sync.RWMutex
	byTrigger map[qlog.PacketDropReason]prometheus.Counter
}

// droppedBy is dropped's child for a quic-go drop trigger.
func (m *guardMetrics) droppedBy(t qlog.PacketDropReason) prometheus.Counter {
	m.mu.RLock()
	c, ok := m.byTrigger[t]
	m.mu.RUnlock()
	if ok {
		return c
	}
	c = m.dropped.WithLabelValues(string(t))
	m.mu.Lock()
	m.byTrigger[t] = c
	m.mu.Unlock()
	return c
}

func newGuardMetrics(reg prometheus.Registerer) (*guardMetrics, error) {
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_tunnel_udp_dropped_total",
		Help: "UDP datagrams on a tunnel listener's port dropped before reaching a connection (not QUIC, unparseable, unknown connection, over quic-go's queues), by reason.",
	}, []string{"reason"})
	limits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_tunnel_handshake_limit_total",
		Help: "New connections a tunnel listener refused (busy) or asked to prove their address first (retry) because many handshakes were in progress.",
	}, []string{"action"})
	if reg != nil {
		var err error
		if dropped, err = register(reg, dropped); err != nil {
			return nil, err
		}
		if limits, err = register(reg, limits); err != nil {
			return nil, err
		}
	}
	return &guardMetrics{
		dropped: dropped, notQUIC: dropped.WithLabelValues(dropNotQUIC),
		busy: limits.WithLabelValues("busy"), retries: limits.WithLabelValues("retry"),
		byTrigger: make(map[qlog.PacketDropReason]prometheus.Counter),
	}, nil
}
