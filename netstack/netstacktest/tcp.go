package netstacktest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TCPConn is a client's TCP connection: a net.Conn with half-close
// (CloseRead, CloseWrite) and SetLinger, like a *net.TCPConn, so that a
// test can reset a connection as a client that aborts would.
type TCPConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
}

var _ net.Conn = (*TCPConn)(nil)

// SetLinger sets SO_LINGER as (*net.TCPConn).SetLinger does: with sec 0,
// Close sends a RST instead of a FIN and drops what was not sent; a
// negative sec restores the default.
func (c *TCPConn) SetLinger(sec int) error {
	c.ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: sec >= 0, Timeout: time.Duration(max(sec, 0)) * time.Second})
	return nil
}

// dialTCP is gonet.DialTCPWithBind keeping the endpoint, for SetLinger.
func dialTCP(ctx context.Context, s *stack.Stack, local, remote tcpip.FullAddress, network tcpip.NetworkProtocolNumber) (*TCPConn, error) {
	var wq waiter.Queue
	ep, terr := s.NewEndpoint(tcp.ProtocolNumber, network, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if terr := ep.Bind(local); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("bind %v: %s", local.Addr, terr)
	}
	terr = ep.Connect(remote)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "connect", Net: "tcp", Addr: &net.TCPAddr{IP: net.IP(remote.Addr.AsSlice()), Port: int(remote.Port)}, Err: errors.New(terr.String())}
	}
	return &TCPConn{TCPConn: gonet.NewTCPConn(&wq, ep), ep: ep}, nil
}
