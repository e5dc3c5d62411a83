package relay

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztgate/ztgate/internal/listenaddr"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/internal/monoclock"
	"github.com/ztgate/ztgate/internal/udpseg"
)

// Forwarded paths (docs/direct-path.md, "Forwarded paths"). When the relay
// has forward_ports, every answer it passes to an agent also names one of
// those ports: a forwarder that carries the agent's UDP to the gateway's
// [tunnel] listen and back, without looking inside. The agent dials the
// gateway through it with the same mutual TLS as a direct path, so the
// session is end to end: the relay holds no key of it and sees only QUIC
// packets. It costs the relay two system calls per run of datagrams
// instead of a QUIC hop's decryption, encryption and bookkeeping for each.
//
// A forwarder only ever sends to one address: the gateway's listen port at
// the address the gateway's own relay session comes from (so a gateway
// cannot make the relay send anywhere else), and back to one agent socket:
// the first that sends from the address the agent's relay session comes
// from. Everything else is dropped and counted.
const (
	// forwardPerAgent bounds the forwarders of one agent identity: one per
	// gateway it has a path to, and an agent's paths serve every service
	// of their gateway.
	forwardPerAgent = 8
	// forwardLockWait is how long a forwarder waits for the agent's first
	// packet before it closes: the signaling session's TTL and a margin.
	forwardLockWait = signalTTL + 5*time.Second
	// forwardIdle closes a forwarder that carried nothing either way for
	// this long: more than QUIC's idle timeout, so the session it carried
	// is gone (the agent pings a live path every 200 ms).
	forwardIdle = 35 * time.Second
	// forwardBuf is a read's room: a run of datagrams (UDP GRO) is at most
	// 64 KiB.
	forwardBuf = 1 << 16
	// forwardMaxErrors ends a direction whose reads fail this many times
	// in a row (each ICMP error fails one read; a socket that fails
	// without end must not spin).
	forwardMaxErrors = 1000
	// forwardSockBuf is each forwarder socket's receive and send buffer, as
	// quic-go asks for its own (capped by net.core.rmem_max / wmem_max): a
	// burst that arrives while the forwarder waits for a core must fit.
	forwardSockBuf = 7 << 20
)

// Why a forwarder dropped a packet (ztgate_relay_forward_dropped_total).
const (
	fwdDropSource  = "foreign_source" // not from the agent socket that locked the forwarder
	fwdDropNoAgent = "no_agent"       // from the gateway before the agent's first packet
	fwdDropSend    = "send_failed"    // the next hop's socket did not take it
)

// Why no forwarder was offered (ztgate_relay_forwarders_refused_total).
const (
	fwdRefuseNoPort   = "no_port"   // every port of the range is in use
	fwdRefuseAgentCap = "agent_cap" // the agent has forwardPerAgent already
	fwdRefuseTarget   = "no_target" // the gateway's session address or listen port is unusable
)

// Why a forwarder closed (ztgate_relay_forwarders_closed_total).
const (
	fwdCloseSignaling = "signaling" // its signaling session failed, was aborted, expired or lost a party
	fwdCloseUnused    = "unused"    // the agent never sent within forwardLockWait
	fwdCloseIdle      = "idle"      // nothing either way for forwardIdle
	fwdCloseRevoked   = "revoked"   // the relay revoked the session of its agent or gateway (closeRevokedForwarders)
	fwdCloseShutdown  = "shutdown"  // the relay stops
	fwdCloseError     = "error"     // a socket failed without end (forwardMaxErrors)
)

// Directions of the relay's datagrams: the index of their label in
// directionLabels (ztgate_relay_datagrams_total and the forwarders').
const (
	fwdUp   = 0 // agent → gateway
	fwdDown = 1 // gateway → agent
)

var directionLabels = [2]string{"agent_to_gateway", "gateway_to_agent"}

// forwardMetrics are the collectors of the forwarders.
type forwardMetrics struct {
	live      prometheus.Gauge
	refused   *prometheus.CounterVec
	datagrams [2]prometheus.Counter
	bytes     [2]prometheus.Counter
	dropped   *prometheus.CounterVec
	closed    *prometheus.CounterVec
	// dropped's children, resolved once.
	dropSource, dropNoAgent, dropSend prometheus.Counter
}

