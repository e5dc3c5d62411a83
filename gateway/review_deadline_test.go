package gateway

import (
	"bufio"
	"fmt"
	"net"
	"testing"
	"time"
)

// TestSpliceLateLingerWakeKillsFlow: kick wakes a lingering worker with
// a read deadline in the past on the backend socket (tcpsplice.go, kick:
// "if ev&evClient != 0 && t.waiting.Load() { t.be.SetReadDeadline(past) }").
// Load and SetReadDeadline are two steps: a worker whose linger ends
// between them (the backend's data or the 50 ms timer woke it) stores
// waiting=false and clears the deadline first, and the kick's past
// deadline lands afterwards and stays. The next read of the backend
// (pumpDown's RawConn.Read checks the deadline before it calls its
// function) then fails with "i/o timeout" and the flow is torn down as an
// error: the backend's data is lost and the client cut off.
//
// The interleaving is set up here by doing the kick's late store on an
// idle flow (the state the race leaves); the backend then answers after
// the worker went idle.
func TestSpliceLateLingerWakeKillsFlow(t *testing.T) {
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
