package tunnel

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/internal/promreg"
)

// Label values of the tunnel metrics. Every label is bounded: no address,
// no identity.
const (
	sideServer = "server"
	sideClient = "client"

	resultOK      = "ok"
	resultRefused = "refused" // the peer's certificate or hello was refused
	resultFailed  = "failed"  // the connection broke before it was a session

	// Reasons beyond the certificate reasons of autherror.go.
	reasonNone         = "none"
	reasonHelloTimeout = "hello_timeout" // no hello or welcome in time
	reasonBadHello     = "bad_hello"     // not a hello/welcome, or undecodable
	reasonClosed       = "closed"        // the connection ended during the exchange
	reasonServerError  = "server_error"  // the server answered hello with an error
	reasonDial         = "dial"          // the QUIC handshake failed (client side)

	// Reasons a datagram is not sent.
	DropTooLarge = "too_large" // larger than the connection carries now
	DropClosed   = "closed"    // the session has ended
	DropFull     = "full"      // the connection's send queue stayed full: its peer takes nothing now
	DropError    = "error"     // anything else quic-go reports
)

// metrics are the ztgate_tunnel_* collectors shared by every listener and
// dialer registered with the same Registerer.
type metrics struct {
	handshakes *prometheus.CounterVec
	sessions   *prometheus.GaugeVec
	datagrams  *prometheus.CounterVec
	dropped    *prometheus.CounterVec
	revokedN   *prometheus.CounterVec

	// Resolved children of the hot path, so that counting allocates nothing.
	in, out                                   prometheus.Counter
	dropLarge, dropClosed, dropFull, dropElse prometheus.Counter
}

// newMetrics creates the collectors and registers them with reg (nil:
// unregistered). Collectors that reg already holds, from another listener
// or an earlier dial, are shared.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_tunnel_handshakes_total",
			Help: "Tunnel handshakes (QUIC, TLS and hello/welcome) by side, result and reason.",
		}, []string{"side", "result", "reason"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ztgate_tunnel_sessions",
			Help: "Tunnel sessions open now, by side and protocol version.",
		}, []string{"side", "version"}),
		datagrams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_tunnel_datagrams_total",
			Help: "Datagrams received (in) and handed to QUIC (out).",
		}, []string{"direction"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_tunnel_datagrams_dropped_total",
			Help: "Datagrams that could not be sent, by reason.",
		}, []string{"reason"}),
		revokedN: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_tunnel_sessions_revoked_total",
			Help: "Live sessions closed because the credentials in use refuse the peer's certificate now (expired, of a CA no longer trusted): by a listener (side server, the client's certificate) or a dialer (side client, the server's), by reason.",
		}, []string{"side", "reason"}),
	}
	if reg != nil {
		var err error
		if m.handshakes, err = register(reg, m.handshakes); err != nil {
			return nil, err
		}
		if m.sessions, err = register(reg, m.sessions); err != nil {
			return nil, err
		}
		if m.datagrams, err = register(reg, m.datagrams); err != nil {
			return nil, err
		}
		if m.dropped, err = register(reg, m.dropped); err != nil {
			return nil, err
		}
		if m.revokedN, err = register(reg, m.revokedN); err != nil {
			return nil, err
		}
	}
	m.in, m.out = m.datagrams.WithLabelValues("in"), m.datagrams.WithLabelValues("out")
	m.dropLarge = m.dropped.WithLabelValues(DropTooLarge)
	m.dropClosed = m.dropped.WithLabelValues(DropClosed)
	m.dropFull = m.dropped.WithLabelValues(DropFull)
	m.dropElse = m.dropped.WithLabelValues(DropError)
	return m, nil
}

// register registers c, or returns the equal collector reg already has
// (see promreg.Register).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := promreg.Register(reg, c)
	if err != nil {
		return c, fmt.Errorf("tunnel: %w", err)
	}
	return c, nil
}

// handshake counts one handshake of side.
func (m *metrics) handshake(side, result, reason string) {
	m.handshakes.WithLabelValues(side, result, reason).Inc()
}

// revoked counts a live session of side closed because its peer's
// certificate is refused now.
func (m *metrics) revoked(side, reason string) { m.revokedN.WithLabelValues(side, reason).Inc() }

// sessionGauge returns the gauge of open sessions of side and version.
func (m *metrics) sessionGauge(side string, v Version) prometheus.Gauge {
	return m.sessions.WithLabelValues(side, v.String())
}
