package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
)

// DialConfig configures Dial.
type DialConfig struct {
	// Credentials are the client's certificate, presented to the server,
	// and the CA the server must chain to. Required.
	Credentials *Credentials
	// ServerName is the TLS name the server's certificate must carry;
	// default: the host part of the address. Unused with ExpectIdentity.
	ServerName string
	// ExpectIdentity, when set, is the ztgate identity (Identity.String(),
	// e.g. "ops/gateway/gw1") the server's certificate must carry instead
	// of a name: for a gateway reached by IP on the direct path. The chain
	// is verified against the CA all the same.
	ExpectIdentity string
	// ServerRoles, when set, are the roles the server's identity may have
	// (a gateway dials only a relay; an agent a relay or a gateway): a
	// server whose certificate chains to the CA and carries the name, but
	// is another role's or has no ztgate identity, is refused as
	// wrong_role. Insecure credentials without a CA check nothing.
	ServerRoles []string
	// ALPN lists the protocols offered, preferred first; default {ALPNV2}.
	ALPN []string
	// Hello is sent first on a ztna-v2 session (its Type is filled in).
	Hello Hello
	// Registerer, if set, receives the ztgate_tunnel_* metrics; repeated
	// dials with the same Registerer share them.
	Registerer prometheus.Registerer
}

// Dial connects to a tunnel server at addr (host:port) from a new UDP
// socket. On ztna-v2 it opens the control stream, sends cfg.Hello and
// waits for the welcome (Session.Welcome); a server that refuses us makes
// it return a *RefusedError. The session owns its socket.
func Dial(ctx context.Context, addr string, cfg DialConfig, log *slog.Logger) (*Session, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Credentials == nil {
		return nil, errors.New("tunnel: dial: no credentials")
	}
	alpn := cfg.ALPN
	if len(alpn) == 0 {
		alpn = []string{ALPNV2}
	}
	serverName := cfg.ServerName
	if serverName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("tunnel: dial %s: %w", addr, err)
		}
		serverName = host
	}
	if cfg.ExpectIdentity != "" && net.ParseIP(serverName) != nil {
		serverName = "" // no SNI for an address: the identity is what counts
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	// One set of credentials for the whole handshake and what follows
	// from it: a reload meanwhile (ReloadFiles) applies to the next dial.
	st := cfg.Credentials.active.Load()
	conn, err := dialQUIC(ctx, addr, cfg.Credentials.clientConfig(st, serverName, cfg.ExpectIdentity, cfg.ServerRoles, alpn), quicConfig(false))
	if err != nil {
		result, reason, err := dialFailure(err)
		m.handshake(sideClient, result, reason)
		return nil, fmt.Errorf("tunnel: dial %s: %w", addr, err)
	}
	v, ok := VersionFromALPN(conn.ConnectionState().TLS.NegotiatedProtocol)
	if !ok {
		m.handshake(sideClient, resultFailed, "alpn")
		_ = conn.CloseWithError(closeRefused, "no protocol")
		return nil, fmt.Errorf("tunnel: dial %s: no common protocol", addr)
	}
	var peer Identity // none from a server that was not verified (insecure, no CA)
	if !cfg.Credentials.skipsServers(st) {
		peer = serverIdentity(conn)
	}
	s := newSession(conn, v, sideClient, peer, m, log.With("server", addr))
	if v == V2 {
		if reason, err := s.dialHello(ctx, cfg.Hello); err != nil {
			result := resultFailed
			if reason == reasonServerError {
				result = resultRefused
			}
			m.handshake(sideClient, result, reason)
			_ = s.Close("hello failed: " + reason)
			return nil, fmt.Errorf("tunnel: dial %s: %w", addr, err)
		}
	}
	// Rechecked from here on at each switch of the credentials and when the
	// server's certificate expires; judged here once more by the
	// credentials in use, which may have switched since the TLS handshake.
	chk := &serverCheck{creds: cfg.Credentials, name: serverName, identity: cfg.ExpectIdentity, roles: slices.Clone(cfg.ServerRoles), own: st.own}
	switch ae, changed := s.watchServer(chk); {
	case ae != nil:
		m.handshake(sideClient, resultRefused, ae.Reason)
		s.log.Warn("tunnel server refused", "reason", ae.Reason, "err", ae.Err)
		_ = s.closeWith(closeRefused, ae.Reason+": the client's credentials in use now refuse the server's certificate", "tunnel session refused")
		return nil, fmt.Errorf("tunnel: dial %s: %w: %w", addr, errRefusedAfterHello, ae)
	case changed != nil:
		// Established, then found stale: the Redialer dials again at once.
		m.handshake(sideClient, resultOK, reasonNone)
		s.endOwnChanged(changed)
		return nil, fmt.Errorf("tunnel: dial %s: %w", addr, changed)
	}
	m.handshake(sideClient, resultOK, reasonNone)
	if cfg.Credentials.skipsServers(st) {
		// As the listener logs each client it takes unverified.
		s.log.Warn("INSECURE: tunnel server not verified (insecure_allow_unauthenticated without a CA)")
	}
	s.log.Debug("tunnel session established")
	return s, nil
}

