package quic

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/quic-go/quic-go/internal/utils"
	"github.com/quic-go/quic-go/internal/utils/ringbuffer"
	"github.com/quic-go/quic-go/internal/wire"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

const (
	maxDatagramSendQueueLen = 32
	// ztgate: how long Add waits for room in a full send queue, once per
	// stall (upstream: as long as the queue stays full). A tunnel's
	// connections are fed by goroutines that serve many (a gateway's writer
	// to every tunnel session, an agent's reader of its TUN, which also
	// answers its DNS): a peer that stopped acknowledging (a crashed host,
	// a cut link, a closed laptop lid) kept its queue full, and every later
	// send waited until the idle timeout, holding up every other peer and
	// flow. Now a send that found no room in time drops its frame
	// (ErrDatagramQueueFull), and so do the next ones at once, until the
	// connection sends a frame again. A connection that sends at all frees
	// room within microseconds: its senders wait as before.
	maxDatagramSendWait = 5 * time.Millisecond
	// ztgate: 1024 instead of 128. A tunnel carries whole IP flows in DATAGRAM
	// frames, and the connection's run loop goes through every packet it has
	// queued (up to 256) without yielding: on one processor the reader runs
	// only once the burst is done. With 128, every datagram past the 128th of
	// such a burst was lost to the TCP connections inside the tunnel.
	maxDatagramRcvQueueLen = 1024
)

type datagramQueue struct {
	sendMx    sync.Mutex
	sendQueue ringbuffer.RingBuffer[*wire.DatagramFrame]
	stalled   bool          // ztgate: the queue stayed full for maxDatagramSendWait, and no frame left it since
	sent      chan struct{} // used to notify Add that a datagram was dequeued

	rcvMx    sync.Mutex
	rcvQueue [][]byte
	rcvd     chan struct{} // used to notify Receive that a new datagram was received

	closeErr error
	closed   chan struct{}

	hasData func()

	logger  utils.Logger
	qlogger qlogwriter.Recorder
}

func newDatagramQueue(hasData func(), logger utils.Logger, qlogger qlogwriter.Recorder) *datagramQueue {
	return &datagramQueue{
		hasData: hasData,
		rcvd:    make(chan struct{}, 1),
		sent:    make(chan struct{}, 1),
		closed:  make(chan struct{}),
		logger:  logger,
		qlogger: qlogger,
	}
}

// ErrDatagramQueueFull (ztgate) is returned by SendDatagram when the
// DATAGRAM send queue stayed full for maxDatagramSendWait, or is full and
// did so before without a frame sent since: the frame was dropped.
var ErrDatagramQueueFull = errors.New("DATAGRAM send queue full: the frame was dropped")

// Add queues a new DATAGRAM frame for sending.
// Up to 32 DATAGRAM frames will be queued.
// Once that limit is reached, Add blocks until the queue size has reduced
// (ztgate: for at most maxDatagramSendWait, then it drops the frame and
// returns ErrDatagramQueueFull; while stalled, at once).
func (h *datagramQueue) Add(f *wire.DatagramFrame) error {
	h.sendMx.Lock()

	var timeout <-chan time.Time
	for {
		// don't queue frames after the connection is closed
		select {
		case <-h.closed:
			h.sendMx.Unlock()
			return h.closeErr
		default:
		}

		if h.sendQueue.Len() < maxDatagramSendQueueLen {
			h.sendQueue.PushBack(f)
			h.sendMx.Unlock()
			h.hasData()
			return nil
		}
		if h.stalled {
			h.sendMx.Unlock()
			wire.PutDatagramBuffer(f.Data)
			return ErrDatagramQueueFull
		}
		select {
		case <-h.sent: // drain any stale notification, so we don't wake up immediately below
		default:
		}
		h.sendMx.Unlock()
		if timeout == nil {
			t := time.NewTimer(maxDatagramSendWait)
			defer t.Stop()
			timeout = t.C
		}
		// The queue is full. Wait until a frame is dequeued.
		select {
		case <-h.closed:
			return h.closeErr
		case <-h.sent:
			h.sendMx.Lock()
		case <-timeout:
			h.sendMx.Lock()
			if h.sendQueue.Len() >= maxDatagramSendQueueLen {
				h.stalled = true // until Pop: the next sends drop at once
			}
		}
	}
}

