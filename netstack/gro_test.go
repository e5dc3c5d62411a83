package netstack_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
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

// countingSink is a sinkHandler that counts the flows it is offered.
type countingSink struct {
	sinkHandler
	seen atomic.Int32
}

func (h *countingSink) HandleTCP(req *netstack.TCPRequest) {
	h.seen.Add(1)
	h.sinkHandler.HandleTCP(req)
}

// TestChecksumsTrusted: a link whose transport authenticates its packets
// (ChecksumsTrusted) takes their checksums as valid: a SYN with a wrong
// TCP checksum reaches the handler, and an upload through GRO arrives
// intact without its merged segments' checksums recomputed. Any other link
// drops the bad SYN, as gVisor does.
func TestChecksumsTrusted(t *testing.T) {
	for _, trusted := range []bool{false, true} {
		t.Run(fmt.Sprintf("trusted=%v", trusted), func(t *testing.T) {
			h := &countingSink{sinkHandler: sinkHandler{sums: make(chan [32]byte, 2)}}
			f := newLinkFixture(t, h, func(c *netstack.LinkConfig) { c.ChecksumsTrusted = trusted })
			syn := netstacktest.TCPSegment(netip.AddrPortFrom(clientAddr, 40000), netip.MustParseAddrPort("10.100.0.7:80"), 0x02, 1, nil)
			syn[len(syn)-4] ^= 0xff // the TCP checksum (20-byte header, no payload)
			f.link.Deliver(syn)
			deadline := time.Now().Add(2 * time.Second)
			for h.seen.Load() == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if got := h.seen.Load() == 1; got != trusted {
				t.Fatalf("a SYN with a wrong checksum reached the handler: %v, want %v", got, trusted)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			data := make([]byte, 1<<20)
			rand.Read(data)
			c, err := f.client.DialTCP(ctx, clientAddr, netip.MustParseAddrPort("10.100.0.7:80"))
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			c.Write(data)
			c.Close()
			for {
				select {
				case got := <-h.sums:
					if got == sha256.Sum256(data) {
						return
					}
					// the bad SYN's flow, ended
				case <-ctx.Done():
					t.Fatal("upload did not complete intact")
				}
			}
		})
	}
}
