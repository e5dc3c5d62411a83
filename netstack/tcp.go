package netstack

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TCPRequest is a client's attempt to open a TCP connection (its SYN). The
// handshake is completed only by Accept, so a handler can dial the backend
// first and answer RST when it cannot.
type TCPRequest struct {
	Src, Dst netip.AddrPort // client and VIP:port

	once    sync.Once
	r       *tcp.ForwarderRequest
	timeout time.Duration // Config.HandshakeTimeout
}

// forwardTCP is gVisor's forwarder handler: it runs on a new goroutine for
// each SYN, which hands the request to a pooled one at once. The handler
// goes deep (the backend's dial, gVisor's handshake and output path); on a
// new goroutine's small stack that meant growing it by copies, for every
// connection.
func (ns *Stack) forwardTCP(r *tcp.ForwarderRequest) {
	ns.handlers.Go(func() { ns.handleTCP(r) })
}

// handleTCP hands a client's SYN to the Handler.
func (ns *Stack) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	req := &TCPRequest{
		Src:     netip.AddrPortFrom(fromAddr(id.RemoteAddress), id.RemotePort),
		Dst:     netip.AddrPortFrom(fromAddr(id.LocalAddress), id.LocalPort),
		r:       r,
		timeout: ns.cfg.HandshakeTimeout,
	}
	if ns.isLocal(req.Dst.Addr()) {
		// A local address without a listener on that port.
		req.Refuse()
		return
	}
	ns.cfg.Handler.HandleTCP(req)
}

// Accept completes the handshake and returns the client's connection.
func (r *TCPRequest) Accept() (*TCPConn, error) {
	var (
		c   *TCPConn
		err error
	)
	done := false
	r.once.Do(func() {
		done = true
		var wq waiter.Queue
		// CreateEndpoint waits for the handshake to end; waking it early
		// makes it give up on a client that has not completed it (it is
		// then reset).
		abort := time.AfterFunc(r.timeout, func() { wq.Notify(waiter.WritableEvents) })
		ep, terr := r.r.CreateEndpoint(&wq)
		abort.Stop()
		if terr != nil {
			r.r.Complete(true)
			err = tcpipError("accept "+r.Src.String(), terr)
			return
		}
		r.r.Complete(false)
		gc := gonet.NewTCPConn(&wq, ep)
		c = &TCPConn{conn: conn{gc}, c: gc, ep: ep, wq: &wq}
	})
	if !done {
		return nil, net.ErrClosed
	}
	return c, err
}

// Refuse answers the SYN with a RST.
func (r *TCPRequest) Refuse() { r.once.Do(func() { r.r.Complete(true) }) }

// Drop ignores the SYN (the client retries or times out).
func (r *TCPRequest) Drop() { r.once.Do(func() { r.r.Complete(false) }) }

// TCPConn is the client side of a TCP flow, terminated in the stack. It is a
// net.Conn with half-close.
type TCPConn struct {
	conn
	c  *gonet.TCPConn
	ep tcpip.Endpoint
	wq *waiter.Queue
	rw tcpip.SliceWriter // TryRead's, kept so that a read does not allocate one
	wr bytes.Reader      // TryWrite's, likewise
}

var _ net.Conn = (*TCPConn)(nil)

// CloseRead shuts down the reading side.
func (c *TCPConn) CloseRead() error { return c.c.CloseRead() }

// CloseWrite sends a FIN to the client.
func (c *TCPConn) CloseWrite() error { return c.c.CloseWrite() }

// SetLinger sets what Close does, as (*net.TCPConn).SetLinger does: with
// sec 0 Close resets the connection (a RST to the client, what was not
// sent dropped): for a flow whose backend reset it; a
// negative sec restores the default (what is queued is sent, then a FIN).
func (c *TCPConn) SetLinger(sec int) error {
	c.ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: sec >= 0, Timeout: time.Duration(max(sec, 0)) * time.Second})
	return nil
}

// Write writes b, waiting for room while the client does not read (until
// the write deadline). A connection that gVisor ended in error (the
// client's reset) is reported as syscall.ECONNRESET, and one the client
// reset after its FIN as syscall.EPIPE, as by TryWrite: gVisor's adapter
// returns only the text of its error.
func (c *TCPConn) Write(b []byte) (int, error) {
	n, err := c.c.Write(b)
	if err != nil {
		err = c.writeError(err)
	}
	return n, err
}

