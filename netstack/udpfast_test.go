package netstack

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// flowTaker accepts every UDP flow and hands its connection to the test.
type flowTaker struct {
	flows chan *UDPConn
}

func (flowTaker) HandleTCP(req *TCPRequest) { req.Refuse() }
func (h flowTaker) HandleUDP(req *UDPRequest) bool {
	c, err := req.Accept()
	if err != nil {
		return false
	}
	h.flows <- c
	return true
}
func (flowTaker) HandleEcho(req *EchoRequest) { req.Drop() }

var (
	udpClient4 = netip.MustParseAddrPort("198.51.100.10:40000")
	udpVIP4    = netip.MustParseAddrPort("10.100.0.5:53")
	udpClient6 = netip.MustParseAddrPort("[2001:db8::10]:40000")
	udpVIP6    = netip.MustParseAddrPort("[2001:db8:100::5]:53")
)

// udpPacket builds an IP packet carrying a UDP datagram from src to dst,
// with correct checksums; IPv4 options, if any, must be a multiple of 4.
func udpPacket(src, dst netip.AddrPort, payload []byte, options []byte) []byte {
	hl := header.IPv6MinimumSize
	if src.Addr().Is4() {
		hl = header.IPv4MinimumSize + len(options)
	}
	b := make([]byte, hl+header.UDPMinimumSize+len(payload))
	if src.Addr().Is4() {
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
			SrcAddr: toAddr(src.Addr()), DstAddr: toAddr(dst.Addr()),
		})
		copy(b[header.IPv4MinimumSize:hl], options)
		b[0] = 0x40 | byte(hl/4)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength: uint16(len(b) - hl), TransportProtocol: header.UDPProtocolNumber,
			HopLimit: 64, SrcAddr: toAddr(src.Addr()), DstAddr: toAddr(dst.Addr()),
		})
	}
	u := header.UDP(b[hl:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, toAddr(src.Addr()), toAddr(dst.Addr()), uint16(len(u)))
	u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(payload, xsum)))
	return b
}

// udpPackets counts the datagrams gVisor's UDP took in.
func udpPackets(ns *Stack) uint64 { return ns.s.Stats().UDP.PacketsReceived.Value() }

// readAll reads what the flow has queued, waiting up to a second for the
// first datagram.
func readAll(t *testing.T, c *UDPConn) [][]byte {
	t.Helper()
	var got [][]byte
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
	if err := c.WaitReadable(nil, timer.C); err != nil {
		return nil
	}
	for {
		buf := make([]byte, 65536)
		n, err := c.TryRead(buf)
		if errors.Is(err, ErrWouldBlock) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n])
	}
}

func newFastFixture(t *testing.T) (*Stack, *Link, chan *UDPConn, *[numDropReasons]atomic.Int64) {
	t.Helper()
	var drops [numDropReasons]atomic.Int64
	flows := make(chan *UDPConn, 16)
	ns, l := newTestLink(t, Config{Handler: flowTaker{flows}, OnDrop: func(r DropReason) { drops[r].Add(1) }}, &capture{})
	return ns, l, flows, &drops
}

// TestUDPFastPath: after the flow's first datagram, which gVisor takes and
// the handler accepts, the flow's datagrams reach it without gVisor, in
// order, with their boundaries, for IPv4 and IPv6.
func TestUDPFastPath(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
	}{
		{"IPv4", udpClient4, udpVIP4},
		{"IPv6", udpClient6, udpVIP6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, l, flows, _ := newFastFixture(t)
			l.Deliver(udpPacket(tc.src, tc.dst, []byte("first"), nil))
			c := <-flows
			defer c.Close()
			var want [][]byte
			want = append(want, []byte("first"))
			for i := range 100 {
				p := bytes.Repeat([]byte{byte(i)}, i*13%1400)
				want = append(want, p)
				l.Deliver(udpPacket(tc.src, tc.dst, p, nil))
			}
			got := readAll(t, c)
			if len(got) != len(want) {
				t.Fatalf("read %d datagrams, want %d", len(got), len(want))
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("datagram %d: %d bytes, want %d", i, len(got[i]), len(want[i]))
				}
			}
			if n := udpPackets(ns); n != 1 {
				t.Errorf("gVisor's UDP took %d datagrams, want only the first", n)
			}
		})
	}
}

