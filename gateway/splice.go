package gateway

import (
	"errors"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// copyBufSize is the size of the pooled copy buffers. Buffers are taken
// only while data moves, so an idle flow pins none.
const copyBufSize = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// errIdle ends a flow that moved no byte for its idle timeout.
var errIdle = errors.New("idle timeout")

// readSocket reads once from a kernel socket. It takes a pooled buffer only
// when the socket has data, so a flow waiting for its backend holds none.
// It reads datagram sockets: n == 0 with a nil error is an empty datagram,
// returned with its buffer like any other.
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
	if err != nil {
		if bp != nil {
			bufPool.Put(bp)
		}
		return nil, 0, os.NewSyscallError("read", err)
	}
	// n is 0 for an empty datagram: it is one all the same.
	return bp, n, nil
}

// dirError says which side of a splice failed.
type dirError struct {
	dir string
	err error
}

func (e *dirError) Error() string { return e.dir + ": " + e.err.Error() }
func (e *dirError) Unwrap() error { return e.err }

// The reasons of a flow that one side reset; the splice resets the other.
const (
	reasonClientReset  = "client_reset"
	reasonBackendReset = "backend_reset"
)

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
			return reasonClientReset
		}
		return reasonBackendReset
	case errors.Is(err, syscall.ECONNREFUSED):
		return "backend_refused"
	case errors.As(err, &de):
		return "error"
	}
	return "closed"
}
