package gateway

import (
	"golang.org/x/net/ipv4"

	"github.com/ztgate/ztgate/internal/udpseg"
)

// A burst of one flow's datagrams leaves for the backend with UDP generic
// segmentation offload: a run of equal-sized datagrams is one sendmsg
// entry whose payload the kernel cuts into datagrams (UDP_SEGMENT), so the
// route, netfilter and the device are passed once per run instead of once
// per datagram. Datagrams keep their boundaries: the receiver sees the same
// datagrams, in order, as without it (internal/udpseg).

// udpSender writes a flow's datagrams to its connected backend socket in as
// few system calls as it can: one sendmmsg per burst, one entry per run of
// equal-sized datagrams when GSO is on.
type udpSender struct {
	pc   *ipv4.PacketConn
	gso  bool // off after a send that the path refused with GSO
	msgs []ipv4.Message
	oob  []byte // udpseg.CmsgSpace per entry of msgs
}

func newUDPSender(pc *ipv4.PacketConn, batch int) *udpSender {
	s := &udpSender{pc: pc, gso: udpseg.GSO(), msgs: make([]ipv4.Message, 0, batch)}
	if s.gso {
		s.oob = make([]byte, batch*udpseg.CmsgSpace)
	}
	return s
}

// gsoRun returns how many datagrams from the start of d one GSO entry can
// carry: all of the first one's size, except that a shorter one may end
// the run. Empty datagrams travel alone.
func gsoRun(d [][]byte) int {
	size := len(d[0])
	if size == 0 {
		return 1
	}
	n, total := 1, size
	for n < len(d) && n < udpseg.MaxSegments {
		l := len(d[n])
		if l == 0 || l > size || total+l > udpseg.MaxBytes {
			break
		}
		n, total = n+1, total+l
		if l < size {
			break
		}
	}
	return n
}

// plan lays d out as sendmmsg entries: a run per entry with GSO, a
// datagram per entry without.
func (s *udpSender) plan(d [][]byte) []ipv4.Message {
	msgs := s.msgs[:0]
	for i := 0; i < len(d); {
		n := 1
		if s.gso {
			n = gsoRun(d[i:])
		}
		m := ipv4.Message{Buffers: d[i : i+n]}
		if n > 1 {
			k := len(msgs) * udpseg.CmsgSpace
			m.OOB = udpseg.PutSegmentSize(s.oob[k:k+udpseg.CmsgSpace], len(d[i]))
		}
		msgs = append(msgs, m)
		i += n
	}
	s.msgs = msgs
	return msgs
}

// send writes d in order. A GSO entry that the path refuses (EINVAL: a
// segment larger than the route's MTU; EIO: a path that cannot segment,
// such as IPsec) turns GSO off for the flow and goes out again datagram by
// datagram. Any other error ends the send and is returned; datagrams after
// the failed one are not sent.
func (s *udpSender) send(d [][]byte) error {
	for len(d) > 0 {
		msgs := s.plan(d)
		k, err := s.pc.WriteBatch(msgs, 0)
		k = max(k, 0) // -1 with the error when the first entry failed
		for _, m := range msgs[:k] {
			d = d[len(m.Buffers):]
		}
		for i := range msgs {
			msgs[i] = ipv4.Message{}
		}
		switch {
		case err == nil && k == 0:
			return nil // cannot happen with entries to send; never spin
		case err == nil:
		case s.gso && udpseg.Refused(err):
			s.gso = false
		default:
			return err
		}
	}
	return nil
}
