package gateway

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack"
)

// HandleUDP implements netstack.Handler. It runs on the packet path: it
// classifies and picks a backend without blocking, and a refusal becomes
// an ICMP port unreachable. Each accepted flow (client address and port,
// VIP and port) gets its own backend socket, so replies reach only it.
func (g *Gateway) HandleUDP(req *netstack.UDPRequest) bool {
	t := g.tbl.Load()
	d := g.classify(t, catalog.UDP, req.Src.Addr(), req.Dst)
	if d.refused != "" {
		g.refuse("udp", d.refused)
		return false
	}
	b := d.svc.st.picker.pick(d.set, d.svc.spec.Balance, req.Src.Addr(), nil)
	if b == nil {
		g.refuse("udp", refuseNoBackend)
		return false
	}
	if reason := g.admit(d.t, d); reason != "" {
		g.refuse("udp", reason)
		return false
	}
	if !g.enter() {
		g.release(d.svc, d.peer.tenant)
		return false
	}
	client, err := req.Accept()
	if err != nil {
		g.release(d.svc, d.peer.tenant)
		g.leave()
		return false
	}
	f := g.newFlow("udp", req.Src, req.Dst, d, b)
	f.attach(client)
	go func() {
		defer g.leave()
		g.spliceUDP(f, client)
	}()
	return true
}

// spliceUDP connects the flow's backend socket and copies datagrams both
// ways until the flow is idle for the service's UDP timeout.
func (g *Gateway) spliceUDP(f *flow, client *netstack.UDPConn) {
	defer g.endFlow(f)
	be, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(f.target))
	if err != nil {
		g.countDialError(f.svc.spec.Name, f.backend)
		g.passiveFailure(f.svc, f.backend, err)
		f.close(refuseDial)
		return
	}
	setReadBuffer(be, udpBackendReadBuffer)
	// The backend socket stays open until both directions have stopped, so
	// that what the kernel dropped on it can still be read; closing the
	// flow wakes udpDown with a deadline in the past.
	defer be.Close()
	f.mu.Lock()
	f.onClose = func() { be.SetReadDeadline(time.Unix(1, 0)) }
	f.mu.Unlock()
	if _, closed := f.closed(); closed { // closed while dialling
		return
	}
	idle := f.svc.spec.Timeouts.UDPIdleFor(f.vip.Port())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.close(closeReason(udpUp(f, client, be, idle, g.now)))
	}()
	drops := g.udpBackendDrops(be)
	f.close(closeReason(udpDown(f, be, client, idle, g.now, drops)))
	wg.Wait()
	drops()
}

// errFlowClosed ends udpDown when the flow was closed from outside (it
// already has its reason).
var errFlowClosed = errors.New("flow closed")

// udpBackendDrops returns a function that counts, as
// ztgate_packets_dropped_total{reason="udp_backend_overflow"}, the
// datagrams the kernel dropped on the flow's backend socket since it was
// last called: they arrived while the socket's receive buffer was full
// because the flow's reader was behind. The kernel keeps the count
// (SO_MEMINFO); reading it is one system call, made when udpDown's
// deadline passes and when the flow ends, never per datagram.
func (g *Gateway) udpBackendDrops(be *net.UDPConn) func() {
	rc, err := be.SyscallConn()
	if err != nil {
		return func() {}
	}
	var seen uint32
	return func() {
		if n, ok := socketDrops(rc); ok && n != seen {
			g.m.udpBackendOverflow.Add(float64(n - seen))
			seen = n
		}
	}
}

// socketDrops reads the number of packets the kernel dropped on a socket
// (SK_MEMINFO_DROPS of SO_MEMINFO, Linux 4.12 and later).
func socketDrops(rc syscall.RawConn) (uint32, bool) {
	const skMeminfoDrops, skMeminfoVars = 8, 9
	var (
		info [skMeminfoVars]uint32
		ok   bool
	)
	rc.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(info))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&size)), 0)
		ok = errno == 0 && size > skMeminfoDrops*4
	})
	return info[skMeminfoDrops], ok
}

// udpBackendReadBuffer is the receive buffer asked for each flow's backend
// socket. The kernel's default (net.core.rmem_default, 208 KiB) holds
// about 270 small datagrams: a backend sending 64-byte datagrams at 150 k/s
// overflowed it whenever the flow's reader was off the CPU for 2 ms, and
// 8 % of them were lost there (UdpRcvbufErrors). The buffer is a limit,
// not an allocation: an idle flow costs nothing more.
const udpBackendReadBuffer = 2 << 20

