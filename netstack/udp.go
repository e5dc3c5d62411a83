package netstack

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
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
		conn:       conn{gonet.NewUDPConn(&wq, ep)},
		fastSocket: newFastSocket(ep, &wq),
		ns:         r.ns,
		key:        udpFlowKey{src: r.Src, dst: r.Dst},
	}
	// gVisor bound and connected the endpoint through the NIC the first
	// datagram came in on: every datagram it sends to the client leaves
	// through that link, as the fast path's must.
	if info, ok := ep.Info().(*stack.TransportEndpointInfo); ok {
		c.link = r.ns.linkOf(info.RegisterNICID)
	}
	r.ns.udp.add(c.key, c)
	return c, nil
}

// UDPConn is the client side of a UDP flow: reads return the client's
// datagrams, writes go to the client from the VIP:port.
type UDPConn struct {
	conn
	fastSocket
	rw tcpip.SliceWriter // TryRead's, kept so that a read does not allocate one

	ns   *Stack
	key  udpFlowKey
	link *Link // the link the flow came in on, which gVisor sends through; nil: none left
	// queued is what the fast path's datagrams still waiting on the link
	// hold, counted as gVisor counts its send buffer.
	queued atomic.Int64
	// deadlined: a write deadline is set; gVisor keeps it and checks it,
	// so writes go through gVisor.
	deadlined atomic.Bool
}

var _ net.Conn = (*UDPConn)(nil)

// WaitReadable blocks until a Read would not block (a datagram or an error
// is pending), until done is closed (it then returns net.ErrClosed), or
// until the timer channel fires (os.ErrDeadlineExceeded). The splice waits
// here without holding a buffer, so an idle flow pins no copy buffer.
func (c *UDPConn) WaitReadable(done <-chan struct{}, timer <-chan time.Time) error {
	return c.waitReadable(done, timer)
}

// TryRead reads one datagram from the client without waiting, or returns
// ErrWouldBlock when none is queued. Datagrams gVisor queued come first:
// the flow's first one always, and those that took the slow path since.
// The client's ICMP port unreachable about the flow, which gVisor keeps
// until the next read or write, is returned once as syscall.ECONNREFUSED.
func (c *UDPConn) TryRead(b []byte) (int, error) {
	n, err := tryRead(c.ep, &c.rw, b)
	if err == ErrWouldBlock {
		if n, _, ok := c.fast.pop(b); ok {
			return n, nil
		}
	}
	return n, err
}

// Read reads one datagram from the client, waiting until one arrives, the
// read deadline passes or the connection is closed.
func (c *UDPConn) Read(b []byte) (int, error) {
	for {
		if c.closed() {
			return 0, net.ErrClosed
		}
		n, err := c.TryRead(b)
		if err != ErrWouldBlock {
			return n, err
		}
		if err := c.waitRead(); err != nil {
			return 0, err
		}
	}
}

// SetReadDeadline implements net.Conn: it bounds Read (gVisor's own read
// deadline is never consulted, Read does not go through it).
func (c *UDPConn) SetReadDeadline(t time.Time) error {
	c.setReadDeadline(t)
	return nil
}

// SetDeadline implements net.Conn.
func (c *UDPConn) SetDeadline(t time.Time) error {
	c.setReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetWriteDeadline implements net.Conn: while a deadline is set, writes
// go through gVisor, which fails them once it has passed.
func (c *UDPConn) SetWriteDeadline(t time.Time) error {
	c.deadlined.Store(!t.IsZero())
	return c.conn.SetWriteDeadline(t)
}

// Write sends b to the client as one datagram: built here when it can be
// (writeFast), else by gVisor. With the client's ICMP port unreachable
// about the flow pending, gVisor's write returns it, as
// syscall.ECONNREFUSED, and sends nothing.
func (c *UDPConn) Write(b []byte) (int, error) {
	if c.writeFast(b) {
		return len(b), nil
	}
	n, err := c.conn.Write(b)
	if op := (*net.OpError)(nil); errors.As(err, &op) && op.Err != nil && op.Err.Error() == errRefusedText {
		op.Err = syscall.ECONNREFUSED // gonet has it as text
	}
	return n, err
}

// errRefusedText is how gonet words gVisor's connection refused.
var errRefusedText = (&tcpip.ErrConnectionRefused{}).String()

// Close ends the flow's fast path, then its endpoint.
func (c *UDPConn) Close() error {
	c.closeFast(func() { c.ns.udp.remove(c.key, c) })
	return c.conn.Close()
}

// fastSocket is what a flow's UDPConn and a UDPListener share: a gVisor
// endpoint and the queue the links' fast path fills (udpfast.go), a read
// deadline that their reads check themselves, and the channel Close
// closes.
type fastSocket struct {
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	fast udpQueue

	closeOnce sync.Once
	done      chan struct{} // closed by closeFast

	deadlineMu sync.Mutex
	deadline   time.Time
}

func newFastSocket(ep tcpip.Endpoint, wq *waiter.Queue) fastSocket {
	return fastSocket{ep: ep, wq: wq, done: make(chan struct{})}
}

// readable reports whether a read would find a datagram or an error.
func (s *fastSocket) readable() bool {
	return s.ep.Readiness(waiter.ReadableEvents) != 0 || s.fast.ready()
}

// waitReadable blocks until a read would not block, until done or the
// socket is closed (net.ErrClosed), or until timer fires
// (os.ErrDeadlineExceeded).
func (s *fastSocket) waitReadable(done <-chan struct{}, timer <-chan time.Time) error {
	if s.readable() {
		return nil
	}
	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	s.wq.EventRegister(&entry)
	defer s.wq.EventUnregister(&entry)
	if s.readable() {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-done:
		return net.ErrClosed
	case <-s.done:
		return net.ErrClosed
	case <-timer:
		return os.ErrDeadlineExceeded
	}
}

// waitRead waits as a read does: until a read would not block, the read
// deadline passes or the socket is closed.
func (s *fastSocket) waitRead() error {
	s.deadlineMu.Lock()
	d := s.deadline
	s.deadlineMu.Unlock()
	var expired <-chan time.Time
	if !d.IsZero() {
		wait := time.Until(d)
		if wait <= 0 {
			return os.ErrDeadlineExceeded
		}
		timer := time.NewTimer(wait)
		defer timer.Stop()
		expired = timer.C
	}
	return s.waitReadable(nil, expired)
}

func (s *fastSocket) setReadDeadline(t time.Time) {
	s.deadlineMu.Lock()
	s.deadline = t
	s.deadlineMu.Unlock()
}

// closed reports whether closeFast has run.
func (s *fastSocket) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// closeFast, once, takes the socket off the fast path (unlist), drops what
// it queued and wakes its readers.
func (s *fastSocket) closeFast(unlist func()) {
	s.closeOnce.Do(func() {
		unlist()
		s.fast.close()
		close(s.done)
	})
}
