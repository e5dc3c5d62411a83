package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"

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
		if ae, ok := errors.AsType[*AuthError](err); ok {
			m.handshake(sideClient, resultRefused, ae.Reason)
		} else {
			m.handshake(sideClient, resultFailed, reasonDial)
		}
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
	m.handshake(sideClient, resultOK, reasonNone)
	s.log.Debug("tunnel session established")
	return s, nil
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
		return nil, err
	}
	context.AfterFunc(conn.Context(), func() {
		_ = tr.Close()
		_ = udp.Close()
	})
	return conn, nil
}
