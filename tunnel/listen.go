package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"time"

	"github.com/ztgate/ztgate/internal/listenaddr"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"github.com/ztgate/ztgate/internal/udpseg"
)

// maxPendingSetups bounds the connections between the QUIC handshake and
// their hello (or Accept): more are refused as busy, so that clients that
// never send a hello cannot pile up.
const maxPendingSetups = 256

// ListenConfig configures a Listener.
type ListenConfig struct {
	// Credentials are the server's certificate and the CA clients must
	// chain to (see Credentials.ServerConfig); Insecure credentials accept
	// any client, which the listener logs at start and per connection.
	// Required.
	Credentials *Credentials
	// ALPN lists the protocols offered, preferred first; default
	// {ALPNV2, ALPNV1}.
	ALPN []string
	// Registerer, if set, receives the ztgate_tunnel_* metrics: handshakes
	// by result and reason, sessions, datagrams in and out, drops.
	Registerer prometheus.Registerer
	// MaxHandshakes bounds the QUIC handshakes in progress (default
	// DefaultMaxHandshakes); see guard.go.
	MaxHandshakes int
	// ResetKeyFile, when set, keeps the key of the listener's stateless
	// resets (reset.go): read from it, or made and written there at the
	// first start, so that the key outlives a rotation of the certificate's
	// key. Empty, or a file that cannot be read nor written (logged): the
	// key is derived from the certificate's private key.
	ResetKeyFile string
}

// Listener accepts tunnel sessions on a UDP socket. Close ends every
// session it accepted.
type Listener struct {
	log   *slog.Logger
	creds *Credentials
	m     *metrics
	udp   *net.UDPConn
	guard *guard // bounds handshakes, counts dropped datagrams
	tr    *quic.Transport
	ln    *quic.Listener

	ready  chan *Session      // handshaken sessions for Accept
	setups chan struct{}      // semaphore of connections being set up
	ctx    context.Context    // cancelled by Close
	cancel context.CancelFunc // cancels ctx
	wg     sync.WaitGroup     // accept loop, setups, QAD senders

	mu       sync.Mutex
	sessions map[*Session]struct{} // guarded by mu: live accepted sessions
	closed   bool                  // guarded by mu

	stopWatch func() // ends the rechecks at each switch of the credentials
	closeOnce sync.Once
}

// Listen opens a UDP socket on addr (host:port) and accepts QUIC
// connections on it with mutual TLS (see ListenConfig.Credentials).
func Listen(addr string, cfg ListenConfig, log *slog.Logger) (*Listener, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Credentials == nil {
		return nil, errors.New("tunnel: listen: no credentials")
	}
	alpn := cfg.ALPN
	if len(alpn) == 0 {
		alpn = []string{ALPNV2, ALPNV1}
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	network := listenaddr.Network("udp", addr) // 0.0.0.0 is IPv4 only
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen %s: %w", addr, err)
	}
	g, err := newGuard(cfg.MaxHandshakes, cfg.Registerer)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP(network, ua)
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen %s: %w", addr, err)
	}
	l := &Listener{
		log:      log.With("listen", udp.LocalAddr().String()),
		creds:    cfg.Credentials,
		m:        m,
		udp:      udp,
		guard:    g,
		tr:       g.transport(udp, resetKey(cfg.ResetKeyFile, cfg.Credentials, log)),
		ready:    make(chan *Session),
		setups:   make(chan struct{}, maxPendingSetups),
		sessions: make(map[*Session]struct{}),
	}
	l.ln, err = l.tr.Listen(l.serverTLS(alpn), g.config(quicConfig(true)))
	if err != nil {
		_ = l.tr.Close()
		_ = udp.Close()
		return nil, fmt.Errorf("tunnel: listen %s: %w", addr, err)
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.stopWatch = l.creds.onSwitch(l.recheck)
	if l.creds.Insecure() {
		l.log.Warn("INSECURE: tunnel listener accepts clients without a verified certificate (development only)")
	}
	l.log.Info("tunnel listening", "alpn", alpn, "gro", udpseg.GROEnabled(udp))
	l.wg.Add(2)
	go l.acceptLoop()
	go func() {
		defer l.wg.Done()
		l.guard.countNonQUIC(l.ctx, l.tr)
	}()
	return l, nil
}

