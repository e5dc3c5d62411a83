package gateway

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestUDPDownIdle: the backend's datagrams reach the client, and the flow
// ends only when the flow's clock says it was idle for idle in both
// directions; read deadlines passing before that only re-arm the deadline.
func TestUDPDownIdle(t *testing.T) {
	be, backend := udpPair(t)  // the flow's socket to the backend
	client, sink := udpPair(t) // the flow's side of the client

	clock := &setClock{now: time.Unix(1_000_000, 0)}
	f := &flow{
		done:      make(chan struct{}),
		upBytes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "up"}),
		downBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "down"}),
	}
	f.touch(clock.Now())
	const idle = 10 * time.Millisecond // real read deadlines pass many times below
	res := make(chan error, 1)
	var samples atomic.Int32 // the drop counter is read when a deadline passes
	go func() { res <- udpDown(f, be, client, idle, clock.Now, func() { samples.Add(1) }) }()

	// The clock stands still: however many deadlines pass, the flow is
	// not idle and forwards.
	if _, err := backend.WriteToUDP([]byte("pong"), be.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	sink.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 16)
	n, _, err := sink.ReadFromUDP(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("client got %q, %v; want pong", buf[:n], err)
	}
	select {
	case err := <-res:
		t.Fatalf("udpDown returned %v before the flow was idle", err)
	default:
	}
	waitFor(t, 10*time.Second, "the flow to count 4 bytes down", func() bool { return f.down.Load() == 4 })

	// Activity the other way keeps it open: touch, then advance by less
	// than idle from that touch.
	clock.advance(idle - time.Millisecond)
	f.touch(clock.Now())
	clock.advance(idle - time.Millisecond)
	select {
	case err := <-res:
		t.Fatalf("udpDown returned %v with activity %v ago", err, idle-time.Millisecond)
	default:
	}

	clock.advance(time.Millisecond)
	wantReturn(t, res, errIdle, "a flow idle for idle")
	if samples.Load() == 0 {
		t.Error("the backend socket's drops were never read while deadlines passed")
	}
}

// TestUDPBackendDrops: datagrams the kernel drops on a full backend socket
// are counted as udp_backend_overflow, each once, however often the count
// is read; a flow closed from outside wakes udpDown, whose socket stays
// open for the last count.
func TestUDPBackendDrops(t *testing.T) {
	be, backend := udpPair(t)
	if err := be.SetReadBuffer(4096); err != nil { // the kernel's minimum: a few datagrams
		t.Fatal(err)
	}
	g := &Gateway{m: newMetrics(prometheus.NewRegistry())}
	count := func() float64 { return testutil.ToFloat64(g.m.udpBackendOverflow) }
	drops := g.udpBackendDrops(be)
	drops()
	if got := count(); got != 0 {
		t.Fatalf("%v drops counted before any datagram", got)
	}
	const sent = 2000
	for range sent { // nobody reads: all but a few are dropped
		if _, err := backend.WriteToUDP(make([]byte, 64), be.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
	}
	rc, _ := be.SyscallConn()
	kernel, ok := socketDrops(rc)
	if !ok {
		t.Skip("SO_MEMINFO not supported by this kernel")
	}
	if kernel < sent/2 {
		t.Fatalf("the kernel dropped %d of %d datagrams; want most", kernel, sent)
	}
	drops()
	drops()
	if got := count(); got != float64(kernel) {
		t.Fatalf("counted %v drops, the kernel %d", got, kernel)
	}

	// Closed from outside while udpDown waits: it returns, and the last
	// count can still be read from the open socket.
	f := &flow{
		done:      make(chan struct{}),
		upBytes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "up"}),
		downBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "down"}),
	}
	f.onClose = func() { be.SetReadDeadline(time.Unix(1, 0)) }
	f.touch(time.Now())
	be.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) // empty the queue first
	for buf := make([]byte, 64); ; {
		if _, err := be.Read(buf); err != nil {
			break
		}
	}
	be.SetReadDeadline(time.Time{})
	res := make(chan error, 1)
	client, _ := udpPair(t)
	go func() { res <- udpDown(f, be, client, time.Hour, time.Now, drops) }()
	time.Sleep(20 * time.Millisecond)
	f.close("api")
	wantReturn(t, res, errFlowClosed, "a flow closed from outside")
	if _, ok := socketDrops(rc); !ok {
		t.Fatal("the backend socket was closed with the flow: its last drops cannot be read")
	}
}

// wantReturn waits for udpDown's result on res and checks it is want.
func wantReturn(t *testing.T, res <-chan error, want error, what string) {
	t.Helper()
	select {
	case err := <-res:
		if !errors.Is(err, want) {
			t.Fatalf("udpDown returned %v for %s, want %v", err, what, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("udpDown did not end %s", what)
	}
}
