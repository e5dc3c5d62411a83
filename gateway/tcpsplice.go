package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztgate/ztgate/netstack"
)

// tcpSplice copies a TCP flow both ways, with half-close, without a
// goroutine while the flow is idle: the netstack tells it when the client
// sent something, the reactor when the backend did, and a worker goroutine
// runs only while there is data to move. Idle timeouts are enforced by the
// gateway's sweeper (sweepIdle). Buffers come from a pool while data moves.
//
//	state bits: evClient, evBackend — what became readable;
//	            scheduled — a worker runs or is about to.
type tcpSplice struct {
	g      *Gateway
	f      *flow
	client *netstack.TCPConn
	be     *net.TCPConn
	rc     syscall.RawConn
	fd     int

	state     atomic.Uint32
	keepalive atomic.Bool // the sweeper turned on TCP keepalive on the backend's socket
	waiting   atomic.Bool // the worker lingers in the poller for the backend
	disarmed  atomic.Bool // the reactor reported fd and ignores it until armed again
	inReactor atomic.Bool // an arm added fd to the reactor's epoll set
	// A direction whose receiver does not take what it was sent has its
	// write finished on a goroutine of its own (finishWrite), and the
	// worker leaves it alone meanwhile: one worker blocked in one
	// direction's write would stop the other, and a backend that answers
	// before it has read everything (or a client that does) would wait
	// for ever on a reader who waits for it.
	upBusy, downBusy atomic.Bool
	sideErr          atomic.Pointer[dirError] // what such a write met
	unregister       func()
	teardownOnce     sync.Once
	run              func() // runWorker, made once: kick hands it to the gateway's worker pool

	// owned by the worker of the moment
	clientEOF, backendEOF bool
	err                   error
	peekErr               error // the backend socket's error, which linger's peek took
}

const (
	evClient uint32 = 1 << iota
	evBackend
	scheduled
	evMask = evClient | evBackend
)

// startTCPSplice wires a new flow to the reactor and the netstack and
// moves whatever is already waiting.
func (g *Gateway) startTCPSplice(f *flow, client *netstack.TCPConn, be *net.TCPConn) {
	t := &tcpSplice{g: g, f: f, client: client, be: be}
	t.run = t.runWorker
	// Scheduled from the start: the client's notifier below may kick at
	// once, and a worker must not run, or tear the flow down, before the
	// fields it reads are set. Its kicks only record events until the
	// worker started at the end. The backend's socket enters the reactor
	// when that worker, or a later one, goes idle (an error or hang-up
	// before is what the worker's own reads find).
	t.state.Store(scheduled)
	rc, err := be.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { t.fd = int(fd) })
	}
	if err == nil {
		t.rc = rc
		t.disarmed.Store(true) // the first worker arms it when it goes idle
		g.reactor.add(t.fd, func() {
			t.disarmed.Store(true) // before the kick: the worker it starts, or the one running, sees it
			t.kick(evBackend)
		})
	}
	if err != nil {
		g.log.Error("splice", "flow", f.id, "err", err)
		t.teardown("error")
		return
	}
	t.unregister = client.OnReadable(func() { t.kick(evClient) })
	// Closing the flow from outside (API, drain, the idle sweeper, a closed
	// tunnel ingress) closes the client side, stops any write to the
	// backend a worker is blocked in (a deadline in the past, so that the
	// descriptor stays valid until teardown takes it out of the reactor),
	// and wakes a worker, which tears the flow down. Writes need no
	// deadline of their own: a write that blocks moves no byte, and the
	// sweeper ends flows that move none.
	f.mu.Lock()
	f.onClose = func() {
		be.SetDeadline(time.Unix(1, 0))
		t.kick(evClient)
	}
	f.mu.Unlock()
	f.splice.Store(t)                // published complete: Close and the sweeper may use it
	t.state.Or(evClient | evBackend) // data may have arrived before the notifiers
	if g.enter() {                   // else shutting down: Close tears the flow down
		g.workers.Go(t.run)
	}
}

// kick records events and starts a worker unless one runs. A worker that
// lingers for the backend is woken for the client's events by a deadline
// in the past; the backend's own wake it through the poller.
func (t *tcpSplice) kick(ev uint32) {
	if t.state.Or(ev|scheduled)&scheduled != 0 {
		if ev&evClient != 0 && t.waiting.Load() {
			t.be.SetReadDeadline(time.Unix(1, 0))
		}
		return
	}
	if !t.g.enter() {
		// Shutting down: Close tears down every flow once no goroutine of
		// the gateway runs. (Never tear down here: kick may run inside the
		// netstack's notification, whose lock unregistering would need.)
		return
	}
	t.g.workers.Go(t.run)
}

