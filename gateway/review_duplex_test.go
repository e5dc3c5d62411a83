package gateway

import (
	"io"
	"net"
	"strconv"
	"testing"
	"time"
)

// earlyAnswerBackend reads the head of an upload, works on it for a
// second, then streams a large answer before it reads the rest (an HTTP
// server answering before it consumed a body, a pipelined protocol); it
// reports how much it read in all.
func earlyAnswerBackend(t *testing.T, head, answer int64, got chan<- int64) int {
	return serveTCP(t, func(c net.Conn) {
		if _, err := io.CopyN(io.Discard, c, head); err != nil {
			got <- -1
			return
		}
		time.Sleep(time.Second)
		if _, err := c.Write(make([]byte, answer)); err != nil {
			got <- -2
			return
		}
		n, _ := io.Copy(io.Discard, c)
		got <- head + n
	})
}

// fullDuplex uploads upload bytes on c while it reads answer bytes, then
// checks what the backend read.
func fullDuplex(t *testing.T, c net.Conn, upload, answer int64, got <-chan int64, moved func() string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, upload))
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	if n, err := io.CopyN(io.Discard, c, answer); err != nil {
		t.Fatalf("client read %d of %d bytes of the answer: %v (%s)", n, answer, err, moved())
	}
	if err := <-werr; err != nil {
		t.Fatalf("upload: %v", err)
	}
	select {
	case n := <-got:
		if n != upload {
			t.Fatalf("backend read %d, want %d", n, upload)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("backend never read the upload")
	}
}

// TestSpliceFullDuplexEarlyAnswer: a client uploading while it reads, and
// a backend that answers before it read everything (earlyAnswerBackend).
// Over plain TCP nothing blocks (the "direct" case). Through the splice one
// worker moves both directions: it blocks writing the upload into the
// backend, which does not read while it writes its answer, and so it no
// longer reads that answer, which the backend never finishes writing. Both
// directions stall until tcp_idle (1 h by default).
func TestSpliceFullDuplexEarlyAnswer(t *testing.T) {
	const (
		head   = 1 << 20
		answer = 16 << 20
		upload = 32 << 20
	)
	t.Run("direct", func(t *testing.T) {
		got := make(chan int64, 1)
		port := earlyAnswerBackend(t, head, answer, got)
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fullDuplex(t, c, upload, answer, got, func() string { return "direct" })
	})
	t.Run("splice", func(t *testing.T) {
		got := make(chan int64, 1)
		h := newHarness(t, spliceConfig(earlyAnswerBackend(t, head, answer, got), "1h"))
		c := h.dialSplice(t)
		fullDuplex(t, c, upload, answer, got, func() string {
			fs := h.gw.flows.list(nil)
			if len(fs) != 1 {
				return "no flow"
			}
			return "gateway moved up " + itoa(int(fs[0].up.Load())) + ", down " + itoa(int(fs[0].down.Load()))
		})
	})
}

func itoa(n int) string { return strconv.Itoa(n) }
