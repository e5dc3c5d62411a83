package netstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Tests of the way back of a UDP flow (UDPConn.Write, writeFast): where
// it would send differently from gVisor, it must not.

// newFlowStack returns a stack over 10.100.0.0/24 and 2001:db8:100::/64
// whose UDP flows the test takes from the returned channel.
func newFlowStack(t *testing.T) (*Stack, chan *UDPConn) {
	t.Helper()
	flows := make(chan *UDPConn, 4)
	ns, err := New(Config{Handler: flowTaker{flows}, Pools: []netip.Prefix{
		netip.MustParsePrefix("10.100.0.0/24"), netip.MustParsePrefix("2001:db8:100::/64")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Close)
	return ns, flows
}

// openFlow opens the IPv4 flow from udpClient4 to udpVIP4 on l with its
// first datagram and returns it; it is closed when the test ends.
func openFlow(t *testing.T, l *Link, flows chan *UDPConn) *UDPConn {
	t.Helper()
	l.Deliver(udpPacket(udpClient4, udpVIP4, []byte("first"), nil))
	fl := <-flows
	t.Cleanup(func() { fl.Close() })
	return fl
}

func newLinkOf(t *testing.T, ns *Stack, cfg LinkConfig) *Link {
	t.Helper()
	l, err := ns.NewLink(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// waitPackets waits up to 5 s for out to hold n packets, then a little
// longer for any more, and returns them all (n 0: what came in that
// little while).
func waitPackets(t *testing.T, out *capture, n int) [][]byte {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); len(out.all()) < n && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return out.all()
}

// TestUDPWriteLeavesOnTheFlowsLink: gVisor binds and connects a flow's
// endpoint through the link its first datagram came in on, and sends every
// datagram of the flow through it, whichever link's route to the client is
// more specific. Once that link is closed, a write fails, and nothing
// leaves through another link.
func TestUDPWriteLeavesOnTheFlowsLink(t *testing.T) {
	for _, c := range []struct {
		name       string
		inSpecific bool // the flow comes in on the link with the more specific route
		closeIt    bool // the flow's link is closed before the write
	}{
		{"in on the default route's link", false, false},
		{"in on the more specific route's link", true, false},
		{"in on the default route's link, closed", false, true},
		{"in on the more specific route's link, closed", true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns, flows := newFlowStack(t)
			defOut, specOut := &capture{}, &capture{}
			def := newLinkOf(t, ns, LinkConfig{Name: "default", MTU: 1500, Output: defOut})
			spec := newLinkOf(t, ns, LinkConfig{Name: "specific", MTU: 1500, Output: specOut,
				Routes: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}})
			in, inOut, otherOut := def, defOut, specOut
			if c.inSpecific {
				in, inOut, otherOut = spec, specOut, defOut
			}
			in.Deliver(udpPacket(udpClient4, udpVIP4, []byte("first"), nil))
			fl := <-flows
			defer fl.Close()
			if c.closeIt {
				in.Close()
				if _, err := fl.Write([]byte("after")); err == nil {
					t.Error("a write after the flow's link closed succeeded")
				}
				if _, err := fl.conn.Write([]byte("after")); err == nil { // the reference
					t.Error("gVisor's write after the flow's link closed succeeded")
				}
				if got := waitPackets(t, otherOut, 0); len(got) != 0 {
					t.Errorf("%d packets left through the other link", len(got))
				}
				return
			}
			if _, err := fl.Write([]byte("reply")); err != nil {
				t.Fatal(err)
			}
			if _, err := fl.conn.Write([]byte("reply")); err != nil { // gVisor's, the reference
				t.Fatal(err)
			}
			if got := waitPackets(t, inOut, 2); len(got) != 2 || string(got[0]) != string(got[1]) {
				t.Errorf("the flow's link sent %d packets, want 2 alike", len(got))
			}
			if got := otherOut.all(); len(got) != 0 {
				t.Errorf("the other link sent %d packets, want none", len(got))
			}
		})
	}
}

// gateOutput holds every WritePackets call until open is closed.
type gateOutput struct {
	capture
	open chan struct{}
}

func (g *gateOutput) WritePackets(pkts [][]byte) error {
	<-g.open
	return g.capture.WritePackets(pkts)
}

// TestUDPWriteSendBuffer: while the link does not drain, a flow's writes
// block once its datagrams waiting on the link hold its send buffer (twice
// at most: the fast path's bound, then gVisor's), as gVisor's did, instead
// of filling the link's queue, which every flow of the link shares. Once
// the link drains, every datagram leaves, in the order written.
func TestUDPWriteSendBuffer(t *testing.T) {
	ns, flows := newFlowStack(t)
	out := &gateOutput{open: make(chan struct{})}
	l := newLinkOf(t, ns, LinkConfig{MTU: 1500, Output: out, Async: true, QueueLen: 1 << 20})
	fl := openFlow(t, l, flows)

	const n, size = 3000, 1000
	var written atomic.Int64
	done := make(chan error, 1)
	go func() {
		p := make([]byte, size)
		for i := range n {
			binary.BigEndian.PutUint32(p, uint32(i))
			if _, err := fl.Write(p); err != nil {
				done <- err
				return
			}
			written.Add(1)
		}
		done <- nil
	}()
	// Wait until the writer stops (blocked) or ends.
	last := int64(-1)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		w := written.Load()
		if w == last || w == n {
			break
		}
		last = w
	}
	charge := int64(header.UDPMinimumSize + header.IPv4MaximumHeaderSize + size) // what gVisor counts per datagram
	bound := 2 * (fl.ep.SocketOptions().GetSendBufferSize()/charge + 1)
	if w := written.Load(); w > bound {
		t.Errorf("%d datagrams written while the link did not drain, want at most %d", w, bound)
	} else {
		t.Logf("%d datagrams written while the link did not drain (at most %d)", w, bound)
	}
	close(out.open)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the writer is still blocked after the link drained (%d written)", written.Load())
	}
	got := waitPackets(t, &out.capture, n)
	if len(got) != n {
		t.Fatalf("%d datagrams sent, want %d", len(got), n)
	}
	for i, p := range got {
		if len(p) != 28+size || binary.BigEndian.Uint32(p[28:]) != uint32(i) {
			t.Fatalf("datagram %d of %d bytes carries %d", i, len(p), binary.BigEndian.Uint32(p[28:]))
		}
	}
}

