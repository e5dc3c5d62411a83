package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
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
// reports how many it sent. With segments > 1 each entry of a batch is
// segments datagrams in one UDP_SEGMENT send, as QUIC stacks send: the kernel
// hands them on as one packet as far as it can.
func udpFlood(addr string, pps int, d time.Duration, size, flows, segments int) {
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
	segments = max(segments, 1)
	msgs := make([]ipv4.Message, batch)
	payload := make([]byte, size*segments)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{payload}
		if segments > 1 {
			msgs[i].OOB = segmentCmsg(size)
		}
	}
	start := time.Now()
	calls := 0
	sent := paced(pps, d, func(_, k int) int {
		calls++
		n, err := pcs[calls%len(pcs)].WriteBatch(msgs[:min(batch, (k+segments-1)/segments)], 0)
		if err != nil {
			return 0 // ENOBUFS or a refused datagram: keep the pace
		}
		return n * segments
	})
	emit(map[string]any{"sent": sent, "seconds": time.Since(start).Seconds()})
}

// segmentCmsg is the control message of a UDP_SEGMENT send of size-byte
// datagrams.
func segmentCmsg(size int) []byte {
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(size))
	return oob
}

// udpBlast serves downstream floods: a datagram "blast PPS MS SIZE" makes
// it send SIZE-byte datagrams back to the sender at PPS for MS
// milliseconds, in batches (sendmmsg), each starting with its sequence
// number (8 bytes, big endian), so the receiver can tell what was lost.
func udpBlast(addr string) error {
	c, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return err
	}
	c.(*net.UDPConn).SetWriteBuffer(8 << 20)
	pc := ipv4.NewPacketConn(c)
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			var pps, ms, size int
			if _, err := fmt.Sscanf(string(buf[:n]), "blast %d %d %d", &pps, &ms, &size); err != nil || size < 8 || size > 1400 || pps <= 0 || ms <= 0 || ms > 60_000 {
				continue
			}
			go blast(pc, from, pps, time.Duration(ms)*time.Millisecond, size)
		}
	}()
	return nil
}

func blast(pc *ipv4.PacketConn, to net.Addr, pps int, d time.Duration, size int) {
	const batch = 32
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, size)}
		msgs[i].Addr = to
	}
	paced(pps, d, func(sent, k int) int {
		k = min(batch, k)
		for i := range k {
			binary.BigEndian.PutUint64(msgs[i].Buffers[0], uint64(sent+i))
		}
		n, err := pc.WriteBatch(msgs[:k], 0)
		if err != nil {
			return 0 // ENOBUFS: keep the pace; the sequence numbers are not reused
		}
		return n
	})
}

// paced calls send with the number sent so far and how many are due until
// pps per second have been sent for d, sleeping while none are due, and
// returns the number sent. send returns how many it sent.
func paced(pps int, d time.Duration, send func(sent, due int) int) int {
	start := time.Now()
	end := start.Add(d)
	sent := 0
	for now := start; now.Before(end); now = time.Now() {
		due := int(now.Sub(start).Seconds() * float64(pps))
		if sent >= due {
			time.Sleep(50 * time.Microsecond)
			continue
		}
		sent += send(sent, due-sent)
	}
	return sent
}

// udpDrain asks the -udpblast server at addr for a flood of size-byte
// datagrams at pps for d, counts what arrives in batches (recvmmsg) and
// reports it with the number the server sent up to the last one received.
func udpDrain(addr string, pps int, d time.Duration, size int) {
	c, err := net.Dial("udp4", addr)
	if err != nil {
		fail(err)
	}
	c.(*net.UDPConn).SetReadBuffer(8 << 20)
	pc := ipv4.NewPacketConn(c.(*net.UDPConn))
	msgs := make([]ipv4.Message, 64)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	req := fmt.Sprintf("blast %d %d %d", pps, d.Milliseconds(), size)
	var received, last uint64
	var first time.Time
	for try := 0; try < 3 && received == 0; try++ { // the request or the first replies may be lost
		if _, err := c.Write([]byte(req)); err != nil {
			fail(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, err := pc.ReadBatch(msgs, 0)
			if err != nil {
				break
			}
			if received == 0 {
				first = time.Now()
				c.SetReadDeadline(first.Add(d + 300*time.Millisecond))
			}
			for _, m := range msgs[:n] {
				if m.N >= 8 {
					received++
					last = max(last, binary.BigEndian.Uint64(m.Buffers[0][:8]))
				}
			}
		}
	}
	emit(map[string]any{"received": received, "sent": last + 1, "seconds": d.Seconds()})
}

// udpGSOEcho sends n datagrams of size bytes to the echo server at addr in
// one sendmsg with UDP_SEGMENT, so that the kernel hands them on as one
// super-packet (through a TUN device with offloads: one read), then
// reads the echoes for up to 3 s and reports how many came back, and
// whether each was one of those sent, unchanged.
func udpGSOEcho(addr string, n, size int) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		fail(err)
	}
	defer c.Close()
	sent := make(map[string]bool, n)
	var all []byte
	for i := range n {
		d := make([]byte, size)
		for j := range d {
			d[j] = byte(i*31 + j)
		}
		binary.BigEndian.PutUint32(d, uint32(i))
		sent[string(d)] = true
		all = append(all, d...)
	}
	if _, _, err := c.(*net.UDPConn).WriteMsgUDP(all, segmentCmsg(size), nil); err != nil {
		fail(err)
	}
	echoed, intact := 0, 0
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	for echoed < n {
		k, err := c.Read(buf)
		if err != nil {
			break
		}
		echoed++
		if sent[string(buf[:k])] {
			intact++
			delete(sent, string(buf[:k]))
		}
	}
	emit(map[string]any{"sent": n, "echoed": echoed, "intact": intact})
}
