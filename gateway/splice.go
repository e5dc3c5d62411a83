package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// copyBufSize is the size of the pooled copy buffers. Buffers are taken
// only while data moves, so an idle flow pins none.
const copyBufSize = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// stackConn is the client side of a flow in the netstack: it can wait for
// data without holding a buffer.
type stackConn interface {
	net.Conn
	WaitReadable(done <-chan struct{}, timer <-chan time.Time) error
}

// halfCloser is implemented by connections with a write side of their own.
type halfCloser interface{ CloseWrite() error }

// errIdle ends a flow that moved no byte for its idle timeout.
var errIdle = errors.New("idle timeout")

// copyFromStack copies client → backend until EOF (then half-closes the
// backend), an error or the flow's end. idle bounds how long the whole
// flow may move nothing.
func copyFromStack(f *flow, src stackConn, dst net.Conn, idle time.Duration, now func() time.Time) error {
	timer := time.NewTimer(idle)
	defer timer.Stop()
	for {
		err := src.WaitReadable(f.done, timer.C)
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
		bp := bufPool.Get().(*[]byte)
		n, rerr := src.Read(*bp)
		if n > 0 {
			dst.SetWriteDeadline(now().Add(idle))
			_, werr := dst.Write((*bp)[:n])
			f.addUp(n, now())
			if werr != nil {
				bufPool.Put(bp)
				return &dirError{dir: "write backend", err: werr}
			}
		}
		bufPool.Put(bp)
		if rerr == io.EOF {
			if hc, ok := dst.(halfCloser); ok {
				hc.CloseWrite()
			}
			return nil
		}
		if rerr != nil {
			return &dirError{dir: "read client", err: rerr}
		}
	}
}

// copyFromSocket copies backend → client until EOF (then half-closes the
// client), an error or the flow's end.
func copyFromSocket(f *flow, src syscall.Conn, srcConn net.Conn, dst net.Conn, idle time.Duration, now func() time.Time) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	for {
		srcConn.SetReadDeadline(time.Unix(0, f.lastActive.Load()).Add(idle))
		bp, n, err := readSocket(rc)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if f.idleFor(now()) >= idle {
				return errIdle
			}
			continue
		}
		if n > 0 {
			dst.SetWriteDeadline(now().Add(idle))
			_, werr := dst.Write((*bp)[:n])
			bufPool.Put(bp)
			f.addDown(n, now())
			if werr != nil {
				return &dirError{dir: "write client", err: werr}
			}
			continue
		}
		if err == nil || err == io.EOF {
			if hc, ok := dst.(halfCloser); ok {
				hc.CloseWrite()
			}
			return nil
		}
		return &dirError{dir: "read backend", err: err}
	}
}

// readSocket reads once from a kernel socket. It takes a pooled buffer only
// when the socket has data, so a flow waiting for its backend holds none.
// n == 0 with a nil error means EOF.
func readSocket(rc syscall.RawConn) (*[]byte, int, error) {
	var (
		bp   *[]byte
		n    int
		rerr error
	)
	err := rc.Read(func(fd uintptr) bool {
		if bp == nil {
			bp = bufPool.Get().(*[]byte)
		}
		n, rerr = unix.Read(int(fd), *bp)
		if rerr == unix.EAGAIN || rerr == unix.EINTR {
			bufPool.Put(bp)
			bp = nil
			return false
		}
		return true
	})
	if err == nil {
		err = rerr
	}
	if err != nil || n <= 0 {
		if bp != nil {
			bufPool.Put(bp)
		}
		if err != nil {
			return nil, 0, os.NewSyscallError("read", err)
		}
		return nil, 0, nil
	}
	return bp, n, nil
}

// dirError says which side of a splice failed.
type dirError struct {
	dir string
	err error
}

func (e *dirError) Error() string { return e.dir + ": " + e.err.Error() }
func (e *dirError) Unwrap() error { return e.err }

// closeReason names why a flow ended for its log line.
func closeReason(err error) string {
	var de *dirError
	switch {
	case err == nil:
		return "done"
	case errors.Is(err, errIdle):
		return "idle"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		if errors.As(err, &de) && (de.dir == "read client" || de.dir == "write client") {
			return "client_reset"
		}
		return "backend_reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "backend_refused"
	case errors.As(err, &de):
		return "error"
	}
	return "closed"
}