// TestUDPWriteDeadline: a write deadline that has passed fails the write,
// as it does through gVisor (and for any net.Conn), and nothing is sent;
// cleared, the flow writes again.
func TestUDPWriteDeadline(t *testing.T) {
	for _, c := range []struct {
		name string
		set  func(*UDPConn, time.Time) error
	}{
		{"SetWriteDeadline", (*UDPConn).SetWriteDeadline},
		{"SetDeadline", (*UDPConn).SetDeadline},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns, flows := newFlowStack(t)
			out := &capture{}
			l := newLinkOf(t, ns, LinkConfig{MTU: 1500, Output: out})
			fl := openFlow(t, l, flows)
			c.set(fl, time.Now().Add(-time.Second))
			_, err := fl.Write([]byte("late"))
			if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("a write past its deadline returned %v, want a timeout", err)
			}
			if got := waitPackets(t, out, 0); len(got) != 0 {
				t.Errorf("%d packets sent past the deadline", len(got))
			}
			c.set(fl, time.Time{})
			if _, err := fl.Write([]byte("on time")); err != nil {
				t.Fatal(err)
			}
			if got := waitPackets(t, out, 1); len(got) != 1 {
				t.Errorf("%d packets sent, want 1", len(got))
			}
		})
	}
}

// icmpPortUnreachable4 is an ICMP port unreachable from src to dst about
// the packet quoted (its first 28 bytes), with its checksums.
func icmpPortUnreachable4(src, dst netip.Addr, quoted []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+28)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: toAddr(src), DstAddr: toAddr(dst)})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(header.ICMPv4PortUnreachable)
	copy(icmp[header.ICMPv4MinimumSize:], quoted)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return b
}

