package main

import (
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
)

// udpSink counts the datagrams it receives, read in batches (recvmmsg), so
// that the receiver is never what limits a packets-per-second benchmark.
type udpSink struct{ n atomic.Int64 }

func (s *udpSink) serve(addr string) error {
	c, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return err
	}
	c.(*net.UDPConn).SetReadBuffer(8 << 20)
	pc := ipv4.NewPacketConn(c)
	msgs := make([]ipv4.Message, 64)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	go func() {
		for {
			n, err := pc.ReadBatch(msgs, 0)
			if err != nil {
				return
			}
			s.n.Add(int64(n))
		}
	}()
	return nil
}

// handler serves the count (and resets it) for the benchmark.
func (s *udpSink) handler(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintln(w, s.n.Swap(0))
}

// udpFlood sends size-byte datagrams to addr at pps packets per second
// for d, in batches (sendmmsg), spread over flows source ports, and
// reports how many it sent.
func udpFlood(addr string, pps int, d time.Duration, size, flows int) {
	pcs := make([]*ipv4.PacketConn, max(flows, 1))
	for i := range pcs {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			fail(err)
		}
		c.(*net.UDPConn).SetWriteBuffer(8 << 20)
		pcs[i] = ipv4.NewPacketConn(c.(*net.UDPConn))
	}
	const batch = 32
	msgs := make([]ipv4.Message, batch)
	payload := make([]byte, size)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{payload}
	}
	start := time.Now()
	end := start.Add(d)
	sent := 0
	for now := start; now.Before(end); now = time.Now() {
		due := int(now.Sub(start).Seconds() * float64(pps))
		if sent >= due {
			time.Sleep(50 * time.Microsecond)
			continue
		}
		n, err := pcs[(sent/batch)%len(pcs)].WriteBatch(msgs[:min(batch, due-sent)], 0)
		if err != nil {
			continue // ENOBUFS or a refused datagram: keep the pace
		}
		sent += n
	}
	emit(map[string]any{"sent": sent, "seconds": time.Since(start).Seconds()})
}
