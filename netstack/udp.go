package netstack

import (
	"net"
	"net/netip"
	"os"
	"sync"
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
	ns       *Stack
}

func (ns *Stack) forwardUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	req := UDPRequest{
		Src: netip.AddrPortFrom(fromAddr(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(fromAddr(id.LocalAddress), id.LocalPort),
		r:   r,
		ns:  ns,
	}
	if ns.isLocal(req.Dst.Addr()) {
		return false // no listener on that local port: port unreachable
	}
	return ns.cfg.Handler.HandleUDP(&req)
}

// Accept creates the flow's endpoint in the stack: the first datagram and
// every later one from the same client address and port to the same VIP
// port can be read from the returned connection, and what is written to it
// goes to the client from the VIP:port. Later datagrams take the link's
// fast path (udpfast.go) until the connection is closed.
func (r *UDPRequest) Accept() (*UDPConn, error) {
	var wq waiter.Queue
	ep, err := r.r.CreateEndpoint(&wq)
	if err != nil {
		return nil, tcpipError("udp accept "+r.Src.String(), err)
	}
	c := &UDPConn{
		conn: conn{gonet.NewUDPConn(&wq, ep)},
		ep:   ep,
		wq:   &wq,
		ns:   r.ns,
		key:  udpFlowKey{src: r.Src, dst: r.Dst},
		done: make(chan struct{}),
	}
	r.ns.udp.add(c.key, c)
	return c, nil
}

// UDPConn is the client side of a UDP flow: reads return the client's
// datagrams, writes go to the client from the VIP:port.
type UDPConn struct {
	conn
	ep tcpip.Endpoint
	wq *waiter.Queue
	rw tcpip.SliceWriter // TryRead's, kept so that a read does not allocate one

	ns   *Stack
	key  udpFlowKey
	fast udpQueue // datagrams from the link's fast path

	closeOnce sync.Once
	done      chan struct{} // closed by Close

	deadlineMu sync.Mutex
	deadline   time.Time // Read's
}

var _ net.Conn = (*UDPConn)(nil)

// WaitReadable blocks until a Read would not block (a datagram or an error
// is pending), until done is closed (it then returns net.ErrClosed), or
// until the timer channel fires (os.ErrDeadlineExceeded). The splice waits
// here without holding a buffer, so an idle flow pins no copy buffer.
func (c *UDPConn) WaitReadable(done <-chan struct{}, timer <-chan time.Time) error {
	if c.readable() {
		return nil
	}
	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	c.wq.EventRegister(&entry)
	defer c.wq.EventUnregister(&entry)
	if c.readable() {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-done:
		return net.ErrClosed
	case <-c.done:
		return net.ErrClosed
	case <-timer:
		return os.ErrDeadlineExceeded
	}
}

func (c *UDPConn) readable() bool {
	return c.ep.Readiness(waiter.ReadableEvents) != 0 || c.fast.ready()
}

// TryRead reads one datagram from the client without waiting, or returns
// ErrWouldBlock when none is queued. Datagrams gVisor queued come first:
// the flow's first one always, and those that took the slow path since.
func (c *UDPConn) TryRead(b []byte) (int, error) {
	n, err := tryRead(c.ep, &c.rw, b)
	if err == ErrWouldBlock {
		if n, ok := c.fast.pop(b); ok {
			return n, nil
		}
	}
	return n, err
}

// Read reads one datagram from the client, waiting until one arrives, the
// read deadline passes or the connection is closed.
func (c *UDPConn) Read(b []byte) (int, error) {
	for {
		select {
		case <-c.done:
			return 0, net.ErrClosed
		default:
		}
		n, err := c.TryRead(b)
		if err != ErrWouldBlock {
			return n, err
		}
		c.deadlineMu.Lock()
		d := c.deadline
		c.deadlineMu.Unlock()
		var timer *time.Timer
		var expired <-chan time.Time
		if !d.IsZero() {
			wait := time.Until(d)
			if wait <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(wait)
			expired = timer.C
		}
		err = c.WaitReadable(nil, expired)
		if timer != nil {
			timer.Stop()
		}
		if err != nil {
			return 0, err
		}
	}
}

// SetReadDeadline implements net.Conn: it bounds Read (gVisor's own read
// deadline is never consulted, Read does not go through it).
func (c *UDPConn) SetReadDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	c.deadline = t
	c.deadlineMu.Unlock()
	return nil
}

// SetDeadline implements net.Conn.
func (c *UDPConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.conn.SetWriteDeadline(t)
}

// Close ends the flow's fast path, then its endpoint.
func (c *UDPConn) Close() error {
	c.closeOnce.Do(func() {
		c.ns.udp.remove(c.key, c)
		c.fast.close()
		close(c.done)
	})
	return c.conn.Close()
}