// runWorker is a worker: on a goroutine of the gateway's pool, whose stack
// an earlier worker has grown (gVisor's output path goes deep).
func (t *tcpSplice) runWorker() {
	defer t.g.leave()
	t.work()
}

// work moves data until neither side has any, then exits; a later kick
// starts a new worker. Before it exits it arms the backend's socket in the
// reactor (while the descriptor is surely open: only a worker tears down);
// what the reactor reports at once then is a kick this worker still sees.
func (t *tcpSplice) work() {
	for {
		ev := t.state.And(^evMask) & evMask
		if ev == 0 {
			if t.linger() {
				continue
			}
			// While a write to the client waits, the backend is not read:
			// the socket stays disarmed (armed, a readable one would wake
			// a worker that leaves it alone, again and again); the
			// write's end kicks the worker that arms it.
			if !t.downBusy.Load() && t.disarmed.Swap(false) && !t.backendEOF && t.err == nil {
				if err := t.g.reactor.arm(t.fd, t.inReactor.Load()); err != nil {
					t.teardown(closeReason(err))
					return
				}
				t.inReactor.Store(true)
			}
			if t.state.CompareAndSwap(scheduled, 0) {
				return
			}
			continue
		}
		if reason, closed := t.f.closed(); closed {
			t.teardown(reason)
			return
		}
		if ev&evClient != 0 && !t.clientEOF && t.err == nil && !t.upBusy.Load() {
			t.err = t.pumpUp()
		}
		if ev&evBackend != 0 && !t.backendEOF && t.err == nil && !t.downBusy.Load() {
			t.err = t.pumpDown()
		}
		if e := t.sideErr.Load(); e != nil && t.err == nil {
			t.err = e
		}
		if t.err != nil || (t.clientEOF && t.backendEOF && !t.upBusy.Load() && !t.downBusy.Load()) {
			t.teardown(closeReason(t.err))
			return
		}
	}
}

// lingerTime is how long a worker with nothing to do stays for more: a
// flow that is moving data keeps its worker (one wake-up per burst, like a
// goroutine per direction), an idle one gives it up.
const lingerTime = 50 * time.Millisecond

// linger waits up to lingerTime for the backend to send (through Go's
// poller, peeking so that no buffer is held) or for a kick; it reports
// whether there may be work.
func (t *tcpSplice) linger() bool {
	if t.backendEOF || t.err != nil || t.downBusy.Load() {
		return false // (a waiting write to the client: the backend is not read meanwhile)
	}
	t.be.SetReadDeadline(time.Now().Add(lingerTime))
	t.waiting.Store(true)
	ready := false
	if t.state.Load()&evMask == 0 {
		var peek [1]byte
		woken := false
		t.rc.Read(func(fd uintptr) bool {
			if t.state.Load()&evMask != 0 {
				return true
			}
			if woken {
				// Called again: the poller saw the socket turn readable
				// (data, the FIN or an error; a deadline returns without
				// a call). pumpDown reads it, no second peek first; a
				// spurious wake-up costs it one read that finds nothing.
				ready = true
				return true
			}
			woken = true
			_, _, err := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EAGAIN) {
				return false
			}
			if err != nil {
				// The socket's error (a reset) is handed to one call
				// only, this one: pumpDown's read would find the FIN
				// of a socket closed in order.
				t.peekErr = os.NewSyscallError("recvfrom", err)
			}
			ready = true // data, the FIN or an error: pumpDown takes it
			return true
		})
	}
	t.waiting.Store(false)
	t.be.SetReadDeadline(time.Time{})
	if ready {
		t.state.Or(evBackend)
	}
	return t.state.Load()&evMask != 0
}