func newForwardMetrics(reg prometheus.Registerer) *forwardMetrics {
	m := &forwardMetrics{
		live: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztgate_relay_forwarders",
			Help: "Forwarders of forwarded paths open (each holds one port of forward_ports)."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ztgate_relay_forwarders_refused_total",
			Help: "Answers passed to agents without a forwarder, by reason."}, []string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ztgate_relay_forward_dropped_total",
			Help: "Packets forwarders dropped, by reason."}, []string{"reason"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ztgate_relay_forwarders_closed_total",
			Help: "Forwarders closed, by reason."}, []string{"reason"}),
	}
	dg := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ztgate_relay_forwarded_datagrams_total",
		Help: "UDP datagrams forwarders carried, by direction."}, []string{"direction"})
	by := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ztgate_relay_forwarded_bytes_total",
		Help: "UDP payload bytes forwarders carried, by direction."}, []string{"direction"})
	for i, d := range directionLabels {
		m.datagrams[i], m.bytes[i] = dg.WithLabelValues(d), by.WithLabelValues(d)
	}
	for _, r := range []string{fwdRefuseNoPort, fwdRefuseAgentCap, fwdRefuseTarget} {
		m.refused.WithLabelValues(r)
	}
	for _, r := range []string{fwdCloseSignaling, fwdCloseUnused, fwdCloseIdle, fwdCloseRevoked, fwdCloseShutdown, fwdCloseError} {
		m.closed.WithLabelValues(r)
	}
	m.dropSource = m.dropped.WithLabelValues(fwdDropSource)
	m.dropNoAgent = m.dropped.WithLabelValues(fwdDropNoAgent)
	m.dropSend = m.dropped.WithLabelValues(fwdDropSend)
	reg.MustRegister(m.live, m.refused, m.dropped, m.closed, dg, by)
	return m
}

// forwarding owns the relay's forwarders.
type forwarding struct {
	ports conf.PortRange
	host  string // the listen address's host, where the ports are bound
	log   *slog.Logger
	m     *forwardMetrics
	// lockWait and idle are forwardLockWait and forwardIdle (tests
	// shorten them).
	lockWait, idle time.Duration

	mu       sync.Mutex
	closed   bool
	byPort   map[uint16]*forwarder
	perAgent map[string]int
	wg       sync.WaitGroup
}

// newForwarding returns the forwarding of a relay listening on listen
// (host:port), or nil when ports is empty.
func newForwarding(ports conf.PortRange, listen string, m *forwardMetrics, log *slog.Logger) *forwarding {
	if ports.Len() == 0 {
		return nil
	}
	host, _, _ := net.SplitHostPort(listen)
	return &forwarding{ports: ports, host: host, log: log, m: m, lockWait: forwardLockWait, idle: forwardIdle,
		byPort: make(map[uint16]*forwarder), perAgent: make(map[string]int)}
}

// forwarder carries one forwarded path's datagrams.
type forwarder struct {
	fw      *forwarding
	agent   string     // the agent's identity, for the cap, logs and closeRevokedForwarders
	gateway string     // the gateway's identity, for logs and closeRevokedForwarders
	gwName  string     // the gateway's hello name, for closeRevokedForwarders
	agentIP netip.Addr // where the agent's relay session comes from
	target  netip.AddrPort
	port    uint16
	aconn   *net.UDPConn // bound to port: the agent's side
	gconn   *net.UDPConn // connected to target

	since time.Time

	peer atomic.Pointer[netip.AddrPort] // the agent socket, once its first packet came
	last atomic.Int64                   // monoclock of the last packet carried
	once sync.Once
}

