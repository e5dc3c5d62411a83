package gateway

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

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