// pumpUp copies what the client sent to the backend, until nothing is
// waiting; the client's FIN half-closes the backend.
func (t *tcpSplice) pumpUp() error {
	for {
		bp := bufPool.Get().(*[]byte)
		n, err := t.client.TryRead(*bp)
		if n > 0 {
			t.f.addUp(n, t.g.now())
			w, werr := t.tryWriteBackend((*bp)[:n])
			if werr != nil {
				bufPool.Put(bp)
				return &dirError{dir: "write backend", err: werr}
			}
			if w < n { // the backend takes no more now
				t.finishWrite(&t.upBusy, bp, (*bp)[w:n], evClient, "write backend", t.be.Write)
				if err != nil && !errors.Is(err, netstack.ErrWouldBlock) && err != io.EOF {
					return &dirError{dir: "read client", err: err}
				}
				return nil // (an EOF read with the data is read again: TryRead reports it once the data is gone)
			}
		}
		bufPool.Put(bp)
		switch {
		case errors.Is(err, netstack.ErrWouldBlock):
			return nil
		case err == io.EOF:
			t.clientEOF = true
			t.be.CloseWrite()
			return nil
		case err != nil:
			return &dirError{dir: "read client", err: err}
		}
	}
}

// pumpDown copies what the backend sent to the client, until its socket
// is drained: a read that returned less than the buffer took everything
// there was, so it stops there instead of asking again for an EAGAIN
// (what arrives later is seen by linger's peek or the reactor, which
// reports a readable socket whenever it is armed). The backend's FIN
// half-closes the client.
func (t *tcpSplice) pumpDown() error {
	if err := t.peekErr; err != nil {
		t.peekErr = nil
		return &dirError{dir: "read backend", err: err}
	}
	for {
		var (
			bp   *[]byte
			n    int
			rerr error
		)
		// RawConn.Read keeps the descriptor alive during the read; the
		// callback returns true so it never waits.
		err := t.rc.Read(func(fd uintptr) bool {
			bp = bufPool.Get().(*[]byte)
			n, rerr = unix.Read(int(fd), *bp)
			return true
		})
		if err == nil {
			err = rerr
		}
		if n > 0 {
			drained := n < len(*bp)
			t.f.addDown(n, t.g.now())
			w, werr := t.client.TryWrite((*bp)[:n])
			if errors.Is(werr, netstack.ErrWouldBlock) {
				werr = nil
			}
			if werr != nil {
				bufPool.Put(bp)
				return &dirError{dir: "write client", err: werr}
			}
			if w < n { // the client takes no more now
				t.finishWrite(&t.downBusy, bp, (*bp)[w:n], evBackend, "write client", t.client.Write)
				return nil
			}
			bufPool.Put(bp)
			if drained {
				return nil
			}
			continue
		}
		if bp != nil {
			bufPool.Put(bp)
		}
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			// A kick that saw this worker lingering sets its deadline in
			// the past, and may do so only after the linger ended and
			// cleared it; only a close (which sets one too) means it.
			if _, closed := t.f.closed(); !closed {
				t.be.SetReadDeadline(time.Time{})
				continue
			}
		case err == nil: // n == 0: the backend's FIN
			t.backendEOF = true
			t.client.CloseWrite()
			return nil
		}
		return &dirError{dir: "read backend", err: os.NewSyscallError("read", err)}
	}
}