// open starts a forwarder from agentIP to target for agent, to the
// gateway of identity gateway and hello name gwName, or returns the reason
// (a refusal label) it cannot.
func (fw *forwarding) open(agent, gateway, gwName string, agentIP netip.Addr, target netip.AddrPort) (*forwarder, string) {
	agentIP, target = agentIP.Unmap(), netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	if !agentIP.IsValid() || !target.Addr().IsValid() || target.Port() == 0 || target.Addr().IsUnspecified() || target.Addr().IsMulticast() {
		return nil, fwdRefuseTarget
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed {
		return nil, fwdRefuseNoPort
	}
	if fw.perAgent[agent] >= forwardPerAgent {
		return nil, fwdRefuseAgentCap
	}
	gconn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
	if err != nil {
		fw.log.Warn("forwarder: cannot reach the gateway's listener", "gateway", gateway, "target", target.String(), "err", err)
		return nil, fwdRefuseTarget
	}
	n := fw.ports.Len()
	start := rand.IntN(n)
	for i := range n {
		port := fw.ports.First + uint16((start+i)%n)
		if fw.byPort[port] != nil {
			continue
		}
		addr := net.JoinHostPort(fw.host, strconv.Itoa(int(port)))
		pc, err := listenaddr.ListenPacket(addr)
		if err != nil {
			continue // taken by another process
		}
		for _, c := range []*net.UDPConn{pc.(*net.UDPConn), gconn} {
			_ = c.SetReadBuffer(forwardSockBuf)
			_ = c.SetWriteBuffer(forwardSockBuf)
		}
		f := &forwarder{fw: fw, agent: agent, gateway: gateway, gwName: gwName, agentIP: agentIP, target: target, port: port,
			aconn: pc.(*net.UDPConn), gconn: gconn, since: time.Now()}
		f.last.Store(monoclock.Now())
		fw.byPort[port] = f
		fw.perAgent[agent]++
		fw.m.live.Inc()
		fw.wg.Add(2)
		go f.up()
		go f.down()
		fw.log.Debug("forwarder open", "agent", agent, "gateway", gateway, "port", port, "target", target.String())
		return f, ""
	}
	_ = gconn.Close()
	return nil, fwdRefuseNoPort
}

// close closes f (idempotent): its goroutines end. reason is its label in
// ztgate_relay_forwarders_closed_total, why the log's words.
func (f *forwarder) close(reason, why string) {
	f.once.Do(func() {
		_ = f.aconn.Close()
		_ = f.gconn.Close()
		fw := f.fw
		fw.mu.Lock()
		delete(fw.byPort, f.port)
		if fw.perAgent[f.agent]--; fw.perAgent[f.agent] <= 0 {
			delete(fw.perAgent, f.agent)
		}
		fw.mu.Unlock()
		fw.m.live.Dec()
		fw.m.closed.WithLabelValues(reason).Inc()
		level := slog.LevelInfo
		if reason == fwdCloseRevoked {
			level = slog.LevelWarn // it may still have carried a path
		}
		fw.log.Log(context.Background(), level, "forwarder closed", "agent", f.agent, "gateway", f.gateway, "port", f.port, "reason", why)
	})
}

// shutdown closes every forwarder and waits for their goroutines.
func (fw *forwarding) shutdown() {
	if fw == nil {
		return
	}
	fw.mu.Lock()
	fw.closed = true
	all := make([]*forwarder, 0, len(fw.byPort))
	for _, f := range fw.byPort {
		all = append(all, f)
	}
	fw.mu.Unlock()
	for _, f := range all {
		f.close(fwdCloseShutdown, "relay shutting down")
	}
	fw.wg.Wait()
}

// count returns how many forwarders match selects.
func (fw *forwarding) count(match func(*forwarder) bool) int {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	n := 0
	for _, f := range fw.byPort {
		if match(f) {
			n++
		}
	}
	return n
}

// closeWhere closes the forwarders match selects, for reason (a label of
// ztgate_relay_forwarders_closed_total) and why (the log's words), and
// returns how many.
func (fw *forwarding) closeWhere(match func(*forwarder) bool, reason, why string) int {
	fw.mu.Lock()
	var sel []*forwarder
	for _, f := range fw.byPort {
		if match(f) {
			sel = append(sel, f)
		}
	}
	fw.mu.Unlock()
	for _, f := range sel {
		f.close(reason, why)
	}
	return len(sel)
}

// direction is one way through a forwarder: the socket it reads, the one
// it writes and their buffers. Owned by that direction's goroutine.
type direction struct {
	dir            int // fwdUp or fwdDown
	in, out        *net.UDPConn
	buf, oob, soob []byte
	gso            bool // off once the path refused a GSO send
	errs           int  // consecutive read errors
}

func newDirection(dir int, in, out *net.UDPConn) *direction {
	udpseg.EnableGRO(in)
	return &direction{dir: dir, in: in, out: out, gso: udpseg.GSO(),
		buf: make([]byte, forwardBuf), oob: make([]byte, udpseg.GROCmsgSpace), soob: make([]byte, udpseg.CmsgSpace)}
}

// read returns the next run of datagrams (UDP GRO), their segment size (0:
// one datagram) and their source. An ICMP error of an earlier send
// (refused, unreachable) is reported once by the next read: it is skipped,
// the session's own timers decide. The error is a deadline, a closed
// socket, or forwardMaxErrors failures in a row.
func (d *direction) read() ([]byte, int, netip.AddrPort, error) {
	for {
		n, oobn, _, from, err := d.in.ReadMsgUDPAddrPort(d.buf, d.oob)
		switch {
		case err == nil:
			d.errs = 0
			return d.buf[:n], udpseg.GROSize(d.oob[:oobn]), netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, net.ErrClosed), d.errs >= forwardMaxErrors:
			return nil, 0, netip.AddrPort{}, err
		}
		d.errs++
	}
}

