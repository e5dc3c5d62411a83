package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TestSpliceLateWakeKeepsFlow: kick wakes a lingering worker with a read
// deadline in the past on the backend socket. Load (of waiting) and
// SetReadDeadline are two steps: a worker whose linger ends between them
// (the backend's data or the 50 ms timer woke it) clears the deadline
// first, and the kick's past deadline lands afterwards and stays. The next
// read of the backend (pumpDown's RawConn.Read checks the deadline before
// it reads) failed with "i/o timeout", and the flow was torn down as an
// error, the backend's data lost and the client cut off. Only a close of
// the flow (which sets such a deadline too) may end it now.
//
// The interleaving is set up by doing the kick's late store on an idle
// flow (the state the race leaves); the backend then answers after the
// worker went idle.
func TestSpliceLateWakeKeepsFlow(t *testing.T) {
	port := serveTCP(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			time.Sleep(10 * lingerTime) // the worker goes idle first
			fmt.Fprintf(c, "re: %s", line)
		}
	})
	h := newHarness(t, spliceConfig(port, "1h"))
	c := h.dialSplice(t)
	r := bufio.NewReader(c)
	fmt.Fprintln(c, "one")
	var spl *tcpSplice
	waitFor(t, 3*time.Second, "an idle splice", func() bool {
		fs := h.gw.flows.list(nil)
		if len(fs) != 1 || fs[0].up.Load() == 0 {
			return false
		}
		spl = fs[0].splice.Load()
		return spl != nil && spl.state.Load() == 0
	})
	// What a kick that read waiting=true as the worker's linger ended
	// does after the linger cleared the deadline.
	spl.be.SetReadDeadline(time.Unix(1, 0))
	got, err := r.ReadString('\n')
	if err != nil || got != "re: one\n" {
		fs := h.gw.flows.list(nil)
		t.Fatalf("answer %q, %v (flows left: %d)", got, err, len(fs))
	}
}

// TestSpliceChattyBothWaysSurvives: flows on which the client and the
// backend both send small pieces all the time (kicks while workers linger
// and wake for the backend's data) must all live until the client closes
// them. Without injection, this hunts the kick/linger deadline race.
func TestSpliceChattyBothWaysSurvives(t *testing.T) {
	const flows, dur = 16, 4 * time.Second
	port := serveTCP(t, func(c net.Conn) {
		go io.Copy(io.Discard, c)
		b := []byte{'b'}
		for {
			if _, err := c.Write(b); err != nil {
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	})
	h := newHarness(t, spliceConfig(port, "1h"))
	var wg sync.WaitGroup
	errs := make(chan error, flows)
	for range flows {
		c := h.dialSplice(t)
		c.SetDeadline(time.Now().Add(dur + 5*time.Second))
		wg.Add(2)
		stop := time.Now().Add(dur)
		go func() {
			defer wg.Done()
			b := []byte{'a'}
			for time.Now().Before(stop) {
				if _, err := c.Write(b); err != nil {
					errs <- err
					return
				}
				time.Sleep(150 * time.Microsecond)
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for time.Now().Before(stop) {
				if _, err := c.Read(buf); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("flow ended early: %v", err)
	}
}
