package tunnel

import (
	"bytes"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestOutboxQueue checks what the outbox queues: a 0x30 datagram built in
// a pooled buffer, a handed slice as it is (no copy), a copy in a pooled
// buffer, and nothing once the queue is full or the service id cannot be
// framed.
func TestOutboxQueue(t *testing.T) {
	o := &Outbox{ch: make(chan outItem, 2), done: make(chan struct{})}
	packet := []byte{0x45, 1, 2, 3}
	if err := o.SendTagged(7, "echo", packet); err != nil {
		t.Fatalf("SendTagged with room in the queue: %v", err)
	}
	it := <-o.ch
	id, svc, pkt, err := ParseTagged(it.b)
	if err != nil || id != 7 || string(svc) != "echo" || !bytes.Equal(pkt, packet) {
		t.Errorf("queued 0x30 = %d %q % x, %v", id, svc, pkt, err)
	}
	if it.pooled == nil {
		t.Error("a 0x30 datagram was not built in a pooled buffer")
	}
	it.release()

	if err := o.Send(packet, nil); err != nil {
		t.Fatalf("Send with room in the queue: %v", err)
	}
	it = <-o.ch
	if &it.b[0] != &packet[0] || it.pooled != nil {
		t.Error("Send copied the slice it was handed, or marked it pooled")
	}

	if err := o.SendCopy(packet); err != nil {
		t.Fatalf("SendCopy with room in the queue: %v", err)
	}
	it = <-o.ch
	if !bytes.Equal(it.b, packet) || &it.b[0] == &packet[0] || it.pooled == nil {
		t.Errorf("SendCopy queued % x (pooled %v), not a pooled copy of % x", it.b, it.pooled != nil, packet)
	}
	it.release()

	if o.SendTagged(7, "", packet) == nil {
		t.Error("SendTagged queued a datagram for an empty service id")
	}
	o.Send(packet, nil)
	o.Send(packet, nil)
	for name, err := range map[string]error{
		"Send": o.Send(packet, nil), "SendCopy": o.SendCopy(packet), "SendTagged": o.SendTagged(7, "echo", packet),
	} {
		if !errors.Is(err, ErrOutboxFull) {
			t.Errorf("%s over the bound: %v, want ErrOutboxFull", name, err)
		}
	}
}

// blockedSender holds every SendDatagram until release is closed, then
// fails it with err.
type blockedSender struct {
	entered chan struct{} // one value per call
	release chan struct{}
	err     error
}

func (s *blockedSender) SendDatagram([]byte) error {
	s.entered <- struct{}{}
	<-s.release
	return s.err
}

// TestOutboxSendFailed: each error of the session's SendDatagram reaches
// the Outbox's failed.
func TestOutboxSendFailed(t *testing.T) {
	s := &blockedSender{entered: make(chan struct{}, 16), release: make(chan struct{}), err: ErrDatagramQueueFull}
	close(s.release)
	failed := make(chan error, 16)
	o := NewOutbox(s, 8, nil, func(err error) { failed <- err })
	defer o.Close()
	for range 3 {
		if err := o.SendCopy([]byte{0x45}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		select {
		case err := <-failed:
			if !errors.Is(err, ErrDatagramQueueFull) {
				t.Errorf("failed(%v), want the session's error", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("failed called %d times for 3 failed sends", i)
		}
	}
}

// TestOutboxCloseDropsQueue: Close waits for the send in progress, sends
// nothing it held queued and stops the goroutine; later sends fail.
func TestOutboxCloseDropsQueue(t *testing.T) {
	s := &blockedSender{entered: make(chan struct{}, 16), release: make(chan struct{})}
	o := NewOutbox(s, 8, nil, nil)
	for range 4 {
		if err := o.SendCopy([]byte{0x45}); err != nil {
			t.Fatal(err)
		}
	}
	<-s.entered // the first is being sent, three wait
	closed := make(chan struct{})
	go func() { o.Close(); close(closed) }()
	<-o.done
	select {
	case <-closed:
		t.Fatal("Close returned while a send was in progress")
	case <-time.After(20 * time.Millisecond):
	}
	close(s.release)
	<-closed
	if n := len(s.entered); n != 0 {
		t.Errorf("%d queued datagrams sent after Close", n)
	}
	if n := len(o.ch); n != 0 {
		t.Errorf("%d datagrams left queued after Close", n)
	}
	if err := o.SendCopy([]byte{0x45}); !errors.Is(err, ErrOutboxClosed) {
		t.Errorf("SendCopy after Close: %v, want ErrOutboxClosed", err)
	}
	o.Close() // a second Close is harmless
}

// TestOutboxCloseAccountsEveryDatagram: every datagram an Outbox took
// (its Send returned nil) is sent or reported to failed, those Close
// drops too (with ErrOutboxClosed), even with senders racing Close: the
// caller counts each drop, and a datagram taken but dropped unreported
// would be a reply lost without a count.
func TestOutboxCloseAccountsEveryDatagram(t *testing.T) {
	for range 20 {
		s := &blockedSender{entered: make(chan struct{}, 1<<16), release: make(chan struct{})}
		var mu sync.Mutex
		var failedClosed, failedOther int
		o := NewOutbox(s, 64, nil, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if errors.Is(err, ErrOutboxClosed) {
				failedClosed++
			} else {
				failedOther++
			}
		})
		var accepted atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for {
					switch err := o.SendCopy([]byte{0x45}); {
					case err == nil:
						accepted.Add(1)
					case errors.Is(err, ErrOutboxClosed):
						return
					}
					runtime.Gosched()
				}
			})
		}
		<-s.entered // one is being sent, more wait
		for accepted.Load() < 64 {
			runtime.Gosched()
		}
		closed := make(chan struct{})
		go func() { o.Close(); close(closed) }()
		<-o.done
		close(s.release)
		<-closed
		wg.Wait()
		mu.Lock()
		if sent := int64(len(s.entered)) + 1; accepted.Load() != sent+int64(failedClosed+failedOther) {
			t.Fatalf("%d datagrams taken, %d sent, %d reported dropped by Close: %d lost without a word",
				accepted.Load(), sent, failedClosed, accepted.Load()-sent-int64(failedClosed))
		}
		mu.Unlock()
	}
}