// up carries the agent's datagrams to the gateway. The first packet from
// the agent's address locks the forwarder to its socket; the read deadline
// closes a forwarder the agent never used or that went idle.
func (f *forwarder) up() {
	defer f.fw.wg.Done()
	defer f.close(fwdCloseError, "agent side ended")
	d := newDirection(fwdUp, f.aconn, f.gconn)
	_ = f.aconn.SetReadDeadline(time.Now().Add(f.fw.lockWait))
	for {
		b, size, from, err := d.read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if reason, why := f.expired(); reason != "" {
				f.close(reason, why)
				return
			}
			continue
		}
		if err != nil {
			return
		}
		peer := f.peer.Load()
		switch {
		case peer == nil && from.Addr() == f.agentIP:
			f.peer.Store(&from)
			_ = f.aconn.SetReadDeadline(time.Now().Add(f.fw.idle))
			f.fw.log.Info("forwarder carries a path", "agent", f.agent, "gateway", f.gateway, "port", f.port,
				"from", from.String(), "target", f.target.String())
		case peer == nil || *peer != from:
			f.fw.m.dropSource.Inc()
			continue
		}
		f.last.Store(monoclock.Now())
		f.carry(d, netip.AddrPort{}, b, size)
	}
}

// down carries the gateway's datagrams to the agent socket that locked
// the forwarder. gconn is connected: the kernel takes only the target's.
func (f *forwarder) down() {
	defer f.fw.wg.Done()
	defer f.close(fwdCloseError, "gateway side ended")
	d := newDirection(fwdDown, f.gconn, f.aconn)
	for {
		b, size, _, err := d.read()
		if err != nil {
			return
		}
		peer := f.peer.Load()
		if peer == nil {
			f.fw.m.dropNoAgent.Inc()
			continue
		}
		f.last.Store(monoclock.Now())
		f.carry(d, *peer, b, size)
	}
}

// expired reports why f should close at a read deadline, its label and
// the log's words ("" to go on).
func (f *forwarder) expired() (reason, why string) {
	if f.peer.Load() == nil {
		return fwdCloseUnused, "the agent never sent"
	}
	idle := time.Duration(monoclock.Now() - f.last.Load())
	if idle >= f.fw.idle {
		return fwdCloseIdle, "idle"
	}
	_ = f.aconn.SetReadDeadline(time.Now().Add(f.fw.idle - idle))
	return "", ""
}

// carry sends a run of datagrams (size bytes each but the last; size 0 is
// one datagram) on d's out socket, to addr unless it is connected: in one
// GSO send when the run has several, one by one when the path refuses GSO
// (which turns it off for this direction).
func (f *forwarder) carry(d *direction, addr netip.AddrPort, b []byte, size int) {
	segs := udpseg.Segments(len(b), size)
	m := f.fw.m
	if segs > 1 && d.gso {
		_, _, err := d.out.WriteMsgUDPAddrPort(b, udpseg.PutSegmentSize(d.soob, size), addr)
		switch {
		case err == nil:
			m.datagrams[d.dir].Add(float64(segs))
			m.bytes[d.dir].Add(float64(len(b)))
			return
		case udpseg.Refused(err) || errors.Is(err, unix.EMSGSIZE):
			d.gso = false
		default:
			m.dropSend.Add(float64(segs))
			return
		}
	}
	if size <= 0 {
		size = len(b)
	}
	for len(b) > 0 {
		dg := b[:min(size, len(b))]
		b = b[len(dg):]
		if _, _, err := d.out.WriteMsgUDPAddrPort(dg, nil, addr); err != nil {
			m.dropSend.Inc()
			continue
		}
		m.datagrams[d.dir].Inc()
		m.bytes[d.dir].Add(float64(len(dg)))
	}
}

