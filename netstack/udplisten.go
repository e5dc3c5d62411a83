package netstack

import (
	"bytes"
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

// UDPListener is a UDP socket on one of the stack's own addresses (the DNS
// server at the gateway's address). Datagrams to it take the links' fast
// path, as a UDP flow's do (udpfast.go): the link checks them as gVisor
// would and queues them here, and gVisor's IP and UDP input — most of the
// netstack's time per DNS query (a CPU profile during the DNS benchmark) —
// is skipped. What the link does not take (fragments, IPv4 options, IPv6
// extension headers, anything that fails a check) reaches the listener
// through its gVisor endpoint as before. Replies leave through gVisor
// (WriteTo), on the link whose routes lead to their client.
type UDPListener struct {
	*gonet.UDPConn // LocalAddr
	fastSocket
	ns   *Stack
	addr netip.AddrPort

	writeMu       sync.Mutex
	writeDeadline time.Time
}

var _ net.PacketConn = (*UDPListener)(nil)

// ListenUDP opens a UDP socket on one of the stack's local addresses.
func (ns *Stack) ListenUDP(ap netip.AddrPort) (*UDPListener, error) {
	var wq waiter.Queue
	ep, terr := ns.s.NewEndpoint(udp.ProtocolNumber, protoOf(ap.Addr()), &wq)
	if terr != nil {
		return nil, tcpipError("listen udp "+ap.String(), terr)
	}
	if terr := ep.Bind(tcpip.FullAddress{Addr: toAddr(ap.Addr()), Port: ap.Port()}); terr != nil {
		ep.Close()
		return nil, tcpipError("listen udp "+ap.String(), terr)
	}
	l := &UDPListener{
		UDPConn:    gonet.NewUDPConn(&wq, ep),
		fastSocket: newFastSocket(ep, &wq),
		ns:         ns,
		addr:       ap,
	}
	ns.listeners.add(ap, l)
	return l, nil
}

// ReadFrom reads one datagram, waiting until one arrives, the read
// deadline passes or the listener is closed.
func (l *UDPListener) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		if l.closed() {
			return 0, nil, net.ErrClosed
		}
		if n, src, ok := l.fast.pop(b); ok {
			return n, net.UDPAddrFromAddrPort(src), nil
		}
		if n, src, err := l.tryReadEndpoint(b); err != ErrWouldBlock {
			return n, src, err
		}
		if err := l.waitRead(); err != nil {
			return 0, nil, err
		}
	}
}

// Read is ReadFrom without the source (the embedded gVisor conn's own Read
// would miss the fast path's datagrams).
func (l *UDPListener) Read(b []byte) (int, error) {
	n, _, err := l.ReadFrom(b)
	return n, err
}

// tryReadEndpoint reads a datagram gVisor queued, without waiting.
func (l *UDPListener) tryReadEndpoint(b []byte) (int, net.Addr, error) {
	w := tcpip.SliceWriter(b)
	res, terr := l.ep.Read(&w, tcpip.ReadOptions{NeedRemoteAddr: true})
	switch terr.(type) {
	case nil:
		src := netip.AddrPortFrom(fromAddr(res.RemoteAddr.Addr), res.RemoteAddr.Port)
		return res.Count, net.UDPAddrFromAddrPort(src), nil
	case *tcpip.ErrWouldBlock:
		return 0, nil, ErrWouldBlock
	}
	return 0, nil, tcpipError("read", terr)
}

// WriteTo sends b to addr through the link whose routes lead to addr. The
// listener's address may be on several links (the gateway's address is on
// its LAN's and on its tunnel's): bound to it, gVisor would send every
// reply through the one link it found the address on first, where half of
// the clients are not, so it is told the link of each reply.
func (l *UDPListener) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok || ua == nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: l.LocalAddr(), Addr: addr, Err: net.InvalidAddrError("not a UDP address")}
	}
	dst := ua.AddrPort()
	to := tcpip.FullAddress{NIC: l.ns.linkTo(dst.Addr()), Addr: toAddr(dst.Addr().Unmap()), Port: dst.Port()}
	opError := func(err error) error {
		return &net.OpError{Op: "write", Net: "udp", Source: l.LocalAddr(), Addr: addr, Err: err}
	}
	var r bytes.Reader
	r.Reset(b)
	n, terr := l.ep.Write(&r, tcpip.WriteOptions{To: &to})
	if _, full := terr.(*tcpip.ErrWouldBlock); full {
		entry, ch := waiter.NewChannelEntry(waiter.WritableEvents)
		l.wq.EventRegister(&entry)
		defer l.wq.EventUnregister(&entry)
		l.writeMu.Lock()
		deadline := l.writeDeadline
		l.writeMu.Unlock()
		var expired <-chan time.Time
		if !deadline.IsZero() {
			t := time.NewTimer(time.Until(deadline))
			defer t.Stop()
			expired = t.C
		}
		for {
			select {
			case <-ch:
			case <-expired:
				return 0, opError(os.ErrDeadlineExceeded)
			case <-l.done:
				return 0, opError(net.ErrClosed)
			}
			if n, terr = l.ep.Write(&r, tcpip.WriteOptions{To: &to}); !isWouldBlock(terr) {
				break
			}
		}
	}
	if terr != nil {
		return int(n), opError(tcpipError("write", terr))
	}
	return int(n), nil
}

// isWouldBlock reports whether a gVisor call would have had to wait.
func isWouldBlock(err tcpip.Error) bool {
	_, ok := err.(*tcpip.ErrWouldBlock)
	return ok
}

// linkTo returns the NIC of the link whose routes lead to a (the first
// match of the table gVisor routes by, most specific first), or 0 (gVisor
// then routes as it would). It runs per reply: it reads the stack's copy
// of the table, without a lock or an allocation.
func (ns *Stack) linkTo(a netip.Addr) tcpip.NICID {
	a = a.Unmap()
	if rs := ns.routes.Load(); rs != nil {
		for _, r := range *rs {
			if r.prefix.Contains(a) {
				return r.nic
			}
		}
	}
	return 0
}

// linkOf returns the open link of the NIC id, read from the stack's copy
// of the route table (a link with no route has no packets to send), or
// nil.
func (ns *Stack) linkOf(id tcpip.NICID) *Link {
	if rs := ns.routes.Load(); rs != nil {
		for _, r := range *rs {
			if r.nic == id {
				return r.link
			}
		}
	}
	return nil
}

// SetWriteDeadline bounds WriteTo while the socket's send buffer is full.
func (l *UDPListener) SetWriteDeadline(t time.Time) error {
	l.writeMu.Lock()
	l.writeDeadline = t
	l.writeMu.Unlock()
	return nil
}

// SetReadDeadline bounds ReadFrom (gVisor's own read deadline is never
// consulted: ReadFrom does not go through it).
func (l *UDPListener) SetReadDeadline(t time.Time) error {
	l.setReadDeadline(t)
	return nil
}

// SetDeadline sets the read and write deadlines.
func (l *UDPListener) SetDeadline(t time.Time) error {
	l.setReadDeadline(t)
	return l.SetWriteDeadline(t)
}

// Close ends the listener's fast path, wakes its readers, then closes its
// endpoint.
func (l *UDPListener) Close() error {
	l.closeFast(func() { l.ns.listeners.remove(l.addr, l) })
	return l.UDPConn.Close()
}

// udpListeners are the stack's UDP listeners by local address and port.
type udpListeners = fastTable[netip.AddrPort, *UDPListener]
