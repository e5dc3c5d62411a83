package netstack_test

import (
	"context"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
)

// closer accepts every TCP flow and closes it at once: the stack's side
// closes first, as when a backend ends a flow, and waits in TIME-WAIT.
type closer struct{}

func (closer) HandleTCP(req *netstack.TCPRequest) {
	if c, err := req.Accept(); err == nil {
		c.Close()
	}
}
func (closer) HandleUDP(*netstack.UDPRequest) bool { return false }
func (closer) HandleEcho(r *netstack.EchoRequest)  { r.Drop() }

// TestTimeWaitReused: a client that opens a flow from the address and port
// of one the stack closed first a moment ago (the stack's side still in
// TIME-WAIT) is answered at once. gVisor hands a new SYN in TIME-WAIT only
// to a listening endpoint, which the stack's forwarder is not, and drops
// it otherwise: the client waited out the TIME-WAIT (5 s) and its SYN's
// backoff, some 7 s. Linux takes such a SYN as a new connection.
func TestTimeWaitReused(t *testing.T) {
	f := newFixture(t, closer{})
	src, dst := netip.AddrPortFrom(clientAddr, 40000), netip.MustParseAddrPort("10.100.0.5:80")
	for i := range 5 {
		start := time.Now()
		var err error
		for time.Since(start) < 2*time.Second {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			c, derr := f.client.DialTCPFrom(ctx, src, dst)
			cancel()
			if err = derr; err != nil && strings.Contains(err.Error(), "in use") {
				time.Sleep(5 * time.Millisecond) // the client's own side of the last one not closed yet
				continue
			}
			if err == nil {
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				_, err = io.Copy(io.Discard, c) // to the stack's FIN
				c.Close()
			}
			break
		}
		if took := time.Since(start); err != nil || took > time.Second {
			t.Fatalf("flow %d from %v: %v after %v; want opened and closed at once", i, src, err, took)
		}
	}
	if n := f.ns.Stats().TCPTimeWaitUsed; n < 4 {
		t.Errorf("TCPTimeWaitUsed %d after 5 flows from one port, want at least 4", n)
	}
}