// writeError names a failed write's cause where gVisor does not: a reset.
// A reset in CLOSE-WAIT (the client sent its FIN, then aborted) closes
// the endpoint, as Linux does, and the write finds it closed for sending;
// Linux reports that as EPIPE. The gateway never writes after its own
// CloseWrite or Close, so a closed endpoint here is the client's doing.
func (c *TCPConn) writeError(err error) error {
	switch tcp.EndpointState(c.ep.State()) {
	case tcp.StateError:
		return fmt.Errorf("netstack: write: %w", syscall.ECONNRESET)
	case tcp.StateClose:
		return fmt.Errorf("netstack: write: %w", syscall.EPIPE)
	}
	return err
}

// failed reports whether the connection ended in error. gVisor hands the
// error (a reset) to the first call that asks for it; later reads only
// find the receiving side closed, which must not pass for the client's
// FIN.
func (c *TCPConn) failed() bool { return tcp.EndpointState(c.ep.State()) == tcp.StateError }

// conn gives the client side of a flow the net.Conn methods of gVisor's
// adapter without naming a gVisor type in our API.
type conn struct{ net.Conn }

// ErrWouldBlock is returned by TryRead when no data is waiting, and by
// TryWrite when the send buffer is full.
var ErrWouldBlock = errors.New("netstack: would block")

// OnReadable registers fn to be called whenever the connection may have
// become readable: data, the client's FIN, a reset. fn runs in the stack's
// goroutines and must not block; it may be called spuriously. The returned
// function unregisters it (never call it from fn).
func (c *TCPConn) OnReadable(fn func()) (unregister func()) {
	e := waiter.NewFunctionEntry(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr|waiter.EventRdHUp, func(waiter.EventMask) { fn() })
	c.wq.EventRegister(&e)
	return func() { c.wq.EventUnregister(&e) }
}

// TryRead reads what the client sent without waiting: n > 0 bytes, or
// ErrWouldBlock when nothing is waiting, or io.EOF once the client closed
// its side and everything was read, or the error that ended the
// connection. It must not be mixed with Read.
func (c *TCPConn) TryRead(b []byte) (int, error) {
	n, err := tryRead(c.ep, &c.rw, b)
	if err == io.EOF && c.failed() { // the reset went to a write
		err = fmt.Errorf("netstack: read: %w", syscall.ECONNRESET)
	}
	return n, err
}

// TryWrite writes what fits of b in the connection's send buffer without
// waiting: n bytes, fewer than len(b) (0 with ErrWouldBlock) when the
// buffer is full, or the error that ended the connection. Calls must not
// overlap each other or a Write.
func (c *TCPConn) TryWrite(b []byte) (int, error) {
	c.wr.Reset(b)
	n, err := c.ep.Write(&c.wr, tcpip.WriteOptions{})
	c.wr.Reset(nil)
	switch err.(type) {
	case nil:
		return int(n), nil
	case *tcpip.ErrWouldBlock:
		return int(n), ErrWouldBlock
	case *tcpip.ErrConnectionReset, *tcpip.ErrConnectionAborted:
		return int(n), fmt.Errorf("netstack: write: %w", syscall.ECONNRESET)
	}
	// The reset went to a read, or came after the client's FIN.
	return int(n), c.writeError(tcpipError("write", err))
}

// tryRead reads from an endpoint into b without waiting; w is the caller's
// writer, reused from read to read.
func tryRead(ep tcpip.Endpoint, w *tcpip.SliceWriter, b []byte) (int, error) {
	*w = b
	res, err := ep.Read(w, tcpip.ReadOptions{})
	*w = nil
	switch err.(type) {
	case nil:
		return res.Count, nil
	case *tcpip.ErrWouldBlock:
		return 0, ErrWouldBlock
	case *tcpip.ErrClosedForReceive:
		return 0, io.EOF
	case *tcpip.ErrConnectionReset, *tcpip.ErrConnectionAborted:
		return res.Count, fmt.Errorf("netstack: read: %w", syscall.ECONNRESET)
	case *tcpip.ErrConnectionRefused:
		// A UDP flow's client reported its port unreachable: the read
		// took the error gVisor kept for it, and no datagram.
		return res.Count, fmt.Errorf("netstack: read: %w", syscall.ECONNREFUSED)
	}
	return res.Count, tcpipError("read", err)
}