// TestUDPFastPathChecks: a datagram of an accepted flow that gVisor would
// drop is dropped and counted by gVisor, one it would take in a form the
// fast path does not read (IPv4 options, a UDP length short of the IP
// payload) still arrives, through gVisor.
func TestUDPFastPathChecks(t *testing.T) {
	good := func() []byte { return udpPacket(udpClient4, udpVIP4, []byte("payload"), nil) }
	for _, tc := range []struct {
		name      string
		pkt       []byte
		want      string // "" when it must not arrive
		viaGVisor bool
	}{
		{"bad UDP checksum", corruptAt(good(), 20+6), "", true},
		{"bad IPv4 header checksum", corruptAt(good(), 10), "", true},
		{"UDP length beyond the packet", setUint16(good(), 20+4, 8+100), "", true},
		{"UDP length below its header", setUint16(good(), 20+4, 4), "", true},
		{"IPv4 options", udpPacket(udpClient4, udpVIP4, []byte("with options"), []byte{1, 1, 1, 0}), "with options", true},
		{"no UDP checksum", setUint16(good(), 20+6, 0), "payload", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, l, flows, _ := newFastFixture(t)
			l.Deliver(good())
			c := <-flows
			defer c.Close()
			if got := readAll(t, c); len(got) != 1 {
				t.Fatalf("first datagram: read %d", len(got))
			}
			before, malformedBefore := udpPackets(ns), ns.Stats()
			l.Deliver(tc.pkt)
			l.Deliver(udpPacket(udpClient4, udpVIP4, []byte("marker"), nil))
			got := readAll(t, c)
			var want []string
			if tc.want != "" {
				want = append(want, tc.want)
			}
			want = append(want, "marker")
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
				t.Fatalf("read %q, want %q", got, want)
			}
			if took := udpPackets(ns) - before; tc.viaGVisor && took == 0 && tc.want != "" {
				t.Errorf("gVisor did not take the datagram")
			}
			if tc.want == "" {
				after := ns.Stats()
				if after.TransportMalformed+after.IPMalformed == malformedBefore.TransportMalformed+malformedBefore.IPMalformed {
					t.Errorf("the dropped datagram was not counted: %+v", after)
				}
			}
		})
	}
}

func corruptAt(b []byte, i int) []byte { b[i] ^= 0xff; return b }

func setUint16(b []byte, i int, v uint16) []byte {
	b[i], b[i+1] = byte(v>>8), byte(v)
	return b
}

// TestUDPFastPathQueueBound: a flow whose reader is behind queues at most
// udpQueueLen datagrams; the rest are dropped and counted.
func TestUDPFastPathQueueBound(t *testing.T) {
	_, l, flows, drops := newFastFixture(t)
	pkt := udpPacket(udpClient4, udpVIP4, []byte("x"), nil)
	l.Deliver(pkt)
	c := <-flows
	defer c.Close()
	const extra = 100
	for range udpQueueLen + extra {
		l.Deliver(pkt)
	}
	if n := drops[DropUDPQueueFull].Load(); n != extra {
		t.Errorf("%d drops counted, want %d", n, extra)
	}
	if got := len(readAll(t, c)); got != 1+udpQueueLen {
		t.Errorf("read %d datagrams, want %d", got, 1+udpQueueLen)
	}
	// Room again once read.
	l.Deliver(pkt)
	if got := len(readAll(t, c)); got != 1 {
		t.Errorf("after reading: %d datagrams, want 1", got)
	}
	big := udpPacket(udpClient4, udpVIP4, make([]byte, 1400), nil)
	for range udpQueueBytes/1400 + extra {
		l.Deliver(big)
	}
	if got := len(readAll(t, c)); got != udpQueueBytes/1400 {
		t.Errorf("1400-byte datagrams: read %d, want %d (the byte bound)", got, udpQueueBytes/1400)
	}
}

