package gateway

import (
	"io"
	"net"
	"strconv"
	"testing"
	"time"
)

// Full-duplex exchanges that plain TCP completes whatever the order in
// which each side reads and writes. Through the splice each direction must
// go on while the other's receiver does not take what it is sent: one
// worker that blocked in one direction's write stopped the other, and the
// two ends waited on each other until tcp_idle (1 h by default).
const (
	duplexHead   = 1 << 20
	duplexAnswer = 16 << 20
	duplexUpload = 32 << 20
	// A stalled flow (the bug) waits for tcp_idle, 1 h; a healthy exchange
	// takes 5–10 s under -race here, and may take twice that on CI.
	duplexDeadline = 90 * time.Second
)

// earlyAnswerBackend reads the head of an upload, works on it a moment,
// then writes a large answer before it reads the rest (an HTTP server
// answering before it consumed a body, a pipelined protocol); it reports
// how much it read in all.
func earlyAnswerBackend(t *testing.T, got chan<- int64) int {
	return serveTCP(t, func(c net.Conn) {
		if _, err := io.CopyN(io.Discard, c, duplexHead); err != nil {
			got <- -1
			return
		}
		time.Sleep(200 * time.Millisecond)
		if _, err := c.Write(make([]byte, duplexAnswer)); err != nil {
			got <- -2
			return
		}
		n, _ := io.Copy(io.Discard, c)
		got <- duplexHead + n
	})
}

// eagerBackend writes its whole answer at once while it reads the upload
// (an echo-like server with a reader and a writer of its own).
func eagerBackend(t *testing.T, got chan<- int64) int {
	return serveTCP(t, func(c net.Conn) {
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			c.Write(make([]byte, duplexAnswer))
		}()
		n, _ := io.Copy(io.Discard, c)
		got <- n
		<-wrote // the connection closes when handle returns
	})
}

// readWhileUploading uploads while it reads the answer.
func readWhileUploading(t *testing.T, c net.Conn, moved func() string) {
	t.Helper()
	werr := make(chan error, 1)
	go func() { werr <- upload(c) }()
	if n, err := io.CopyN(io.Discard, c, duplexAnswer); err != nil {
		t.Fatalf("client read %d of %d bytes of the answer: %v (%s)", n, duplexAnswer, err, moved())
	}
	if err := <-werr; err != nil {
		t.Fatalf("upload: %v (%s)", err, moved())
	}
}

// uploadThenRead uploads everything before it reads the answer.
func uploadThenRead(t *testing.T, c net.Conn, moved func() string) {
	t.Helper()
	if err := upload(c); err != nil {
		t.Fatalf("upload: %v (%s)", err, moved())
	}
	if n, err := io.CopyN(io.Discard, c, duplexAnswer); err != nil {
		t.Fatalf("client read %d of %d bytes of the answer: %v (%s)", n, duplexAnswer, err, moved())
	}
}

func upload(c net.Conn) error {
	if _, err := c.Write(make([]byte, duplexUpload)); err != nil {
		return err
	}
	return c.(interface{ CloseWrite() error }).CloseWrite()
}

// TestSpliceFullDuplex: a backend that answers before it read everything
// with a client that reads while it uploads (the upload's write to the
// backend waits), and a client that reads only after its upload with a
// backend that answers at once (the answer's write to the client waits),
// each directly (the reference) and through the gateway.
func TestSpliceFullDuplex(t *testing.T) {
	for _, tc := range []struct {
		name    string
		backend func(*testing.T, chan<- int64) int
		client  func(*testing.T, net.Conn, func() string)
	}{
		{"backend answers early", earlyAnswerBackend, readWhileUploading},
		{"client reads late", eagerBackend, uploadThenRead},
	} {
		for _, path := range []string{"direct", "splice"} {
			t.Run(tc.name+"/"+path, func(t *testing.T) {
				got := make(chan int64, 1)
				port := tc.backend(t, got)
				var (
					c     net.Conn
					moved = func() string { return path }
				)
				if path == "direct" {
					var err error
					if c, err = net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err != nil {
						t.Fatal(err)
					}
					defer c.Close()
				} else {
					h := newHarness(t, spliceConfig(port, "1h"))
					c = h.dialSplice(t)
					moved = func() string {
						fs := h.gw.flows.list(nil)
						if len(fs) != 1 {
							return "no flow"
						}
						return "the gateway moved " + strconv.FormatInt(fs[0].up.Load(), 10) + " bytes up, " + strconv.FormatInt(fs[0].down.Load(), 10) + " down"
					}
				}
				c.SetDeadline(time.Now().Add(duplexDeadline))
				tc.client(t, c, moved)
				select {
				case n := <-got:
					if n != duplexUpload {
						t.Fatalf("the backend read %d bytes, want %d", n, duplexUpload)
					}
				case <-time.After(duplexDeadline):
					t.Fatal("the backend never read the upload to its end")
				}
			})
		}
	}
}
