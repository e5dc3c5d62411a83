package tunnel

import (
	"context"
	"encoding/binary"
	"testing"
	"time"
)

// TestReceiveBatches: every datagram reaches each in order, end closes each
// run (no run longer than maxRun), and the call returns once
// the session ends, its goroutine with it (goleak in TestMain).
func TestReceiveBatches(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds()))
	const n = 100
	type result struct {
		got  []uint16
		runs []int
		err  error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	go func() {
		var r result
		run := 0
		r.err = server.ReceiveBatches(ctx, func(b []byte) {
			if Kind(b) == TypeIP {
				r.got = append(r.got, binary.BigEndian.Uint16(b[4:6]))
				run++
			}
		}, func() {
			r.runs = append(r.runs, run)
			run = 0
		})
		done <- r
	}()
	for i := range n {
		p := ip4Packet(200, 0)
		binary.BigEndian.PutUint16(p[4:6], uint16(i))
		if err := client.SendDatagram(p); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // all delivered (loopback, no loss)
	client.Close("done")
	var r result
	select {
	case r = <-done:
	case <-time.After(testTimeout):
		t.Fatal("ReceiveBatches did not return after the session ended")
	}
	if r.err == nil {
		t.Error("ReceiveBatches returned no error at the end of the session")
	}
	if len(r.got) != n {
		t.Fatalf("%d datagrams handed over, want %d", len(r.got), n)
	}
	for i, id := range r.got {
		if int(id) != i {
			t.Fatalf("datagram %d handed over as number %d", id, i)
		}
	}
	total := 0
	for _, run := range r.runs {
		if run > maxRun {
			t.Errorf("a run of %d datagrams, more than %d", run, maxRun)
		}
		total += run
	}
	if total != n {
		t.Errorf("runs add up to %d datagrams, want %d: end not called after each run", total, n)
	}
}
