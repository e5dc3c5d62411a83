package tunneltest

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/quic-go/quic-go"
)

// DialWithoutCertificate makes a QUIC handshake to addr (on loopback)
// offering alpn and presenting no client certificate, as a peer a ztgate
// server must refuse. It verifies nothing of the server. It returns why
// the connection failed or was closed within settle after the handshake,
// or nil when the server kept it (the connection is then closed).
func DialWithoutCertificate(ctx context.Context, addr string, settle time.Duration, alpn ...string) error {
	conn, err := quic.DialAddr(ctx, addr, &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		NextProtos:         alpn,
	}, &quic.Config{EnableDatagrams: true, HandshakeIdleTimeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("tunneltest: dial %s: %w", addr, err)
	}
	// In TLS 1.3 the client finishes first: the server's verdict on the
	// (missing) certificate arrives as a close after the handshake.
	select {
	case <-conn.Context().Done():
		return fmt.Errorf("tunneltest: closed by %s: %w", addr, context.Cause(conn.Context()))
	case <-time.After(settle):
		conn.CloseWithError(0, "")
		return nil
	case <-ctx.Done():
		conn.CloseWithError(0, "")
		return ctx.Err()
	}
}
