package tunnel

import (
	"time"

	"github.com/quic-go/quic-go"
)

// Timers of every tunnel connection (docs/protocol.md, "Connections").
const (
	// KeepAlivePeriod is how often an idle connection sends a PING, which
	// keeps NAT bindings and the peer's idle timer alive.
	KeepAlivePeriod = 10 * time.Second
	// IdleTimeout closes a connection that heard nothing for this long.
	IdleTimeout = 30 * time.Second
	// HandshakeTimeout bounds the QUIC handshake, and separately the
	// hello/welcome exchange on the control stream.
	HandshakeTimeout = 10 * time.Second
	// ControlWriteTimeout bounds the write of one control message.
	ControlWriteTimeout = 5 * time.Second
)

// Flow-control windows of the control stream: control messages, never bulk
// data. A message larger than the window (a directory of thousands of
// services) passes as the reader takes it.
const (
	streamWindow     = 256 << 10
	maxStreamWindow  = 1 << 20
	connWindow       = 2 * streamWindow
	maxConnWindow    = 2 * maxStreamWindow
	maxControlStream = 1
)

// quicConfig returns the QUIC settings of one side. Only the client opens a
// stream (the control stream), so the server admits one bidirectional
// stream and the client none; nobody needs unidirectional streams.
func quicConfig(server bool) *quic.Config {
	c := &quic.Config{
		EnableDatagrams: true,
		// Packets stay at quic-go's initial size: the TUN's MTU is sized
		// from the largest DATAGRAM once per session, and a DATAGRAM of
		// that size fills a packet to the byte only while the packet size
		// stays what it was (padding.go).
		DisablePathMTUDiscovery:        true,
		KeepAlivePeriod:                KeepAlivePeriod,
		MaxIdleTimeout:                 IdleTimeout,
		HandshakeIdleTimeout:           HandshakeTimeout,
		InitialStreamReceiveWindow:     streamWindow,
		MaxStreamReceiveWindow:         maxStreamWindow,
		InitialConnectionReceiveWindow: connWindow,
		MaxConnectionReceiveWindow:     maxConnWindow,
		MaxIncomingStreams:             -1,
		MaxIncomingUniStreams:          -1,
	}
	if server {
		c.MaxIncomingStreams = maxControlStream
	}
	return c
}