// serverTLS wraps the credentials' server configuration so that every
// refused client is counted and logged here: QUIC servers never see a
// failed handshake.
func (l *Listener) serverTLS(alpn []string) *tls.Config {
	base := l.creds.ServerConfig(alpn...)
	perClient := base.GetConfigForClient
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := perClient(hello)
		if err != nil || c == nil {
			return c, err
		}
		remote := remoteAddr(hello)
		verify := c.VerifyConnection
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			if ae, ok := errors.AsType[*AuthError](err); ok {
				l.m.handshake(sideServer, resultRefused, ae.Reason)
				l.log.Warn("tunnel client refused", "remote", fmt.Sprint(remote), "reason", ae.Reason, "err", ae.Err)
			}
			return err
		}
		return c, nil
	}
	return base
}

// Addr returns the UDP address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.udp.LocalAddr() }

// Accept returns the next handshaken session: for ztna-v2 with its control
// stream open and the client's hello read (Session.Hello), for the server
// to answer with SendWelcome or Refuse. It fails when ctx is done or the
// listener is closed.
func (l *Listener) Accept(ctx context.Context) (*Session, error) {
	select {
	case s := <-l.ready:
		return s, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-l.ctx.Done():
		return nil, fmt.Errorf("tunnel: accept: %w", net.ErrClosed)
	}
}

// Close stops accepting, closes every session the listener accepted (their
// peers learn it at once) and the socket, and waits for the listener's
// goroutines.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.stopWatch()
		l.cancel()
		err = l.ln.Close()
		l.mu.Lock()
		l.closed = true
		live := make([]*Session, 0, len(l.sessions))
		for s := range l.sessions {
			live = append(live, s)
		}
		l.mu.Unlock()
		for _, s := range live {
			_ = s.Close("server shutting down")
		}
		err = errors.Join(err, l.tr.Close(), l.udp.Close())
		l.wg.Wait()
	})
	return err
}

// acceptLoop takes QUIC connections and sets each up in its own goroutine.
func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		conn, err := l.ln.Accept(l.ctx)
		if err != nil {
			return
		}
		select {
		case l.setups <- struct{}{}:
		default:
			l.m.handshake(sideServer, resultFailed, "busy")
			_ = conn.CloseWithError(closeBusy, "busy")
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() { <-l.setups }()
			l.setup(conn)
		}()
	}
}

// setup turns a connection into a session: identity, version, for v2 the
// hello; then it hands the session to Accept.
func (l *Listener) setup(conn *quic.Conn) {
	handshakeDone(conn)
	state := conn.ConnectionState()
	v, ok := VersionFromALPN(state.TLS.NegotiatedProtocol)
	if !ok {
		l.m.handshake(sideServer, resultFailed, "alpn")
		_ = conn.CloseWithError(closeRefused, "no protocol")
		return
	}
	peer := l.creds.clientIdentity(state.TLS.PeerCertificates)
	s := newSession(conn, v, sideServer, peer, l.m, l.log)
	if !l.track(s) {
		_ = s.Close("server shutting down")
		return
	}
	if l.creds.Insecure() {
		s.log.Warn("INSECURE: tunnel client accepted without verification", "verified_identity", peer.Tenant != "")
	}
	l.wg.Add(1)
	go l.announceAddress(s)
	if v == V2 {
		if reason, err := s.acceptHello(l.ctx); err != nil {
			l.m.handshake(sideServer, resultRefused, reason)
			s.log.Warn("tunnel client refused", "reason", reason, "err", err)
			return
		}
	}
	// Rechecked from here on at each switch of the credentials; one that
	// came since the TLS handshake judged the client is applied here.
	s.admitted.Store(true)
	if ae := l.refusedNow(s); ae != nil {
		if s.revoked.CompareAndSwap(false, true) {
			l.m.handshake(sideServer, resultRefused, ae.Reason)
			s.log.Warn("tunnel client refused", "reason", ae.Reason, "err", ae.Err)
			_ = s.Refuse(ae.Reason, "the server's credentials, reloaded during the handshake, refuse the certificate")
		}
		return
	}
	l.m.handshake(sideServer, resultOK, reasonNone)
	select {
	case l.ready <- s:
	case <-l.ctx.Done():
		_ = s.Close("server shutting down")
	case <-s.Done():
	}
}