// setReadBuffer asks for a receive buffer of n bytes on c: with
// SO_RCVBUFFORCE, which the gateway's CAP_NET_ADMIN allows beyond
// net.core.rmem_max (one system call per flow), else within rmem_max as any
// process may. It is best effort: a smaller buffer only means earlier
// drops.
func setReadBuffer(c *net.UDPConn, n int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
		}
	})
}

// udpBatch is the most datagrams udpUp sends in one system call.
const udpBatch = 32

// udpUp forwards the client's datagrams to the backend: everything queued
// in the netstack goes out in one sendmmsg, runs of equal-sized datagrams
// as one GSO entry each (udpSender).
func udpUp(f *flow, client *netstack.UDPConn, be *net.UDPConn, idle time.Duration, now func() time.Time) error {
	timer := time.NewTimer(idle)
	defer timer.Stop()
	out := newUDPSender(ipv4.NewPacketConn(be), udpBatch)
	dgrams := make([][]byte, 0, udpBatch)
	bufs := make([]*[]byte, 0, udpBatch)
	for {
		err := client.WaitReadable(f.done, timer.C)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t := now()
			if f.idleFor(t) >= idle {
				return errIdle
			}
			timer.Reset(idle - f.idleFor(t))
			continue
		}
		if err != nil {
			return err
		}
		bytes, read := 0, 0
		for len(dgrams) < udpBatch {
			bp := bufPool.Get().(*[]byte)
			k, rerr := client.TryRead(*bp)
			if rerr != nil {
				bufPool.Put(bp)
				if errors.Is(rerr, syscall.ECONNREFUSED) {
					// The client reported its port unreachable (an
					// answer reached a socket it had closed): the read
					// took that error, not a datagram. The flow goes on,
					// as it does on the backend's (udpDown), and its next
					// datagram is read: the client may use the port again.
					continue
				}
				if !errors.Is(rerr, netstack.ErrWouldBlock) {
					err = rerr
				}
				break
			}
			bufs = append(bufs, bp)
			dgrams = append(dgrams, (*bp)[:k])
			bytes += k
			read++
		}
		if werr := out.send(dgrams); werr != nil && !errors.Is(werr, syscall.ECONNREFUSED) && err == nil {
			err = werr
		}
		for i, bp := range bufs {
			bufPool.Put(bp)
			bufs[i], dgrams[i] = nil, nil
		}
		bufs, dgrams = bufs[:0], dgrams[:0]
		if read > 0 { // an empty datagram is activity too (a keepalive)
			f.addUp(bytes, now())
		}
		if err != nil {
			return err
		}
	}
}

// udpDown forwards the backend's datagrams to the client; they leave the
// netstack from the VIP:port the client sent to. Like udpUp's timer, the
// read deadline is set lazily, not per datagram: when it passes, the flow
// ends if nothing moved either way for idle, else it is set again for the
// rest of idle from the flow's last activity.
func udpDown(f *flow, be *net.UDPConn, client net.Conn, idle time.Duration, now func() time.Time, drops func()) error {
	rc, err := be.SyscallConn()
	if err != nil {
		return err
	}
	// setDeadline sets the read deadline and reports whether the flow is
	// still open: a close (whose onClose put the deadline in the past)
	// that came just before would otherwise be undone until idle passed.
	setDeadline := func(d time.Duration) bool {
		be.SetReadDeadline(time.Now().Add(d))
		_, closed := f.closed()
		return !closed
	}
	if !setDeadline(idle - f.idleFor(now())) {
		return errFlowClosed
	}
	for {
		bp, n, err := readSocket(rc)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			if _, closed := f.closed(); closed {
				return errFlowClosed
			}
			drops()
			left := idle - f.idleFor(now())
			if left <= 0 {
				return errIdle
			}
			if !setDeadline(left) {
				return errFlowClosed
			}
		case errors.Is(err, syscall.ECONNREFUSED):
			// The backend's port is closed (ICMP port unreachable): the
			// next datagram tries again; health checks take it out.
		case err != nil:
			return err
		case bp != nil:
			if _, err := client.Write((*bp)[:n]); errors.Is(err, syscall.ECONNREFUSED) {
				// The client's port unreachable was pending: the write
				// returned it and sent nothing. The client may use the
				// port again (udpUp): the datagram goes once more.
				client.Write((*bp)[:n])
			}
			bufPool.Put(bp)
			f.addDown(n, now())
		}
	}
}