// dialFailure classifies an error of the QUIC handshake for the
// handshake counter: the client's own refusal of the server (an
// *AuthError), the server's refusal of the client's certificate (a TLS
// alert from the server: a *RefusedError, as when it comes after the
// client's handshake, exchangeFailure), or a failed dial.
func dialFailure(err error) (result, reason string, _ error) {
	if ae, ok := errors.AsType[*AuthError](err); ok {
		return resultRefused, ae.Reason, err
	}
	if re := serverAlert(err); re != nil {
		return resultRefused, reasonServerError, re
	}
	return resultFailed, reasonDial, err
}

// serverAlert returns the server's refusal that err is when it is a TLS
// alert the server sent (a QUIC CRYPTO_ERROR from the remote end), nil
// otherwise. TLS 1.3 clients finish their handshake before the server
// judges their certificate, so the alert may come while the QUIC dial
// still waits or once it has returned.
func serverAlert(err error) *RefusedError {
	if te, ok := errors.AsType[*quic.TransportError](err); ok && te.Remote && te.ErrorCode >= 0x100 && te.ErrorCode < 0x200 {
		msg := te.Error()
		if certAlert(uint8(te.ErrorCode - 0x100)) {
			msg += certAlertHint
		}
		return &RefusedError{Code: "tls_alert", Message: msg}
	}
	return nil
}

// certAlert reports whether a TLS alert is about the certificate this side
// presented (RFC 8446 §6.2): Go's TLS server sends bad_certificate for one
// that does not verify (another CA, expired), certificate_required for
// none.
func certAlert(alert uint8) bool {
	switch alert {
	case 42, 43, 44, 45, 46, 48, 116: // bad, unsupported, revoked, expired, unknown certificate; unknown_ca; certificate_required
		return true
	}
	return false
}

// certAlertHint says what a certificate alert from the server means: the
// alert itself carries no reason, the server's log has it.
const certAlertHint = " (the server refused this side's certificate: is it signed by a CA in the server's ca file, and unexpired? " +
	"the server logs the reason as `tunnel client refused`; `ztgate check` on this side's file warns when its own ca does not verify it)"

// errRefusedAfterHello: the server passed the TLS handshake, but the
// credentials in use once the hello was done (ztna-v1: right after the
// handshake) refuse it: they switched meanwhile, or the server's
// certificate expired. The server has counted a session.
var errRefusedAfterHello = errors.New("the credentials in use after the hello refuse the server")

// serverCheck is what a dial verified its server against, to verify it
// again while the session lives (Credentials.checkServer).
type serverCheck struct {
	creds    *Credentials
	name     string   // the TLS name; "" for an address with identity
	identity string   // DialConfig.ExpectIdentity
	roles    []string // DialConfig.ServerRoles
	own      string   // the client's own identity the dial presented (credState.own)
}

// ErrOwnIdentityChanged: a switch of the credentials changed the identity
// this side presents (another tenant or name in its certificate)
// since a dialed session presented the old one. The session is ended, as
// it would go on with the old identity and its rights: a Redialer dials
// again at once, with the new certificate. Errors of it are
// *OwnIdentityChangedError.
var ErrOwnIdentityChanged = errors.New("own identity changed")

// OwnIdentityChangedError says which identity a dialed session presented
// and which the credentials present now ("none" for no ztgate identity).
// It matches ErrOwnIdentityChanged.
type OwnIdentityChangedError struct{ Old, New string }

func (e *OwnIdentityChangedError) Error() string {
	return "own identity changed: " + e.Old + " -> " + e.New
}

// Is makes errors.Is(err, ErrOwnIdentityChanged) true.
func (e *OwnIdentityChangedError) Is(target error) bool { return target == ErrOwnIdentityChanged }

// ownChangedNow returns the change when the credentials in use present
// another identity than the dial did; nil when they present the same (a
// renewal, a new CA file).
func (chk *serverCheck) ownChangedNow() *OwnIdentityChangedError {
	if now := chk.creds.active.Load().own; now != chk.own {
		return &OwnIdentityChangedError{Old: ownName(chk.own), New: ownName(now)}
	}
	return nil
}

// refusedNow judges the server's certificates in cs with the credentials
// in use, as a new dial would; nil when they accept them (or skip servers:
// insecure credentials without a CA).
func (chk *serverCheck) refusedNow(cs tls.ConnectionState) *AuthError {
	return chk.creds.checkServer(chk.creds.active.Load(), chk.name, chk.identity, chk.roles, cs)
}