// TestUDPFastPathClose: a closed flow takes nothing more; the next datagram
// of the same client and port is a new flow.
func TestUDPFastPathClose(t *testing.T) {
	ns, l, flows, _ := newFastFixture(t)
	pkt := udpPacket(udpClient4, udpVIP4, []byte("x"), nil)
	l.Deliver(pkt)
	c := <-flows
	l.Deliver(pkt)
	c.Close()
	if n, err := c.TryRead(make([]byte, 16)); err == nil {
		t.Errorf("read %d bytes from a closed flow", n)
	}
	if ns.udp.lookup(c.key) != nil {
		t.Fatal("closed flow still registered")
	}
	l.Deliver(pkt)
	select {
	case c2 := <-flows:
		defer c2.Close()
		if got := readAll(t, c2); len(got) != 1 {
			t.Errorf("new flow read %d datagrams, want 1", len(got))
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no new flow after the old one closed")
	}
}

// TestUDPConnRead: Read returns fast-path datagrams and honours the read
// deadline and Close.
func TestUDPConnRead(t *testing.T) {
	_, l, flows, _ := newFastFixture(t)
	l.Deliver(udpPacket(udpClient4, udpVIP4, []byte("one"), nil))
	c := <-flows
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "one" {
		t.Fatalf("first: %q %v", buf[:n], err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		l.Deliver(udpPacket(udpClient4, udpVIP4, []byte("two"), nil))
	}()
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "two" {
		t.Fatalf("second (waited for): %q %v", buf[:n], err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle read: %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("deadline of 30ms took %v", d)
	}
	c.SetReadDeadline(time.Time{})
	go func() {
		time.Sleep(20 * time.Millisecond)
		c.Close()
	}()
	if _, err := c.Read(buf); err == nil {
		t.Fatal("read on a closed flow succeeded")
	}
}

// TestUDPFastPathNoAllocs: in the steady state a fast-path datagram costs
// no allocation from the link to the reader.
func TestUDPFastPathNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops pooled objects at random")
	}
	_, l, flows, _ := newFastFixture(t)
	pkt := udpPacket(udpClient4, udpVIP4, make([]byte, 64), nil)
	l.Deliver(pkt)
	c := <-flows
	defer c.Close()
	buf := make([]byte, 2048)
	c.TryRead(buf)
	step := func() {
		l.Deliver(pkt)
		if _, err := c.TryRead(buf); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		step()
	}
	if allocs := testing.AllocsPerRun(1000, step); allocs != 0 {
		t.Errorf("%v allocations per datagram, want 0", allocs)
	}
}

// TestUDPQueue: datagrams come out in order and whole (or cut to the
// reader's buffer, as a UDP read cuts them); the bounds refuse with
// queueFull, a closed queue with queueClosed, and closing releases what
// was queued.
func TestUDPQueue(t *testing.T) {
	var q udpQueue
	for i := range 5 {
		if r := q.push(bytes.Repeat([]byte{byte(i)}, 100+i), netip.AddrPort{}); r != queued {
			t.Fatalf("push %d: %d", i, r)
		}
	}
	buf := make([]byte, 3000)
	if n, _, ok := q.pop(buf[:10]); !ok || n != 10 || buf[0] != 0 {
		t.Fatalf("short read: %d %v", n, ok)
	}
	for i := 1; i < 5; i++ {
		n, _, ok := q.pop(buf)
		if !ok || n != 100+i || buf[0] != byte(i) {
			t.Fatalf("datagram %d: %d bytes of %d, %v", i, n, buf[0], ok)
		}
	}
	if _, _, ok := q.pop(buf); ok || q.ready() {
		t.Fatal("empty queue returned a datagram")
	}
	big := make([]byte, smallDatagram+1) // a buffer of its own
	if q.push(big, netip.AddrPort{}) != queued {
		t.Fatal("large datagram refused")
	}
	if n, _, _ := q.pop(buf); n != len(big) {
		t.Fatalf("large datagram: %d bytes", n)
	}
	for range udpQueueLen {
		q.push(nil, netip.AddrPort{})
	}
	if r := q.push(nil, netip.AddrPort{}); r != queueFull {
		t.Fatalf("over the count bound: %d, want queueFull", r)
	}
	q.close()
	if r := q.push([]byte("x"), netip.AddrPort{}); r != queueClosed {
		t.Fatalf("after close: %d, want queueClosed", r)
	}
	if q.ready() || q.bytes != 0 {
		t.Fatal("close kept datagrams")
	}
}

// TestUDPListenerFastPath: datagrams to a ListenUDP socket on one of the
// stack's own addresses reach it without gVisor, in order, with their
// sources; those the link does not take (IPv4 options) still arrive
// through gVisor, and those gVisor would drop are dropped and counted.
func TestUDPListenerFastPath(t *testing.T) {
	local4 := netip.MustParseAddrPort("10.100.0.1:53")
	local6 := netip.MustParseAddrPort("[2001:db8:100::1]:53")
	other4 := netip.MustParseAddrPort("198.51.100.11:40001")
	good := func() []byte { return udpPacket(udpClient4, local4, []byte("payload"), nil) }
	type datagram struct {
		payload string
		src     netip.AddrPort
	}
	for _, tc := range []struct {
		name      string
		local     netip.AddrPort
		pkts      [][]byte
		want      []datagram
		viaGVisor uint64 // datagrams gVisor's UDP takes
		malformed bool   // a drop is counted
	}{
		{"IPv4, two clients", local4, [][]byte{
			udpPacket(udpClient4, local4, []byte("a"), nil),
			udpPacket(other4, local4, []byte("b"), nil),
			udpPacket(udpClient4, local4, []byte("c"), nil),
		}, []datagram{{"a", udpClient4}, {"b", other4}, {"c", udpClient4}}, 0, false},
		{"IPv6", local6, [][]byte{udpPacket(udpClient6, local6, []byte("six"), nil)},
			[]datagram{{"six", udpClient6}}, 0, false},
		{"IPv4 options go through gVisor", local4, [][]byte{udpPacket(udpClient4, local4, []byte("opt"), []byte{1, 1, 1, 0})},
			[]datagram{{"opt", udpClient4}}, 1, false},
		{"bad UDP checksum", local4, [][]byte{corruptAt(good(), 20+6)}, nil, 0, true},
		{"bad IPv4 header checksum", local4, [][]byte{corruptAt(good(), 10)}, nil, 0, true},
		{"another port", local4, [][]byte{udpPacket(udpClient4, netip.AddrPortFrom(local4.Addr(), 54), []byte("x"), nil)}, nil, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, l := newTestLink(t, Config{Handler: flowTaker{make(chan *UDPConn, 1)},
				Local: []netip.Addr{local4.Addr(), local6.Addr()}}, &capture{})
			pc, err := ns.ListenUDP(tc.local)
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			before := ns.Stats()
			for _, p := range tc.pkts {
				l.Deliver(p)
			}
			var got []datagram
			buf := make([]byte, 2048)
			for {
				pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				n, from, err := pc.ReadFrom(buf)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, datagram{string(buf[:n]), from.(*net.UDPAddr).AddrPort()})
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("read %v, want %v", got, tc.want)
			}
			if n := udpPackets(ns); n != tc.viaGVisor {
				t.Errorf("gVisor's UDP took %d datagrams, want %d", n, tc.viaGVisor)
			}
			after := ns.Stats()
			counted := after.TransportMalformed+after.IPMalformed > before.TransportMalformed+before.IPMalformed
			if counted != tc.malformed {
				t.Errorf("malformed drop counted: %v, want %v (%+v)", counted, tc.malformed, after)
			}
		})
	}
}

