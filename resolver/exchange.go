package resolver

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"
)

// maxStrayReplies bounds the datagrams read while waiting for the answer to
// one query (others are late answers or spoofing attempts).
const maxStrayReplies = 16

// errBadReply is returned when no datagram answered the question asked.
var errBadReply = errors.New("no reply to the question asked")

// exchange sends query to server over UDP and returns, in buf, the first
// answer to it (same ID and question, QR set) within timeout. With tcpOnTC a
// truncated answer is asked again over TCP. buf must hold maxMsgSize octets.
func exchange(ctx context.Context, server netip.AddrPort, query, buf []byte, timeout time.Duration, tcpOnTC bool) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply, err := roundTrip(ctx, "udp", server, query, buf)
	if err == nil && tcpOnTC && be16(reply[2:])&flagTC != 0 {
		reply, err = roundTrip(ctx, "tcp", server, query, buf)
	}
	return reply, err
}

// roundTrip sends query and reads its answer over one new connection, whose
// deadline is ctx's and which ctx's end unblocks.
func roundTrip(ctx context.Context, network string, server netip.AddrPort, query, buf []byte) ([]byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, server.String())
	if err != nil {
		return nil, fmt.Errorf("dial %s %v: %w", network, server, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl) // a conn just dialled accepts a deadline
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	var reply []byte
	if network == "tcp" {
		reply, err = tcpRoundTrip(conn, query, buf)
	} else {
		reply, err = udpRoundTrip(conn, query, buf)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %v: %w", network, server, err)
	}
	return reply, nil
}

func udpRoundTrip(conn net.Conn, query, buf []byte) ([]byte, error) {
	if _, err := conn.Write(query); err != nil {
		return nil, err
	}
	for range maxStrayReplies {
		n, err := conn.Read(buf)
		if err != nil {
			return nil, err
		}
		if isReplyTo(query, buf[:n]) {
			return buf[:n], nil
		}
	}
	return nil, errBadReply
}

func tcpRoundTrip(conn net.Conn, query, buf []byte) ([]byte, error) {
	frame := make([]byte, 2, 2+len(query))
	binary.BigEndian.PutUint16(frame, uint16(len(query)))
	if _, err := conn.Write(append(frame, query...)); err != nil {
		return nil, err
	}
	for range maxStrayReplies {
		if _, err := io.ReadFull(conn, buf[:2]); err != nil {
			return nil, err
		}
		n := int(be16(buf))
		if _, err := io.ReadFull(conn, buf[:n]); err != nil {
			return nil, err
		}
		if isReplyTo(query, buf[:n]) {
			return buf[:n], nil
		}
	}
	return nil, errBadReply
}

// isReplyTo reports whether reply answers query: same ID, QR set, and the
// same question (the name compared without regard to case).
func isReplyTo(query, reply []byte) bool {
	qend, ok := questionEnd(query)
	if !ok || len(reply) < qend || reply[0] != query[0] || reply[1] != query[1] ||
		be16(reply[2:])&flagQR == 0 || be16(reply[4:]) != 1 {
		return false
	}
	return equalFold(reply[headerLen:qend-4], query[headerLen:qend-4]) &&
		string(reply[qend-4:qend]) == string(query[qend-4:qend])
}

// errorReason classifies an exchange error for the forward-error metric.
func errorReason(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return fwdTimeout
	case errors.Is(err, errBadReply):
		return fwdBadReply
	case errors.Is(err, errUpstreamRcode):
		return fwdRcode
	}
	return fwdNetwork
}

// randomID returns an unpredictable message ID (RFC 5452 §9.2).
func randomID() uint16 {
	var b [2]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24)
	return be16(b[:])
}
