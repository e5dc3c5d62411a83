package relay

import (
	"sync"

	"github.com/ztgate/ztgate/tunnel"
)

// outboxLen bounds the datagrams waiting to be sent on one session.
const outboxLen = 1024

// outbox sends one session's datagrams from a goroutine of its own, so
// that the goroutine reading another session never waits for this one's
// congestion window: quic-go drops what arrives while its 128-datagram
// receive queue is full, and a reader stalled on a send lets it fill. The
// bounded queue turns those silent drops into a counted drop of our own,
// and absorbs bursts that TCP would otherwise see as loss.
type outbox struct {
	s    *tunnel.Session
	ch   chan outItem
	done chan struct{}
	wg   sync.WaitGroup
}

// outItem is one queued datagram. pooled is b's buffer when it came from
// outboxPool, which takes it back once it is sent or dropped; received is
// the datagram b is part of when the outbox was handed a slice of one,
// given back to the tunnel then.
type outItem struct {
	b        []byte
	pooled   *[]byte
	received []byte
}

var outboxPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func newOutbox(s *tunnel.Session) *outbox {
	o := &outbox{s: s, ch: make(chan outItem, outboxLen), done: make(chan struct{})}
	o.wg.Add(1)
	go o.run()
	return o
}

// send queues b, a slice of the datagram received, without copying it:
// received becomes the outbox's, which releases it (tunnel.ReleaseDatagram)
// once b is sent or dropped, and the caller must not use it again. It
// reports false when the queue is full or the outbox closed.
func (o *outbox) send(b, received []byte) bool { return o.queue(outItem{b: b, received: received}) }

// sendTagged builds the 0x30 datagram of packet under tag id for service
// in a pooled buffer and queues it (quic-go makes the only other copy). It
// reports false when the service id cannot be framed, the queue is full or
// the outbox closed.
func (o *outbox) sendTagged(id uint32, service string, packet []byte) bool {
	bp := outboxPool.Get().(*[]byte)
	b, err := tunnel.AppendTagged((*bp)[:0], id, service, packet)
	*bp = b
	if err != nil {
		outboxPool.Put(bp)
		return false
	}
	return o.queue(outItem{b: b, pooled: bp})
}

func (o *outbox) queue(it outItem) bool {
	select {
	case o.ch <- it:
		return true
	case <-o.done:
	default:
	}
	it.release()
	return false
}

// release returns a pooled buffer to the pool, a received datagram to the
// tunnel.
func (it outItem) release() {
	if it.pooled != nil {
		outboxPool.Put(it.pooled)
	}
	if it.received != nil {
		tunnel.ReleaseDatagram(it.received)
	}
}

func (o *outbox) run() {
	defer o.wg.Done()
	for {
		select {
		case <-o.done:
			return
		case it := <-o.ch:
			o.s.SendDatagram(it.b)
			it.release()
		}
	}
}

// close stops the sender and waits for it; what is queued is dropped.
func (o *outbox) close() {
	close(o.done)
	o.wg.Wait()
}
