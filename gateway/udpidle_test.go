package gateway

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestUDPDownIdle: the backend's datagrams reach the client, and the flow
// ends only when the flow's clock says it was idle for idle in both
// directions; read deadlines passing before that only re-arm the deadline.
func TestUDPDownIdle(t *testing.T) {
	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	backend, err := net.ListenUDP("udp", lo)
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	sink, err := net.ListenUDP("udp", lo)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	be, err := net.DialUDP("udp", nil, backend.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	client, err := net.DialUDP("udp", nil, sink.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	clock := &setClock{now: time.Unix(1_000_000, 0)}
	f := &flow{
		done:      make(chan struct{}),
		upBytes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "up"}),
		downBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "down"}),
	}
	f.touch(clock.Now())
	const idle = 10 * time.Millisecond // real read deadlines pass many times below
	res := make(chan error, 1)
	go func() { res <- udpDown(f, be, client, idle, clock.Now) }()

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
	select {
	case err := <-res:
		if !errors.Is(err, errIdle) {
			t.Fatalf("udpDown returned %v, want errIdle", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("udpDown did not end a flow idle for idle")
	}
}
