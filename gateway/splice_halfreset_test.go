package gateway

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestSpliceClientResetAfterHalfClose: a client that half-closed (sent its
// request and a FIN) and then aborts the download (a reset) ends the flow
// as client_reset, and the backend is reset too, not left to find out from
// its own writes.
func TestSpliceClientResetAfterHalfClose(t *testing.T) {
	streaming, end := make(chan struct{}), make(chan error, 1)
	port := serveTCP(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil { // the request, up to the client's FIN
			end <- err
			return
		}
		close(streaming)
		buf := make([]byte, 1024)
		for {
			if _, err := c.Write(buf); err != nil {
				end <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	h := newHarness(t, spliceConfig(port, "1h"))
	c := h.dialSplice(t)
	c.Write([]byte("GET"))
	c.(interface{ CloseWrite() error }).CloseWrite()
	select {
	case <-streaming:
	case err := <-end:
		t.Fatalf("the backend did not get the request: %v", err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4096)); err != nil {
		t.Fatalf("download: %v", err)
	}
	flows := h.gw.flows.list(nil)
	if len(flows) != 1 {
		t.Fatalf("%d flows, want 1", len(flows))
	}
	c.(interface{ SetLinger(int) error }).SetLinger(0)
	c.Close()
	if err := <-end; !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("after the client's reset the backend's write failed with %v, want ECONNRESET or EPIPE", err)
	}
	waitFor(t, 3*time.Second, "flow ended", func() bool { return h.gw.flows.len() == 0 })
	if reason, _ := flows[0].closed(); reason != reasonClientReset {
		t.Errorf("the flow ended as %q, want %q", reason, reasonClientReset)
	}
}