// TestUDPWritePendingError: the client's ICMP port unreachable about the
// flow leaves an error on its endpoint, which gVisor's next write returns,
// as syscall.ECONNREFUSED, instead of sending its datagram (the gateway's
// backend reader then sends it again); the write after it sends. The fast path must not leave the error to
// the flow's next read, which would end the flow.
func TestUDPWritePendingError(t *testing.T) {
	ns, flows := newFlowStack(t)
	out := &capture{}
	l := newLinkOf(t, ns, LinkConfig{MTU: 1500, Output: out})
	fl := openFlow(t, l, flows)
	sent := udpPacket(udpVIP4, udpClient4, []byte("reply"), nil)
	l.Deliver(icmpPortUnreachable4(udpClient4.Addr(), udpVIP4.Addr(), sent[:28]))
	for deadline := time.Now().Add(5 * time.Second); fl.ep.Readiness(waiter.EventErr) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client's port unreachable left no error on the flow")
		}
	}
	if _, err := fl.Write([]byte("refused")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("the write after the client's port unreachable returned %v, want ECONNREFUSED", err)
	}
	if _, err := fl.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	if got := waitPackets(t, out, 1); len(got) != 1 || string(got[0][28:]) != "again" {
		t.Errorf("sent %d packets, want the one after the error", len(got))
	}
}

// TestUDPWriteJumbo: on a link whose MTU exceeds what an IPv4 header's
// length can say, the largest datagram that fits one packet is sent as
// gVisor sends it, and a larger one fails as gVisor's write does (message
// too long), never sent as a packet with a wrapped length.
func TestUDPWriteJumbo(t *testing.T) {
	ns, flows := newFlowStack(t)
	out := &capture{}
	l := newLinkOf(t, ns, LinkConfig{MTU: 70000, Output: out})
	fl := openFlow(t, l, flows)
	largest := make([]byte, 65535-28)
	if _, err := fl.Write(largest); err != nil {
		t.Fatal(err)
	}
	if _, err := fl.conn.Write(largest); err != nil { // gVisor's, the reference
		t.Fatal(err)
	}
	if got := waitPackets(t, out, 2); len(got) != 2 || !bytes.Equal(got[0], got[1]) {
		t.Errorf("the largest datagram: %d packets sent, want 2 alike", len(got))
	}
	if _, err := fl.Write(make([]byte, len(largest)+1)); err == nil {
		t.Error("a datagram too long for an IPv4 packet was written")
	}
	if got := out.all(); len(got) != 2 {
		t.Errorf("%d packets sent, want 2", len(got))
		for i, p := range got[2:] {
			t.Errorf("packet %d of %d bytes says it has %d", i, len(p), header.IPv4(p).TotalLength())
		}
	}
}

// TestUDPReadPendingError: the client's ICMP port unreachable about the
// flow is what the flow's next read returns, as syscall.ECONNREFUSED
// (the gateway goes on past it), instead of a datagram; the read after it
// returns the datagram.
func TestUDPReadPendingError(t *testing.T) {
	ns, flows := newFlowStack(t)
	l := newLinkOf(t, ns, LinkConfig{MTU: 1500, Output: &capture{}})
	fl := openFlow(t, l, flows)
	buf := make([]byte, 64)
	if n, err := fl.TryRead(buf); err != nil || string(buf[:n]) != "first" {
		t.Fatalf("first read: %q, %v", buf[:n], err)
	}
	sent := udpPacket(udpVIP4, udpClient4, []byte("reply"), nil)
	l.Deliver(icmpPortUnreachable4(udpClient4.Addr(), udpVIP4.Addr(), sent[:28]))
	l.Deliver(udpPacket(udpClient4, udpVIP4, []byte("second"), nil))
	if _, err := fl.TryRead(buf); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("the read after the client's port unreachable: %v, want ECONNREFUSED", err)
	}
	if n, err := fl.TryRead(buf); err != nil || string(buf[:n]) != "second" {
		t.Fatalf("the read after the error: %q, %v; want second", buf[:n], err)
	}
}