// TestUDPListenerClose: Close wakes a waiting ReadFrom with net.ErrClosed,
// and the fast path no longer queues for the closed listener.
func TestUDPListenerClose(t *testing.T) {
	local := netip.MustParseAddrPort("10.100.0.1:53")
	ns, l := newTestLink(t, Config{Handler: flowTaker{make(chan *UDPConn, 1)}, Local: []netip.Addr{local.Addr()}}, &capture{})
	pc, err := ns.ListenUDP(local)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, _, err := pc.ReadFrom(make([]byte, 64))
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let it wait
	pc.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadFrom after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not wake ReadFrom")
	}
	l.Deliver(udpPacket(udpClient4, local, []byte("late"), nil))
	if _, err := pc.Read(make([]byte, 64)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read on a closed listener: %v", err)
	}
	if ns.listeners.lookup(local) != nil || pc.fast.ready() {
		t.Error("a closed listener still takes datagrams")
	}
	if _, _, err := pc.ReadFrom(make([]byte, 64)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadFrom on a closed listener: %v", err)
	}
}

// TestUDPListenerQueueBound: a listener's fast-path queue holds at most
// udpQueueLen datagrams; the rest are dropped and counted.
func TestUDPListenerQueueBound(t *testing.T) {
	local := netip.MustParseAddrPort("10.100.0.1:53")
	var drops [numDropReasons]atomic.Int64
	ns, l := newTestLink(t, Config{Handler: flowTaker{make(chan *UDPConn, 1)}, Local: []netip.Addr{local.Addr()},
		OnDrop: func(r DropReason) { drops[r].Add(1) }}, &capture{})
	pc, err := ns.ListenUDP(local)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	const extra = 10
	for range udpQueueLen + extra {
		l.Deliver(udpPacket(udpClient4, local, []byte("q"), nil))
	}
	if n := drops[DropUDPQueueFull].Load(); n != extra {
		t.Errorf("%d datagrams counted as dropped for a full queue, want %d", n, extra)
	}
}