// closeRevokedForwarders closes the forwarders of the peer of a session
// the relay revoked (its credentials refuse the peer's certificate now: a
// reload dropped its CA, the certificate expired; tunnel.Session.Revoked)
// once the session is out of the registry: an agent's, those serving its
// identity; a gateway's, those sending to that gateway (its identity and
// hello name). A forwarded path outlives the relay session that set it
// up, which may end for any other reason and come back (the network, a
// restart of the peer), but not the relay's trust in its parties.
//
// Unless the relay still has a live session of the same agent identity,
// or of the same gateway, that it did not revoke: the relay still trusts
// that party through the other certificate (an identity several agents
// share, a gateway whose new session with a renewed certificate came
// before the old one was revoked). The gateway's other names, which are
// other gateways at other addresses, keep their forwarders in any case.
// When a CA is dropped every session of its certificates is revoked, one
// after the other; the last of an identity to end closes its forwarders.
func (r *Relay) closeRevokedForwarders(p peer, g *gateway) {
	if r.fwd == nil {
		return
	}
	id, role := p.id.String(), p.role
	trusted := func(o *peer) bool { return o.id.String() == id && o.s.Err() == nil && !o.s.Revoked() }
	var kept bool
	r.mu.RLock()
	if g != nil {
		for o := range r.gateways {
			if o.name == g.name && trusted(&o.peer) {
				kept = true
				break
			}
		}
	} else {
		for o := range r.agents {
			if trusted(&o.peer) {
				kept = true
				break
			}
		}
	}
	r.mu.RUnlock()
	why := "the relay revoked its agent's session"
	match := func(f *forwarder) bool { return f.agent == id }
	if g != nil {
		why = "the relay revoked its gateway's session"
		match = func(f *forwarder) bool { return f.gateway == id && f.gwName == g.name }
	}
	if kept {
		if n := r.fwd.count(match); n > 0 {
			r.log.Info("relay session revoked; another session of the identity is live, its forwarders stay",
				"role", role, "identity", id, "session", p.s.ID(), "forwarders", n)
		}
		return
	}
	if n := r.fwd.closeWhere(match, fwdCloseRevoked, why); n > 0 {
		r.log.Warn("forwarders closed: the relay revoked a session", "role", role, "identity", id,
			"session", p.s.ID(), "forwarders", n, "err", p.s.Err())
	}
}

// apiForwarder is one forwarder in GET /v1/forwarders.
type apiForwarder struct {
	Port    uint16    `json:"port"`
	Agent   string    `json:"agent"`
	Gateway string    `json:"gateway"`
	Target  string    `json:"target"`         // the gateway's listener it sends to
	From    string    `json:"from,omitempty"` // the agent socket it is locked to, once the agent sent
	Since   time.Time `json:"since"`
	IdleMS  int64     `json:"idle_ms"` // since the last packet either way
}

// handleForwarders lists the open forwarders by port; an empty list when
// forward_ports is off.
func (r *Relay) handleForwarders(w http.ResponseWriter, _ *http.Request) {
	out := []apiForwarder{}
	if fw := r.fwd; fw != nil {
		now := monoclock.Now()
		fw.mu.Lock()
		for _, f := range fw.byPort {
			a := apiForwarder{Port: f.port, Agent: f.agent, Gateway: f.gateway, Target: f.target.String(),
				Since: f.since.UTC(), IdleMS: time.Duration(now - f.last.Load()).Milliseconds()}
			if p := f.peer.Load(); p != nil {
				a.From = p.String()
			}
			out = append(out, a)
		}
		fw.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b apiForwarder) int { return cmp.Compare(a.Port, b.Port) })
	adminapi.WriteJSON(w, http.StatusOK, map[string]any{"forwarders": out})
}
