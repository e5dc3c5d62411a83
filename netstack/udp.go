package netstack

import (
	"net"
	"net/netip"
	"os"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// UDPRequest is the first datagram of a new UDP flow. It is valid only
// during Handler.HandleUDP.
type UDPRequest struct {
	Src, Dst netip.AddrPort // client and VIP:port
	r        *udp.ForwarderRequest
}

func (ns *Stack) forwardUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	req := UDPRequest{
		Src: netip.AddrPortFrom(fromAddr(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(fromAddr(id.LocalAddress), id.LocalPort),
		r:   r,
	}
	if ns.isLocal(req.Dst.Addr()) {
		return false // no listener on that local port: port unreachable
	}
	return ns.cfg.Handler.HandleUDP(&req)
}

// Accept creates the flow's endpoint in the stack: the first datagram and
// every later one from the same client address and port to the same VIP
// port can be read from the returned connection, and what is written to it
// goes to the client from the VIP:port.
func (r *UDPRequest) Accept() (*UDPConn, error) {
	var wq waiter.Queue
	ep, err := r.r.CreateEndpoint(&wq)
	if err != nil {
		return nil, tcpipError("udp accept "+r.Src.String(), err)
	}
	return &UDPConn{conn: conn{gonet.NewUDPConn(&wq, ep)}, ep: ep, wq: &wq}, nil
}

// UDPConn is the client side of a UDP flow: reads return the client's
// datagrams, writes go to the client from the VIP:port.
type UDPConn struct {
	conn
	ep tcpip.Endpoint
	wq *waiter.Queue
	rw tcpip.SliceWriter // TryRead's, kept so that a read does not allocate one
}

var _ net.Conn = (*UDPConn)(nil)

// WaitReadable blocks until a Read would not block (a datagram or an error
// is pending), until done is closed (it then returns net.ErrClosed), or
// until the timer channel fires (os.ErrDeadlineExceeded). The splice waits
// here without holding a buffer, so an idle flow pins no copy buffer.
func (c *UDPConn) WaitReadable(done <-chan struct{}, timer <-chan time.Time) error {
	return waitReadable(c.ep, c.wq, done, timer)
}

// TryRead reads one datagram from the client without waiting, or returns
// ErrWouldBlock when none is queued.
func (c *UDPConn) TryRead(b []byte) (int, error) { return tryRead(c.ep, &c.rw, b) }

func waitReadable(ep tcpip.Endpoint, wq *waiter.Queue, done <-chan struct{}, timer <-chan time.Time) error {
	if ep.Readiness(waiter.ReadableEvents) != 0 {
		return nil
	}
	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if ep.Readiness(waiter.ReadableEvents) != 0 {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-done:
		return net.ErrClosed
	case <-timer:
		return os.ErrDeadlineExceeded
	}
}
