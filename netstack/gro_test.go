package netstack_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
)

// sinkHandler accepts every TCP flow and hashes what arrives.
type sinkHandler struct {
	echoHandler
	sums chan [32]byte
}

func (h *sinkHandler) HandleTCP(req *netstack.TCPRequest) {
	c, err := req.Accept()
	if err != nil {
		return
	}
	go func() {
		defer c.Close()
		s := sha256.New()
		io.Copy(s, c)
		h.sums <- [32]byte(s.Sum(nil))
	}()
}

// TestBatchMergesSegments uploads through a link whose device hands over
// what the client queued in batches (as a TUN read does): the stack must
// receive the bytes intact, in fewer IP packets than the segments sent
// (GRO merged some), and find none of the merged packets malformed.
func TestBatchMergesSegments(t *testing.T) {
	h := &sinkHandler{sums: make(chan [32]byte, 1)}
	f := newFixture(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before, _ := netstack.IPPackets(f.ns)

	const size = 2 << 20
	data := make([]byte, size)
	rand.Read(data)
	c, err := f.client.DialTCP(ctx, clientAddr, netip.MustParseAddrPort("10.100.0.7:80"))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if _, err := c.Write(data); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.Close()
	select {
	case got := <-h.sums:
		if got != sha256.Sum256(data) {
			t.Fatal("the stack received other bytes than were sent")
		}
	case <-ctx.Done():
		t.Fatal("upload did not complete")
	}
	received, malformed := netstack.IPPackets(f.ns)
	received -= before
	// 1420-byte MTU: at most 1380 bytes of payload per segment.
	segments := uint64(size / 1380)
	if received >= segments {
		t.Errorf("the stack received %d IP packets for at least %d segments: nothing was merged", received, segments)
	}
	if malformed != 0 {
		t.Errorf("%d packets malformed", malformed)
	}
}