// TestUDPListenerRepliesOnTheClientsLink: a listener on an address that
// two links share (the gateway's address, on its LAN's link and its
// tunnel's) answers each client on the link whose routes lead to it.
// gVisor sends a bound socket's datagrams through the link it found the
// address on at bind, in a random order: one of the two kinds of client
// got no answer (its replies went out on the other link). Each round is a
// new stack, a new draw.
func TestUDPListenerRepliesOnTheClientsLink(t *testing.T) {
	local := netip.MustParseAddrPort("10.100.0.1:53")
	lanClient := netip.MustParseAddrPort("198.51.100.10:40000")
	tunClient := netip.MustParseAddrPort("169.254.0.5:40000")
	for round := range 6 {
		ns, err := New(Config{Handler: flowTaker{make(chan *UDPConn, 1)}, Local: []netip.Addr{local.Addr()},
			Pools: []netip.Prefix{netip.MustParsePrefix("10.100.0.0/24")}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		lanOut, tunOut := &capture{}, &capture{}
		lan, err := ns.NewLink(LinkConfig{Name: "lan", MTU: 1500, Output: lanOut})
		if err != nil {
			t.Fatal(err)
		}
		tun, err := ns.NewLink(LinkConfig{Name: "tunnel", MTU: 1500, Output: tunOut, Routes: []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16")}})
		if err != nil {
			t.Fatal(err)
		}
		pc, err := ns.ListenUDP(local)
		if err != nil {
			t.Fatal(err)
		}
		lan.Deliver(udpPacket(lanClient, local, []byte("from the LAN"), nil))
		tun.Deliver(udpPacket(tunClient, local, []byte("from the tunnel"), nil))
		buf := make([]byte, 2048)
		for range 2 {
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pc.WriteTo(append([]byte("re: "), buf[:n]...), from); err != nil {
				t.Fatalf("round %d: reply to %v: %v", round, from, err)
			}
		}
		for _, c := range []struct {
			out  *capture
			link string
			to   netip.AddrPort
		}{{lanOut, "LAN", lanClient}, {tunOut, "tunnel", tunClient}} {
			var got []netip.Addr
			for deadline := time.Now().Add(2 * time.Second); len(got) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				for _, p := range c.out.all() {
					if _, dst, ok := IPv4Addrs(p); ok {
						got = append(got, dst)
					}
				}
			}
			if len(got) != 1 || got[0] != c.to.Addr() {
				t.Errorf("round %d: the %s link sent replies to %v, want one to %v", round, c.link, got, c.to.Addr())
			}
		}
		pc.Close()
		tun.Close()
		lan.Close()
		ns.Close()
	}
}

// TestUDPWriteFast: what a flow writes to its client is built outside
// gVisor, byte for byte the packet gVisor's UDP output builds, and goes
// out on the link whose route leads to the client. A datagram that does not
// fit one packet of that link, an IPv6 flow's, a flow whose client no
// route leads to, go through gVisor; a closed flow's write fails.
func TestUDPWriteFast(t *testing.T) {
	out := &capture{}
	ns, flows := newFlowStack(t)
	l := newLinkOf(t, ns, LinkConfig{MTU: 1500, Output: out, Routes: []netip.Prefix{
		netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/64")}})
	sent := func() uint64 { return ns.s.Stats().UDP.PacketsSent.Value() }
	// written waits for n more packets on the link and returns them.
	seen := 0
	written := func(n int) [][]byte {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if all := out.all(); len(all) >= seen+n {
				got := all[seen : seen+n]
				seen += n
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d packets written, want %d more than %d", len(out.all()), n, seen)
			}
			time.Sleep(time.Millisecond)
		}
	}

	c := openFlow(t, l, flows)
	for _, size := range []int{0, 1, 100, 1500 - 28} {
		p := bytes.Repeat([]byte{byte(size)}, size)
		before := sent()
		if n, err := c.Write(p); n != size || err != nil {
			t.Fatalf("%d bytes: Write %d, %v", size, n, err)
		}
		if sent() != before {
			t.Fatalf("%d bytes: gVisor sent the datagram, not the fast path", size)
		}
		if _, err := c.conn.Write(p); err != nil { // gVisor's, to compare
			t.Fatal(err)
		}
		got := written(2)
		if !bytes.Equal(got[0], got[1]) {
			t.Fatalf("%d bytes: the fast path built\n% x\ngVisor builds\n% x", size, got[0][:28], got[1][:28])
		}
	}
	before := sent()
	if _, err := c.Write(make([]byte, 1500-28+1)); err != nil {
		t.Fatal(err)
	}
	if sent() != before+1 {
		t.Error("a datagram larger than the link's MTU did not go through gVisor")
	}
	if frags := written(2); header.IPv4(frags[0]).Flags()&header.IPv4FlagMoreFragments == 0 {
		t.Error("a datagram larger than the link's MTU not fragmented")
	}
	c.Close()
	if _, err := c.Write([]byte("late")); err == nil {
		t.Error("a closed flow's write succeeded")
	}

	l.Deliver(udpPacket(udpClient6, udpVIP6, []byte("first"), nil))
	c6 := <-flows
	defer c6.Close()
	before = sent()
	if _, err := c6.Write([]byte("v6")); err != nil {
		t.Fatal(err)
	}
	if sent() != before+1 {
		t.Error("an IPv6 flow's datagram did not go through gVisor")
	}
	written(1)
}
