package gateway

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// reactor tells TCP flows when their backend sockets become readable, from
// one goroutine and one epoll instance for all of them, so that an idle
// flow needs no goroutine of its own. The sockets stay registered with
// Go's netpoller too (for writes, and for the reads of a flow that is
// moving data); epoll allows a file in several sets.
//
// A socket is watched one-shot: the reactor reports it once, then ignores
// it until the flow arms it again, which the flow does when its worker
// goes idle. While a worker runs, the backend's data wakes only that
// worker (through Go's poller), not the reactor's thread as well.
type reactor struct {
	epfd int
	wake int // eventfd that stops run

	mu       sync.Mutex
	handlers map[int32]func()
	wg       sync.WaitGroup
}

func newReactor() (*reactor, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	r := &reactor{epfd: epfd, wake: wake, handlers: make(map[int32]func())}
	r.wg.Add(1)
	go r.run()
	return r, nil
}

// watched is what an armed socket reports: readable, or the peer's FIN
// (errors and hang-ups are reported regardless), once.
const watched = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// add registers fn for fd: it is called (from the reactor's goroutine; it
// must not block) after an arm, once, when fd is readable or hangs up. The
// socket enters the epoll set at its first arm: a flow that ends while its
// worker still runs (a short connection) never costs the reactor a system
// call.
func (r *reactor) add(fd int, fn func()) {
	r.mu.Lock()
	r.handlers[int32(fd)] = fn
	r.mu.Unlock()
}

// arm has fd reported once more: at once if it is readable now, else when
// it becomes so. added says whether an arm put it in the set before.
func (r *reactor) arm(fd int, added bool) error {
	op := unix.EPOLL_CTL_MOD
	if !added {
		op = unix.EPOLL_CTL_ADD
	}
	ev := unix.EpollEvent{Events: watched, Fd: int32(fd)}
	if err := unix.EpollCtl(r.epfd, op, fd, &ev); err != nil {
		return fmt.Errorf("epoll arm: %w", err)
	}
	return nil
}

// remove stops notifications for fd, which an arm added to the set if
// added; call it before closing fd.
func (r *reactor) remove(fd int, added bool) {
	if added {
		unix.EpollCtl(r.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	}
	r.mu.Lock()
	delete(r.handlers, int32(fd))
	r.mu.Unlock()
}

func (r *reactor) run() {
	defer r.wg.Done()
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(r.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == int32(r.wake) {
				return
			}
			r.mu.Lock()
			fn := r.handlers[ev.Fd]
			r.mu.Unlock()
			if fn != nil {
				fn()
			}
		}
	}
}

// close stops the reactor and waits for its goroutine.
func (r *reactor) close() {
	unix.Write(r.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	r.wg.Wait()
	unix.Close(r.epfd)
	unix.Close(r.wake)
}
