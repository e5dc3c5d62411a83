package tunnel

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

// TestReceiveQueueHoldsABurst: a burst of datagrams that arrives while the
// reader is busy waits for it instead of being dropped. quic-go as released
// keeps 128 and drops the rest without a counter, which the TCP flows in a
// tunnel took as congestion; ztgate builds with its receive queue raised to
// 1024 (third_party/README.md). Fails against the released quic-go with
// 128 of 500.
func TestReceiveQueueHoldsABurst(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds()))
	const n = 500
	p := ip4Packet(1000, 7)
	for i := range n {
		sendAll(t, client, p)
		if i%50 == 49 {
			// quic-go's socket reader keeps up with this on a loaded
			// machine too; the datagrams pile up behind it, unread.
			time.Sleep(2 * time.Millisecond)
		}
	}
	// Nobody reads meanwhile; on loopback the burst is over in well under
	// this.
	time.Sleep(500 * time.Millisecond)
	got := drain(server, 200*time.Millisecond)
	// Loopback may lose the odd datagram; a queue of 128 holds 128.
	if got < n*9/10 {
		t.Fatalf("%d of %d datagrams sent while nobody read were still there to read, want at least %d", got, n, n*9/10)
	}
	t.Logf("%d of %d datagrams held for the reader", got, n)
}

// TestReceivedDatagramAllocs: quic-go copies a received DATAGRAM out of
// its packet once, when it parses the frame; as released it copied it a
// second time into its receive queue, about 5 % of a gateway's CPU on the
// tunnel path. ztgate builds without the second copy, and the buffers of
// the payloads sent (SendDatagram's copy) and received come from a pool:
// the sent ones go back once packed, the received ones with
// ReleaseDatagram (third_party/README.md). What is left per datagram sent
// and received in this process is the small change of packets and
// acknowledgements: 0.70 times the packet when this was written; a buffer
// per datagram sent or received adds about 1.0 to 1.45 times, which fails
// the bound of 1.25 (2.75 with neither pooled, 3.8 with the second copy).
func TestReceivedDatagramAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates for itself; make test-unit runs this without it")
	}
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds()))
	p := ip4Packet(1000, 7)
	const n = 2000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	got := 0
	for i := range n {
		sendAll(t, client, p)
		if i%20 == 19 {
			got += drain(server, 20*time.Millisecond)
		}
	}
	got += drain(server, 200*time.Millisecond)
	runtime.ReadMemStats(&after)
	if got < n*9/10 {
		t.Fatalf("%d of %d datagrams arrived", got, n)
	}
	per := float64(after.TotalAlloc-before.TotalAlloc) / float64(got)
	t.Logf("%.0f bytes allocated per datagram of %d bytes (%.2f×)", per, len(p), per/float64(len(p)))
	if per > 1.25*float64(len(p)) {
		t.Fatalf("%.0f bytes allocated per datagram of %d bytes: datagrams sent or received are allocated (copied twice, or not pooled)", per, len(p))
	}
}

// sendAll sends p on s, again while quic-go's send queue is full: a busy
// machine (the race detector, other packages' tests) may leave the
// connection's goroutine behind a burst for more than the 5 ms
// SendDatagram waits, and what these tests count is what was sent.
func sendAll(t *testing.T, s *Session, p []byte) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.SendDatagram(p)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrDatagramQueueFull) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
}

// drain reads datagrams until none arrives for wait, counts the IP packets
// among them, and releases each.
func drain(s *Session, wait time.Duration) int {
	n := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		b, err := s.ReceiveDatagram(ctx)
		cancel()
		if err != nil {
			return n
		}
		if Kind(b) == TypeIP {
			n++
		}
		ReleaseDatagram(b)
	}
}