// tryWriteBackend writes what the backend's socket takes of b now, without
// waiting.
func (t *tcpSplice) tryWriteBackend(b []byte) (int, error) {
	var (
		w    int
		werr error
	)
	// RawConn.Write keeps the descriptor alive during the write; the
	// callback returns true so it never waits.
	err := t.rc.Write(func(fd uintptr) bool {
		for w < len(b) {
			k, e := unix.Write(int(fd), b[w:])
			if k > 0 {
				w += k
			}
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
			case e != nil:
				werr = os.NewSyscallError("write", e)
			case k > 0:
				continue
			}
			break
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return w, err
}

// finishWrite hands the rest of a write its receiver did not take to a
// goroutine of its own, busy set meanwhile, so that the worker goes on
// with the other direction: write (the blocking Write of that side) takes
// it there, then the buffer bp goes back, and a kick with ev has the
// worker go on with the direction. A failed write ends the flow (the
// worker reads sideErr); a close of the flow ends a waiting one (its
// deadline, or the closed connection).
func (t *tcpSplice) finishWrite(busy *atomic.Bool, bp *[]byte, rest []byte, ev uint32, dir string, write func([]byte) (int, error)) {
	busy.Store(true)
	if !t.g.enter() { // shutting down: Close tears the flow down
		bufPool.Put(bp)
		busy.Store(false)
		return
	}
	t.g.workers.Go(func() {
		defer t.g.leave()
		_, err := write(rest)
		bufPool.Put(bp)
		if err != nil {
			t.sideErr.CompareAndSwap(nil, &dirError{dir: dir, err: err})
		}
		busy.Store(false)
		t.kick(ev)
	})
}

// teardown ends the flow once: it unhooks the notifiers, then closes both
// sides (the backend socket leaves the reactor before its descriptor can
// be reused) and writes the flow's log line with reason, unless the flow
// was closed with a reason of its own. A side that reset the flow has the
// other reset too (SO_LINGER 0), as over a direct connection: a FIN would
// pass a stream cut by the reset off as complete. A flow cut (flow.cut)
// has its backend reset as well. Workers, kicks during shutdown and Close
// may race to call it.
func (t *tcpSplice) teardown(reason string) {
	t.teardownOnce.Do(func() {
		if t.unregister != nil {
			t.unregister()
		}
		if t.rc != nil {
			t.g.reactor.remove(t.fd, t.inReactor.Load())
		}
		switch reason {
		case reasonBackendReset:
			t.client.SetLinger(0)
		case reasonClientReset:
			t.be.SetLinger(0)
		}
		t.f.close(reason)
		if t.f.wasCut() {
			t.be.SetLinger(0)
		}
		t.be.Close()
		t.g.endFlow(t.f)
	})
}

// sweepIdle closes TCP flows that moved nothing for their idle timeout; it
// runs every second. It also gives memory back to the system after a
// crowd of flows has gone.
func (g *Gateway) sweepIdle() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var trim memoryTrimmer
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
		}
		now := g.now()
		for _, f := range g.flows.list(func(f *flow) bool {
			t := f.splice.Load()
			return t != nil && (f.idleFor(now) >= f.idle || !t.keepalive.Load() && now.Sub(f.start) >= keepaliveAfter)
		}) {
			if f.idleFor(now) >= f.idle {
				f.close("idle") // wakes its worker, which tears it down
				continue
			}
			f.splice.Load().enableKeepalive()
		}
		trim.observe(g.flows.len(), now)
	}
}

// keepaliveAfter is the age from which a flow's backend socket has TCP
// keepalive on, as Go's dialer sets it (first probe after 15 s without a
// segment, then every 15 s, nine of them): a backend host that vanished
// under an idle flow is found without waiting for the flow's idle timeout.
// Set by the sweeper rather than at the dial, where its four system calls
// would be paid by every short connection.
const keepaliveAfter = time.Second

// enableKeepalive turns on keepalive on the backend's socket, once.
func (t *tcpSplice) enableKeepalive() {
	if t.keepalive.Swap(true) {
		return
	}
	// Control keeps the descriptor alive; on a socket already closed it
	// does nothing.
	t.rc.Control(func(fd uintptr) {
		for _, o := range [...]struct{ level, opt, val int }{
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepaliveIdle},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepaliveIdle},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepaliveCount},
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		} {
			if err := unix.SetsockoptInt(int(fd), o.level, o.opt, o.val); err != nil {
				t.g.log.Debug("keepalive", "flow", t.f.id, "err", err)
				return
			}
		}
	})
}

// Go's defaults for a dialed connection (net.KeepAliveConfig).
const (
	keepaliveIdle  = 15 // seconds
	keepaliveCount = 9
)

// memoryTrimmer returns freed memory to the system once the number of
// flows fell to a quarter of a peak of at least trimMinPeak: Go's scavenger
// would take minutes, and an operator watching RSS after a burst of 10 000
// flows expects it back. At most once per trimInterval.
type memoryTrimmer struct {
	peak  int
	last  time.Time
	again bool   // trim once more after trimSecond: the last flows closing and the pools' victim caches
	free  func() // debug.FreeOSMemory; tests count calls
}

const (
	trimMinPeak  = 1000
	trimInterval = 10 * time.Second
	// trimSecond comes after the netstack's TIME-WAIT: the endpoints of
	// the flows that closed around the first trim hold their buffers until
	// then (at 10 000 flows, some 40 MiB that a trim at 3 s left to the
	// next one, 10 s later).
	trimSecond = netstack.TimeWait + time.Second
)

func (m *memoryTrimmer) observe(flows int, now time.Time) {
	m.peak = max(m.peak, flows)
	switch {
	case m.peak >= trimMinPeak && flows <= m.peak/4 && now.Sub(m.last) >= trimInterval:
		m.trim()
		m.peak, m.last, m.again = flows, now, true
	case m.again && now.Sub(m.last) >= trimSecond:
		m.trim()
		m.again = false
	}
}

func (m *memoryTrimmer) trim() {
	if m.free != nil {
		m.free()
		return
	}
	debug.FreeOSMemory()
}