// TestOutboxBudget: outboxes that share a budget hold at most its limit
// together, plus OutboxReserve each, so that many slow sessions do not
// each hold a full outbox; a session with less than its reserve queued is
// never refused for the others; what leaves a queue (sent or dropped by
// Close) gives its place back.
func TestOutboxBudget(t *testing.T) {
	const limit = 200
	budget := NewOutboxBudget(limit)
	type box struct {
		s *blockedSender
		o *Outbox
	}
	open := func() box {
		s := &blockedSender{entered: make(chan struct{}, 1<<12), release: make(chan struct{})}
		o := NewOutbox(s, 1024, budget, nil)
		if err := o.SendCopy([]byte{0x45}); err != nil {
			t.Fatal(err)
		}
		<-s.entered // the first datagram is being sent: it left the queue
		return box{s, o}
	}
	// fill queues into b until it refuses, and returns what it took and
	// the error that stopped it.
	fill := func(b box) (int, error) {
		for n := 0; ; n++ {
			if err := b.o.SendCopy([]byte{0x45}); err != nil {
				return n, err
			}
		}
	}
	a, b, c := open(), open(), open()
	closeBox := func(x box) { close(x.s.release); x.o.Close() }

	if n, err := fill(a); n != limit || !errors.Is(err, ErrOutboxBudget) || !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("the first slow session took %d before %v; want %d, then ErrOutboxBudget (an ErrOutboxFull)", n, err, limit)
	}
	for i, x := range []box{b, c} {
		if n, err := fill(x); n != OutboxReserve || !errors.Is(err, ErrOutboxBudget) {
			t.Fatalf("session %d, budget spent, took %d before %v; want its reserve %d, then ErrOutboxBudget", i+2, n, err, OutboxReserve)
		}
	}
	if got, want := budget.Queued(), int64(limit+2*OutboxReserve); got != want {
		t.Errorf("Queued() = %d, want %d", got, want)
	}

	closeBox(a) // its 200 queued are dropped: their places return
	if got := budget.Queued(); got != 2*OutboxReserve {
		t.Errorf("after the first session closed, Queued() = %d, want %d", got, 2*OutboxReserve)
	}
	if n, err := fill(b); n != limit-2*OutboxReserve || !errors.Is(err, ErrOutboxBudget) {
		t.Errorf("with the budget given back, a session took %d more before %v; want %d", n, err, limit-2*OutboxReserve)
	}
	closeBox(b)
	closeBox(c)
	if got := budget.Queued(); got != 0 {
		t.Errorf("every outbox closed: Queued() = %d, want 0", got)
	}

	// Sent datagrams give their places back too.
	d := open()
	if n, _ := fill(d); n != limit {
		t.Fatalf("a session alone took %d, want %d", n, limit)
	}
	close(d.s.release)
	deadline := time.Now().Add(5 * time.Second)
	for budget.Queued() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := budget.Queued(); got != 0 {
		t.Errorf("everything sent: Queued() = %d, want 0", got)
	}
	d.o.Close()
}
