package tunnel

import (
	"context"

	"github.com/quic-go/quic-go"
)

// maxRun bounds the datagrams ReceiveBatches hands over between two calls
// of end. Beyond it quic-go's own queue of received datagrams holds the
// rest for the next run.
const maxRun = 64

// ReceiveBatches hands every datagram of the session to each, on the
// caller's goroutine, and calls end after each run of datagrams that were
// waiting together, until ctx is done or the session ends; it then returns
// the error that ended it. quic-go queues what arrives while the caller
// works on a run, and the next run takes it in one call, so the caller can
// pass a whole run on at once: a TUN write that coalesces a flow's
// segments, a netstack batch that merges them (GRO). An idle session's
// datagrams come one per run. A ztna-v2 data datagram comes without its
// padding, as from ReceiveDatagram.
//
// each must not keep the datagram, or any slice of it, once it returns:
// its buffer goes back to quic-go, to hold a datagram received later
// (copy what must stay). So a session that carries every packet of a
// tunnel allocates nothing per packet for them.
func (s *Session) ReceiveBatches(ctx context.Context, each func([]byte), end func()) error {
	run := make([][]byte, 0, maxRun)
	for {
		var err error
		run, err = s.conn.ReceiveDatagrams(ctx, run[:0], maxRun)
		if err != nil {
			return err
		}
		s.m.in.Add(float64(len(run)))
		if s.side == sideServer {
			s.noticeRemote()
		}
		for i, b := range run {
			if s.version == V2 {
				each(trimPadding(b))
			} else {
				each(b)
			}
			ReleaseDatagram(b)
			run[i] = nil
		}
		end()
	}
}

// ReleaseDatagram gives a datagram that ReceiveDatagram returned (whole, or
// cut at its end) back to quic-go, to hold one received later: the caller
// must not use b, or any slice of it, afterwards, and releases it once.
// A buffer released twice, or used after, would carry two datagrams at
// once. Only race builds (the tests) check: there a second release panics
// and a released buffer is overwritten (0xdb), so that a use after shows.
// Releasing is optional (a datagram never released is garbage as any
// other) and saves an allocation per datagram.
func ReleaseDatagram(b []byte) { quic.ReleaseDatagram(b) }