// Peek gets the next DATAGRAM frame for sending.
// If actually sent out, Pop needs to be called before the next call to Peek.
func (h *datagramQueue) Peek() *wire.DatagramFrame {
	h.sendMx.Lock()
	defer h.sendMx.Unlock()
	if h.sendQueue.Empty() {
		return nil
	}
	return h.sendQueue.PeekFront()
}

func (h *datagramQueue) Pop() {
	h.sendMx.Lock()
	defer h.sendMx.Unlock()
	_ = h.sendQueue.PopFront()
	h.stalled = false // ztgate: the connection sends again
	select {
	case h.sent <- struct{}{}:
	default:
	}
}

// HandleDatagramFrame handles a received DATAGRAM frame.
func (h *datagramQueue) HandleDatagramFrame(f *wire.DatagramFrame) {
	// ztgate: f.Data is already a copy of its own (parseDatagramFrame copies
	// the frame out of the packet, and nothing else keeps the frame), so it
	// is queued as it is instead of being copied a second time.
	data := f.Data
	var queued bool
	h.rcvMx.Lock()
	if len(h.rcvQueue) < maxDatagramRcvQueueLen {
		h.rcvQueue = append(h.rcvQueue, data)
		queued = true
		select {
		case h.rcvd <- struct{}{}:
		default:
		}
	}
	h.rcvMx.Unlock()

	if !queued {
		if h.logger.Debug() {
			h.logger.Debugf("Discarding received DATAGRAM frame (%d bytes payload)", len(f.Data))
		}
		if h.qlogger != nil {
			h.qlogger.RecordEvent(qlog.DatagramDropped{
				Direction: qlog.DirectionReceiving,
				Raw:       qlog.RawInfo{Length: len(f.Data), PayloadLength: qlog.OmitLength},
				Trigger:   "buffer_full",
			})
		}
	}
}

// Receive gets a received DATAGRAM frame.
func (h *datagramQueue) Receive(ctx context.Context) ([]byte, error) {
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	for {
		h.rcvMx.Lock()
		if len(h.rcvQueue) > 0 {
			data := h.rcvQueue[0]
			h.rcvQueue = h.rcvQueue[1:]
			h.rcvMx.Unlock()
			return data, nil
		}
		h.rcvMx.Unlock()
		select {
		case <-h.rcvd:
			continue
		case <-h.closed:
			return nil, h.closeErr
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// ReceiveBatch (ztgate) appends to dst the received DATAGRAM frames waiting
// in the queue, at most max of them, in order. It waits for one when none
// is waiting. Taking a run of them at once costs the reader one lock and
// one wake-up for the run instead of one per frame.
func (h *datagramQueue) ReceiveBatch(ctx context.Context, dst [][]byte, max int) ([][]byte, error) {
	if err := context.Cause(ctx); err != nil {
		return dst, err
	}
	for {
		h.rcvMx.Lock()
		if n := min(len(h.rcvQueue), max); n > 0 {
			dst = append(dst, h.rcvQueue[:n]...)
			clear(h.rcvQueue[:n])
			if n == len(h.rcvQueue) {
				h.rcvQueue = h.rcvQueue[:0]
			} else {
				h.rcvQueue = h.rcvQueue[n:]
			}
			h.rcvMx.Unlock()
			return dst, nil
		}
		h.rcvMx.Unlock()
		select {
		case <-h.rcvd:
			continue
		case <-h.closed:
			return dst, h.closeErr
		case <-ctx.Done():
			return dst, context.Cause(ctx)
		}
	}
}

func (h *datagramQueue) CloseWithError(e error) {
	h.closeErr = e
	close(h.closed)
}
