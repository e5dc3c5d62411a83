package tunnel

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// DatagramSender is what an Outbox sends on: a *Session, or a fake in
// tests.
type DatagramSender interface {
	// SendDatagram sends b, or fails; b is the caller's again once it
	// returns.
	SendDatagram(b []byte) error
}

var _ DatagramSender = (*Session)(nil)

// Errors of an Outbox's sends: the datagram was dropped. ErrOutboxBudget
// is an ErrOutboxFull as well.
var (
	ErrOutboxFull   = errors.New("tunnel: outbox full")
	ErrOutboxClosed = errors.New("tunnel: outbox closed")
	ErrOutboxBudget = fmt.Errorf("%w: the outboxes' shared budget is spent", ErrOutboxFull)
)

// OutboxReserve is what each Outbox may queue whatever its OutboxBudget
// says: a session with little queued is never refused because others
// hold the budget.
const OutboxReserve = 64

// OutboxBudget bounds the datagrams queued in the Outboxes of a process's
// sessions together. Each Outbox holds up to its own length; a budget
// keeps a thousand slow peers from holding a thousand full outboxes (2 MiB
// each at 1,024 datagrams): once the outboxes that share it hold limit
// datagrams in all, an Outbox that holds OutboxReserve or more drops what
// it is handed (ErrOutboxBudget). So together they hold at most limit
// datagrams plus OutboxReserve each.
type OutboxBudget struct {
	limit  int64
	queued atomic.Int64
}

// NewOutboxBudget returns a budget of limit datagrams.
func NewOutboxBudget(limit int) *OutboxBudget { return &OutboxBudget{limit: int64(limit)} }

// Queued returns the datagrams queued now in the Outboxes that share b.
func (b *OutboxBudget) Queued() int64 { return b.queued.Load() }

// Outbox sends one session's datagrams from a goroutine of its own, so
// that whoever hands it a datagram — the goroutine reading another
// session, the one writer of a netstack link shared by many sessions —
// never waits for this session's congestion window or quic-go's send
// queue (SendDatagram waits up to 5 ms when it is full). A full Outbox
// drops at once: the caller counts it. The bounded queue also absorbs
// bursts that TCP would otherwise see as loss.
//
// An idle Outbox holds its channel and nothing else: datagrams it copies
// are in pooled buffers, taken back once sent or dropped.
type Outbox struct {
	s      DatagramSender
	budget *OutboxBudget // nil: none
	failed func(error)
	ch     chan outItem
	done   chan struct{}
	wg     sync.WaitGroup
	// mu orders queueing with Close: a datagram is queued under its read
	// lock while closed is false, so that once Close has set it no send
	// puts anything in ch behind the drain.
	mu        sync.RWMutex
	closed    bool
	closeOnce sync.Once
}

// outItem is one queued datagram. pooled is b's buffer when it came from
// outboxPool, which takes it back once it is sent or dropped; received is
// the datagram b is part of when the outbox was handed a slice of one,
// given back to quic-go then.
type outItem struct {
	b        []byte
	pooled   *[]byte
	received []byte
}

// outboxPool holds the buffers of copied datagrams; 2048 bytes take any
// packet of a tunnel link (1500) with its framing.
var outboxPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// NewOutbox starts the Outbox of s, which holds up to n datagrams, fewer
// when budget (which may be nil) is spent. Close stops it. failed, when not nil, is called with each error of s's
// SendDatagram (on the Outbox's goroutine), and with ErrOutboxClosed for
// each datagram Close dropped: a Session counts its own drops, failed lets
// the caller count them as it counted its own sends. A datagram a send
// took is sent or reported to failed, once.
func NewOutbox(s DatagramSender, n int, budget *OutboxBudget, failed func(error)) *Outbox {
	o := &Outbox{s: s, budget: budget, failed: failed, ch: make(chan outItem, n), done: make(chan struct{})}
	o.wg.Add(1)
	go o.run()
	return o
}

