package gateway

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inEpollSet reports whether fd is in the epoll set of epfd, from the
// kernel's fdinfo of the epoll descriptor ("tfd: N events: …").
func inEpollSet(t *testing.T, epfd, fd int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", epfd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		var tfd int
		if _, err := fmt.Sscanf(line, "tfd: %d", &tfd); err == nil && tfd == fd {
			return true
		}
	}
	return false
}

// TestReactorAddsAtFirstArm: add costs no system call (a short flow ends
// before its socket ever enters the set), the first arm adds the socket
// and reports it once readable, a later arm re-arms it, and remove takes
// it out.
func TestReactorAddsAtFirstArm(t *testing.T) {
	r, err := newReactor()
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	fired := make(chan struct{}, 4)
	r.add(fds[0], func() { fired <- struct{}{} })
	if inEpollSet(t, r.epfd, fds[0]) {
		t.Fatal("in the epoll set before its first arm")
	}
	unix.Write(fds[1], []byte("x"))
	select {
	case <-fired:
		t.Fatal("reported before its first arm")
	case <-time.After(50 * time.Millisecond):
	}
	if err := r.arm(fds[0], false); err != nil {
		t.Fatal(err)
	}
	if !inEpollSet(t, r.epfd, fds[0]) {
		t.Fatal("not in the epoll set after its first arm")
	}
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("readable socket not reported after its first arm")
	}
	if err := r.arm(fds[0], true); err != nil { // still readable: reported again
		t.Fatal(err)
	}
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("not reported after a second arm")
	}
	r.remove(fds[0], true)
	if inEpollSet(t, r.epfd, fds[0]) {
		t.Fatal("in the epoll set after remove")
	}
	// A socket never armed leaves without a system call that could fail.
	r.add(fds[1], func() {})
	r.remove(fds[1], false)
	r.mu.Lock()
	n := len(r.handlers)
	r.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d handlers left", n)
	}
}
