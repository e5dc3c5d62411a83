package tunnel

import "context"

// maxRun bounds the datagrams ReceiveBatches hands over between two calls
// of end, and runQueue the datagrams received but not yet handed over: a
// few runs. Beyond it the receiving goroutine waits and quic-go's own
// queue of received datagrams takes the rest.
const (
	maxRun   = 64
	runQueue = 256
)

// ReceiveBatches hands every datagram of the session to each, on the
// caller's goroutine, and calls end after each run of datagrams that were
// waiting together, until ctx is done or the session ends; it then returns
// ReceiveDatagram's error. A goroutine of its own receives meanwhile, so a
// run builds up while the caller works on the last one, and the caller can
// pass a whole run on at once: a TUN write that coalesces a flow's
// segments, a netstack batch that merges them (GRO). An idle session's
// datagrams come one per run. Each datagram is each's to keep.
func (s *Session) ReceiveBatches(ctx context.Context, each func([]byte), end func()) error {
	ch := make(chan []byte, runQueue)
	errc := make(chan error, 1)
	go func() {
		defer close(ch)
		for {
			b, err := s.ReceiveDatagram(ctx)
			if err != nil {
				errc <- err
				return
			}
			ch <- b
		}
	}()
	for b := range ch {
		each(b)
	run:
		for n := 1; n < maxRun; n++ {
			select {
			case b, ok := <-ch:
				if !ok {
					break run
				}
				each(b)
			default:
				break run
			}
		}
		end()
	}
	return <-errc
}