// Send queues b, a slice of the datagram received, without copying it:
// received becomes the Outbox's, which releases it (ReleaseDatagram) once
// b is sent or dropped, and the caller must not use it again. received may
// be nil when b is not from quic-go. It fails with ErrOutboxFull or
// ErrOutboxClosed (ErrOutboxBudget is one of the first).
func (o *Outbox) Send(b, received []byte) error { return o.queue(outItem{b: b, received: received}) }

// SendCopy queues a copy of b, in a pooled buffer: b is the caller's
// again at once. It fails with ErrOutboxFull or ErrOutboxClosed.
func (o *Outbox) SendCopy(b []byte) error {
	bp := outboxPool.Get().(*[]byte)
	*bp = append((*bp)[:0], b...)
	return o.queue(outItem{b: *bp, pooled: bp})
}

// SendTagged builds the 0x30 datagram of packet under tag id for service
// in a pooled buffer and queues it (quic-go makes the only other copy). It
// fails when the service id cannot be framed, with ErrOutboxFull or with
// ErrOutboxClosed.
func (o *Outbox) SendTagged(id uint32, service string, packet []byte) error {
	bp := outboxPool.Get().(*[]byte)
	b, err := AppendTagged((*bp)[:0], id, service, packet)
	*bp = b
	if err != nil {
		outboxPool.Put(bp)
		return err
	}
	return o.queue(outItem{b: b, pooled: bp})
}

// SendTagReturn builds the tag-return datagram (0x31) of packet under tag
// in a pooled buffer and queues it: a gateway's reply to an agent behind
// a relay. It fails with ErrOutboxFull or ErrOutboxClosed.
func (o *Outbox) SendTagReturn(tag uint32, packet []byte) error {
	bp := outboxPool.Get().(*[]byte)
	*bp = AppendTagReturn((*bp)[:0], tag, packet)
	return o.queue(outItem{b: *bp, pooled: bp})
}

func (o *Outbox) queue(it outItem) error {
	o.mu.RLock()
	if o.closed {
		o.mu.RUnlock()
		it.release()
		return ErrOutboxClosed
	}
	if b := o.budget; b != nil {
		if b.queued.Add(1) > b.limit && len(o.ch) >= OutboxReserve {
			o.dequeued()
			o.mu.RUnlock()
			it.release()
			return ErrOutboxBudget
		}
	}
	select {
	case o.ch <- it:
		o.mu.RUnlock()
		return nil
	default:
		o.mu.RUnlock()
		o.dequeued()
		it.release()
		return ErrOutboxFull
	}
}

// dequeued gives back to the budget the place of a datagram that left the
// queue (sent or dropped) or never entered it.
func (o *Outbox) dequeued() {
	if o.budget != nil {
		o.budget.queued.Add(-1)
	}
}

// drop releases a datagram Close dropped and reports it.
func (o *Outbox) drop(it outItem) {
	o.dequeued()
	it.release()
	if o.failed != nil {
		o.failed(ErrOutboxClosed)
	}
}

// release returns a pooled buffer to the pool, a received datagram to
// quic-go.
func (it outItem) release() {
	if it.pooled != nil {
		outboxPool.Put(it.pooled)
	}
	if it.received != nil {
		ReleaseDatagram(it.received)
	}
}

func (o *Outbox) run() {
	defer o.wg.Done()
	for {
		select {
		case <-o.done:
			return
		case it := <-o.ch:
			select {
			case <-o.done: // both were ready: closed wins, nothing more goes out
				o.drop(it)
				return
			default:
			}
			o.dequeued()
			if err := o.s.SendDatagram(it.b); err != nil && o.failed != nil {
				o.failed(err)
			}
			it.release()
		}
	}
}

// Close stops the sender and waits for it (a send in progress ends within
// SendDatagram's 5 ms); what is queued is dropped, its buffers released,
// each reported to failed. Sends from the moment Close is called fail with
// ErrOutboxClosed. Close may be called more than once.
func (o *Outbox) Close() {
	o.closeOnce.Do(func() {
		o.mu.Lock()
		o.closed = true
		o.mu.Unlock()
		close(o.done)
		o.wg.Wait()
		for {
			select {
			case it := <-o.ch:
				o.drop(it)
			default:
				return
			}
		}
	})
}
