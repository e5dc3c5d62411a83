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
	ch   chan *[]byte
	done chan struct{}
	wg   sync.WaitGroup
}

var outboxPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func newOutbox(s *tunnel.Session) *outbox {
	o := &outbox{s: s, ch: make(chan *[]byte, outboxLen), done: make(chan struct{})}
	o.wg.Add(1)
	go o.run()
	return o
}

// send queues a copy of b; it reports false when the queue is full or the
// outbox closed.
func (o *outbox) send(b []byte) bool {
	bp := outboxPool.Get().(*[]byte)
	*bp = append((*bp)[:0], b...)
	select {
	case o.ch <- bp:
		return true
	case <-o.done:
	default:
	}
	outboxPool.Put(bp)
	return false
}

func (o *outbox) run() {
	defer o.wg.Done()
	for {
		select {
		case <-o.done:
			return
		case bp := <-o.ch:
			o.s.SendDatagram(*bp)
			outboxPool.Put(bp)
		}
	}
}

// close stops the sender and waits for it; what is queued is dropped.
func (o *outbox) close() {
	close(o.done)
	o.wg.Wait()
}
