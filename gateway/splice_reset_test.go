package gateway

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSpliceResetPassedOn: a side that resets the flow (SO_LINGER 0, a
// crashed process, a peer that aborts) has the other side reset too, as
// over a direct connection. The splice closed the other side with a FIN
// whatever the reason, so a backend's answer cut by its reset reached the
// client as a complete one (an EOF after its bytes), and a client's upload
// cut by its reset reached the backend as a complete one.
func TestSpliceResetPassedOn(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"backend resets", func(t *testing.T) {
			port := serveTCP(t, func(c net.Conn) {
				io.ReadFull(c, make([]byte, 5))
				c.Write([]byte("partial"))
				c.(*net.TCPConn).SetLinger(0)
			})
			h := newHarness(t, spliceConfig(port, "1h"))
			// The reset comes with the answer, or just after it: the
			// worker that moved the answer meets it when it lingers for
			// more (its peek took the socket's error, and the read after
			// it found a FIN), or in its next read. Some flows see each.
			for i := range 20 {
				c := h.dialSplice(t)
				c.Write([]byte("hello"))
				got, err := io.ReadAll(c)
				if err == nil || !strings.Contains(err.Error(), "connection reset") || !strings.HasPrefix("partial", string(got)) {
					t.Fatalf("flow %d: the client read %q, then %v; want a prefix of %q, then a reset", i, got, err, "partial")
				}
				c.Close()
			}
			waitFor(t, 3*time.Second, "flow ended", func() bool { return h.gw.flows.len() == 0 })
		}},
		{"client resets", func(t *testing.T) {
			head, end := make(chan struct{}), make(chan error, 1)
			port := serveTCP(t, func(c net.Conn) {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
					end <- err
					return
				}
				close(head)
				_, err := io.Copy(io.Discard, c)
				end <- err
			})
			h := newHarness(t, spliceConfig(port, "1h"))
			c := h.dialSplice(t)
			c.Write([]byte("hello"))
			select {
			case <-head:
			case err := <-end:
				t.Fatalf("the backend did not get the upload's head: %v", err)
			}
			c.(interface{ SetLinger(int) error }).SetLinger(0)
			c.Close()
			if err := <-end; !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("after the client's reset the backend read %v, want ECONNRESET (nil: a clean EOF)", err)
			}
			waitFor(t, 3*time.Second, "flow ended", func() bool { return h.gw.flows.len() == 0 })
		}},
	} {
		t.Run(tc.name, tc.run)
	}
}