// watchServer keeps a dialed session's server checked, as a listener keeps
// its clients (Listener.recheck, watchExpiry): at each switch of the
// credentials, and a second after the earliest NotAfter of the server's
// chain, recheckServer verifies it again with the credentials in use. The
// watch ends with the session. Before it returns, the credentials in use
// judge the server once more (a switch or the server's expiry since the
// TLS handshake): their refusal is returned, and the
// rechecks act only on a session it admitted, so that a refusal is
// counted once, as a refused handshake or a revoked session. Likewise,
// when the credentials in use present another own identity than the dial
// did, the change is returned (the server admitted the session, so it is
// counted as established) and the rechecks leave the session to Dial.
func (s *Session) watchServer(chk *serverCheck) (*AuthError, *OwnIdentityChangedError) {
	stop := chk.creds.onSwitch(func() { s.recheckServer(chk) })
	// Armed even when the dial skipped servers (insecure, no CA): a
	// reload may give the credentials a CA, and the recheck then judges
	// the server's expiry with it; with none, it finds nothing to refuse.
	var expiry *time.Timer
	if certs := s.conn.ConnectionState().TLS.PeerCertificates; len(certs) > 0 {
		expiry = afterExpiry(certs, chk.creds.now(), func() { s.recheckServer(chk) })
	}
	context.AfterFunc(s.conn.Context(), func() {
		stop()
		if expiry != nil {
			expiry.Stop()
		}
	})
	s.checkMu.Lock()
	defer s.checkMu.Unlock()
	if ae := chk.refusedNow(s.conn.ConnectionState().TLS); ae != nil {
		s.revoked.Store(true) // refused as a handshake: nothing left to recheck
		return ae, nil
	}
	if changed := chk.ownChangedNow(); changed != nil {
		s.revoked.Store(true) // ended by Dial: nothing left to recheck
		return nil, changed
	}
	s.admitted.Store(true)
	return nil, nil
}

// recheckServer closes a dialed session, counted and logged, when the
// credentials in use refuse its server's certificates as a new dial would
// (expired, of a CA no longer trusted, no longer of the name, identity or
// roles the dial wanted): a CA dropped from the CA file, or the end of the
// server's certificate, cuts the server off, not only the next dial. The
// server sees the reason ("revoked: <reason>"); a Redialer dials again,
// and is refused at the handshake for as long as the server stays refused.
//
// A switch that changes the identity this side presents (the tenant or
// name of its own certificate; not a renewal of the same identity)
// ends the session too, not counted as revoked: it would go on with the
// old identity and the rights the server gave it, while new dials present
// the new one. The server sees "own identity changed: <old> -> <new>"; a
// Redialer dials again at once (Redialer.Run).
func (s *Session) recheckServer(chk *serverCheck) {
	s.checkMu.Lock()
	if !s.admitted.Load() || s.revoked.Load() {
		s.checkMu.Unlock()
		return // watchServer judges it (again) before it is admitted
	}
	ae := chk.refusedNow(s.conn.ConnectionState().TLS)
	var changed *OwnIdentityChangedError
	if ae == nil {
		changed = chk.ownChangedNow()
	}
	if ae == nil && changed == nil {
		s.checkMu.Unlock()
		return
	}
	select {
	case <-s.Done():
		s.checkMu.Unlock()
		return
	default:
	}
	s.revoked.Store(true)
	s.checkMu.Unlock()
	if ae != nil {
		s.revoke(ae)
		return
	}
	s.endOwnChanged(changed)
}

// dialQUIC is quic.DialAddr with the tunnel's connection IDs (connIDLen;
// DialAddr's own transport issues none, and the server's packets to the
// client would then never fill a packet to the byte). The transport and
// its socket are closed when the connection ends.
func dialQUIC(ctx context.Context, addr string, tlsConf *tls.Config, conf *quic.Config) (*quic.Conn, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp, ConnectionIDLength: connIDLen}
	conn, err := tr.Dial(ctx, raddr, tlsConf, conf)
	if err != nil {
		_ = tr.Close()
		_ = udp.Close()
		return nil, noAnswer(err, raddr)
	}
	context.AfterFunc(conn.Context(), func() {
		_ = tr.Close()
		_ = udp.Close()
	})
	return conn, nil
}

// noAnswer words a handshake that timed out, as a server that is not
// running, or a port that a firewall drops, leaves it: quic-go's own
// "timeout: no recent network activity" names neither the address it
// dialled nor what to check. Other errors are returned as they are.
func noAnswer(err error, raddr *net.UDPAddr) error {
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	if !errors.As(err, &idle) && !errors.As(err, &hs) {
		return err
	}
	return fmt.Errorf("no answer from %s within %v: is the server running there, and UDP port %d open to this host? (%w)",
		raddr, HandshakeTimeout, raddr.Port, err)
}
