package gateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startCountServer reads until the client half-closes, then answers with
// the byte count and closes: the exchange a half-close must carry.
func startCountServer(t *testing.T) int {
	return serveTCP(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d", n)
	})
}

func spliceConfig(port int, idle string) string {
	return fmt.Sprintf(quietGateway+acmeTenant+`[[service]]
name = "count"
tenants = ["acme"]
vip = "10.100.0.12"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "tcp"
  port = 9
  target = %d
  [service.health]
  type = "none"
  [service.timeouts]
  tcp_idle = %q
`, port, idle)
}

// dialSplice opens a flow from acmeClient to spliceConfig's service, with
// 10 s to do everything; the test's end closes it.
func (h *harness) dialSplice(t *testing.T) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h.client.DialTCP(ctx, acmeClient, netip.MustParseAddrPort("10.100.0.12:9"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// TestSpliceHalfClose: the client's FIN reaches the backend as a FIN, and
// the backend's answer after it still reaches the client.
func TestSpliceHalfClose(t *testing.T) {
	h := newHarness(t, spliceConfig(startCountServer(t), "1h"))
	for _, size := range []int{0, 1, 100 << 10, 3 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c := h.dialSplice(t)
			if _, err := c.Write(make([]byte, size)); err != nil {
				t.Fatal(err)
			}
			c.(interface{ CloseWrite() error }).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != fmt.Sprintf("got %d", size) {
				t.Fatalf("answer %q, %v", got, err)
			}
		})
	}
	waitFor(t, 3*time.Second, "flows ended", func() bool { return h.gw.flows.len() == 0 })
}

// TestSpliceIdleTimeout: a flow that moves nothing for tcp_idle is closed
// by the sweeper; one that keeps moving data is not.
func TestSpliceIdleTimeout(t *testing.T) {
	h := newHarness(t, spliceConfig(startLineEcho(t, "echo"), "2s"))
	idle := h.dialLines(t, acmeClient, "10.100.0.12:9")
	busy := h.dialLines(t, acmeClient, "10.100.0.12:9")
	for i := range 8 { // 4 s of traffic on busy, none on idle
		if got := busy.roundTrip(t, fmt.Sprint(i)); got != fmt.Sprintf("echo: %d", i) {
			t.Fatalf("busy flow: %q", got)
		}
		time.Sleep(500 * time.Millisecond)
	}
	idle.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle.r.ReadString('\n'); err == nil || err == io.ErrNoProgress {
		t.Fatalf("idle flow still open: %v", err)
	}
	if got := busy.roundTrip(t, "still"); got != "echo: still" {
		t.Fatalf("busy flow after the sweep: %q", got)
	}
}

// TestSpliceBackendSpeaksAfterIdle: a backend that sends on its own after
// the flow's worker went idle (server push, a banner after a pause, a
// FIN after one) wakes the flow through the reactor each time, which the
// worker re-arms whenever it goes idle.
func TestSpliceBackendSpeaksAfterIdle(t *testing.T) {
	const ticks = 5
	gap := 3 * lingerTime // longer than a worker stays
	port := serveTCP(t, func(c net.Conn) {
		for i := range ticks {
			time.Sleep(gap)
			if _, err := fmt.Fprintf(c, "tick %d\n", i); err != nil {
				return
			}
		}
		time.Sleep(gap) // then the FIN, after another pause
	})
	h := newHarness(t, spliceConfig(port, "1h"))
	c := h.dialSplice(t)
	got, err := io.ReadAll(c)
	want := ""
	for i := range ticks {
		want += fmt.Sprintf("tick %d\n", i)
	}
	if err != nil || string(got) != want {
		t.Fatalf("read %q, %v; want %q and the backend's FIN", got, err, want)
	}
	c.Close()
	waitFor(t, 3*time.Second, "flow ended", func() bool { return h.gw.flows.len() == 0 })
}

// TestSpliceBackendResetsAtOnce: a backend that resets every connection
// as it accepts it. The reset may come while the splice is still being
// set up (the socket enters the reactor only when a worker goes idle; the
// first worker's read finds it); no worker may run before the set-up ends (the race
// detector once caught one tearing a flow down while the client's notifier
// was being hooked). Every flow ends, with the backend's reset passed on
// to the client (at its connect when it comes as the handshake ends). A
// reset that comes before the gateway's connect returns is a failed dial:
// that client is refused.
func TestSpliceBackendResetsAtOnce(t *testing.T) {
	port := serveTCP(t, func(c net.Conn) {
		c.(*net.TCPConn).SetLinger(0) // Close sends a RST
	})
	h := newHarness(t, spliceConfig(port, "1h"))
	spliced := 0
	for i := range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := h.client.DialTCP(ctx, acmeClient, netip.MustParseAddrPort("10.100.0.12:9"))
		cancel()
		if err != nil {
			switch {
			case strings.Contains(err.Error(), "refused"):
				continue
			case strings.Contains(err.Error(), "connection reset"):
				spliced++
				continue
			}
			t.Fatalf("flow %d: %v", i, err)
		}
		spliced++
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if got, err := io.ReadAll(c); err == nil || !strings.Contains(err.Error(), "connection reset") {
			t.Fatalf("flow %d: read %q, then %v; want the backend's reset", i, got, err)
		}
		c.Close()
	}
	t.Logf("%d of 100 flows spliced, the others refused", spliced)
	if spliced < 10 {
		t.Fatalf("only %d of 100 flows spliced", spliced)
	}
	waitFor(t, 3*time.Second, "flows ended", func() bool { return h.gw.flows.len() == 0 })
}

// TestSpliceBackendKeepalive: a backend socket has no keepalive while its
// flow is young (four system calls that a short connection would pay for
// nothing) and Go's dialer's keepalive once the flow outlives
// keepaliveAfter, so that a backend host that vanished under an idle flow
// is found.
func TestSpliceBackendKeepalive(t *testing.T) {
	h := newHarness(t, spliceConfig(startLineEcho(t, "echo"), "1h"))
	c := h.dialLines(t, acmeClient, "10.100.0.12:9")
	if got := c.roundTrip(t, "a"); got != "echo: a" {
		t.Fatalf("answer %q", got)
	}
	opts := func() (on, idle, intvl, cnt int) {
		flows := h.gw.flows.list(func(f *flow) bool { return f.splice.Load() != nil })
		if len(flows) != 1 {
			t.Fatalf("%d flows", len(flows))
		}
		err := flows[0].splice.Load().rc.Control(func(fd uintptr) {
			on, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
			intvl, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
			cnt, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
		})
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if on, _, _, _ := opts(); on != 0 {
		t.Fatalf("keepalive on a new flow's backend socket")
	}
	waitFor(t, 5*time.Second, "keepalive on", func() bool { on, _, _, _ := opts(); return on != 0 })
	if _, idle, intvl, cnt := opts(); idle != 15 || intvl != 15 || cnt != 9 {
		t.Fatalf("keepalive idle %d s, interval %d s, count %d; want 15, 15, 9", idle, intvl, cnt)
	}
	if got := c.roundTrip(t, "b"); got != "echo: b" {
		t.Fatalf("answer after keepalive %q", got)
	}
}
