package resolver

import (
	"net"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Batch I/O on a *net.UDPConn: one recvmmsg and one sendmmsg per batch on
// Linux (one message per call elsewhere), which halves the system calls of
// a loaded server and most of the runtime's per-call work.
const (
	batchSize = 32
	// batchBuf is the receive buffer of one message: no sane query comes
	// near it, and one that fills it is taken as cut short.
	batchBuf = 4096
)

// batchConn is what ipv4.PacketConn and ipv6.PacketConn share.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchConn(c *net.UDPConn) batchConn {
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() != nil {
		return ipv4.NewPacketConn(c)
	}
	return ipv6.NewPacketConn(c)
}

// batch holds the messages of one reader: in are read, the first n of out
// are the replies to send.
type batch struct {
	in, out []ipv4.Message
	n       int
}

func newBatch() *batch {
	b := &batch{in: make([]ipv4.Message, batchSize), out: make([]ipv4.Message, batchSize)}
	for i := range b.in {
		b.in[i].Buffers = [][]byte{make([]byte, batchBuf)}
		b.out[i].Buffers = [][]byte{nil}
	}
	return b
}

// readBatches is the loop of one reader of a *net.UDPConn.
func (s *Server) readBatches(c *net.UDPConn) error {
	bc := newBatchConn(c)
	w := s.newWorker()
	b := newBatch()
	for {
		n, err := bc.ReadBatch(b.in, 0)
		if err != nil {
			return err
		}
		b.n = 0
		for i := range b.in[:n] {
			s.handleBatched(w, c, b, &b.in[i])
		}
		for sent := 0; sent < b.n; {
			k, err := bc.WriteBatch(b.out[sent:b.n], 0)
			if err != nil {
				s.m.dropped[dropWrite].Add(float64(b.n - sent))
				break
			}
			sent += k
		}
	}
}

// handleBatched answers one received message, queueing the reply in b.out.
func (s *Server) handleBatched(w *worker, c *net.UDPConn, b *batch, m *ipv4.Message) {
	from, ok := m.Addr.(*net.UDPAddr)
	if !ok {
		return
	}
	ap := from.AddrPort()
	raw := m.Buffers[0][:m.N]
	var out []byte
	var fwd bool
	if m.N == batchBuf {
		s.m.malformed.Inc()
		out = s.headerOnly(w, raw, dns.RcodeFormatError)
	} else {
		out, fwd = s.handle(w, raw, ap.Addr().Unmap(), false)
	}
	switch {
	case out != nil: // w.out is reused by the next message: copy
		o := &b.out[b.n]
		o.Buffers[0] = append(o.Buffers[0][:0], out...)
		o.Addr = m.Addr
		b.n++
	case fwd:
		s.forwardAsync(raw, ap.Addr().Unmap(), func(reply []byte) error {
			_, err := c.WriteToUDPAddrPort(reply, ap)
			return err
		})
	}
}