// track adds a session to the live set until it ends; false once the
// listener is closed.
func (l *Listener) track(s *Session) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.sessions[s] = struct{}{}
	expiry := l.watchExpiry(s)
	context.AfterFunc(s.conn.Context(), func() {
		if expiry != nil {
			expiry.Stop()
		}
		l.mu.Lock()
		delete(l.sessions, s)
		l.mu.Unlock()
	})
	return true
}

// watchExpiry arms a recheck of s for when the first certificate its
// client presented expires: a session lives as long as its peer keeps it,
// and must not outlive the certificate that admitted it. nil when there
// is nothing to watch (insecure credentials, no certificate).
func (l *Listener) watchExpiry(s *Session) *time.Timer {
	certs := s.conn.ConnectionState().TLS.PeerCertificates
	if l.creds.Insecure() || len(certs) == 0 {
		return nil
	}
	return afterExpiry(certs, l.creds.now(), func() { l.recheckSession(s) })
}

// afterExpiry calls f in its own goroutine a second after the earliest
// NotAfter of certs (at once if past), now being the credentials' clock:
// x509 takes the whole second of NotAfter as valid. certs is not empty.
func afterExpiry(certs []*x509.Certificate, now time.Time, f func()) *time.Timer {
	end := certs[0].NotAfter
	for _, c := range certs[1:] {
		if c.NotAfter.Before(end) {
			end = c.NotAfter
		}
	}
	// (Sub saturates for a NotAfter centuries away.)
	d := end.Sub(now)
	if d < time.Duration(math.MaxInt64)-time.Second {
		d += time.Second
	}
	return time.AfterFunc(d, f)
}

// refusedNow judges s's client with the credentials in use, as a new
// handshake would; nil when they accept it (or are insecure).
func (l *Listener) refusedNow(s *Session) *AuthError {
	if l.creds.Insecure() {
		return nil
	}
	return l.creds.verifyClient(l.creds.active.Load(), s.conn.ConnectionState().TLS)
}

// recheck verifies the client of every live session again with the
// credentials in use (after a switch: a CA dropped, a new one), and
// closes those they refuse.
func (l *Listener) recheck() {
	l.mu.Lock()
	live := make([]*Session, 0, len(l.sessions))
	for s := range l.sessions {
		live = append(live, s)
	}
	l.mu.Unlock()
	for _, s := range live {
		l.recheckSession(s)
	}
}

// recheckSession closes s, counted and logged, when the credentials in use
// refuse its client's certificates as a new handshake would (expired, of
// a CA no longer trusted): rotating the CA, or a certificate's end, cuts
// a peer off, not only its next handshake. The peer sees the reason
// ("revoked: <reason>") and its redial is refused at the handshake.
func (l *Listener) recheckSession(s *Session) {
	if !s.admitted.Load() {
		return // setup checks it once more before Accept
	}
	ae := l.refusedNow(s)
	if ae == nil {
		return
	}
	select {
	case <-s.Done():
		return
	default:
	}
	if !s.revoked.CompareAndSwap(false, true) {
		return
	}
	s.revoke(ae)
}
