package gateway

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// spoofedAcme returns the i-th spoofed source: an address of acme's
// prefix that no client owns (the SYN-ACKs to it go unanswered), and a port.
func spoofedAcme(i int) netip.AddrPort {
	host := byte(20 + i%230) // .20 to .249: not acmeClient (.10)
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, host}), uint16(1024+i/230))
}

// baseline is what the process holds before a flood.
type baseline struct {
	goroutines int
	heap       uint64
}

func takeBaseline() baseline {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return baseline{goroutines: runtime.NumGoroutine(), heap: ms.HeapInuse}
}

// assertBaseline waits until goroutines and heap are back near b.
func assertBaseline(t *testing.T, b baseline, within time.Duration) {
	t.Helper()
	const slackGoroutines, slackHeap = 10, 32 << 20
	deadline := time.Now().Add(within)
	for {
		now := takeBaseline()
		if now.goroutines <= b.goroutines+slackGoroutines && now.heap <= b.heap+slackHeap {
			t.Logf("back to baseline: %d goroutines (was %d), heap %d MiB (was %d MiB)",
				now.goroutines, b.goroutines, now.heap>>20, b.heap>>20)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not back to baseline after %v: %d goroutines (was %d), heap %d MiB (was %d MiB)",
				within, now.goroutines, b.goroutines, now.heap>>20, b.heap>>20)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSYNFlood sends 20,000 SYNs from spoofed sources of tenant acme to a
// healthy service, spread over a few seconds, longer than the handshake
// timeout. The flood holds at most acme's share of the handshakes (without
// it, it would hold them all); globex connects within 2 s during it; afterwards acme's own client is
// served, and goroutines and memory return to their baseline.
func TestSYNFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("flood test")
	}
	port := startHold(t)
	h := newHarness(t, limitsConfig(port, "", "", ""),
		func(o *Options) { o.HandshakeTimeout = 3 * time.Second })
	if _, err := h.dialWeb(t, acmeClient, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	base := takeBaseline()

	const syns = 20000
	var (
		wg      sync.WaitGroup
		started = make(chan struct{})
		peak    int64
	)
	wg.Go(func() {
		for i := range syns {
			if i == 2000 {
				close(started)
			}
			h.gw.lan.Deliver(netstacktest.TCPSegment(spoofedAcme(i), webVIP, netstacktest.FlagSYN, rand.Uint32(), nil))
			if i%8 == 0 {
				time.Sleep(time.Millisecond) // spread the flood over the handshake timeout
			}
			if i%500 == 0 {
				peak = max(peak, h.gw.limits.held("acme", tenantHandshakes))
			}
		}
	})
	<-started
	for i := range 3 {
		start := time.Now()
		c, err := h.dialWeb(t, globexClient, 2*time.Second)
		if err != nil {
			t.Fatalf("globex connection %d during the flood: %v", i, err)
		}
		c.Close()
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("globex connection %d took %v", i, d)
		}
	}
	wg.Wait()
	if share := int64(1024 / handshakeShare); peak > share {
		t.Errorf("acme held %d handshakes, its share is %d", peak, share)
	}
	shed := metricValue(t, h.gw, "ztgate_flows_refused_total", "protocol", "tcp", "reason", refuseTenantHandshakes)
	stack := metricValue(t, h.gw, "ztgate_stack_packets_dropped_total", "reason", "tcp_handshake_limit")
	t.Logf("flood: peak %d acme handshakes, %v SYNs shed by the tenant share, %v by the stack's bound", peak, shed, stack)
	if shed < 1 {
		t.Error("no SYN was shed by the tenant's share of handshakes")
	}
	waitFor(t, 15*time.Second, "the flood's handshakes to time out", func() bool {
		return h.gw.limits.held("acme", tenantHandshakes) == 0 && h.gw.flowCount.Load() <= 1
	})
	if n := metricValue(t, h.gw, "ztgate_stack_packets_dropped_total", "reason", "tcp_handshake_failed"); n < 1 {
		t.Errorf("handshakes the spoofed clients never completed counted: %v", n)
	}
	if _, err := h.dialWeb(t, acmeClient, 2*time.Second); err != nil {
		t.Fatalf("acme's own client after the flood: %v", err)
	}
	assertBaseline(t, base, 15*time.Second)
}

// TestUDPFlood sends 20,000 datagrams, each a new flow, from spoofed
// sources of acme: acme's max_flows caps what it holds (descriptors,
// goroutines), globex's flows still open, and everything is released
// when the flows go idle.
func TestUDPFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("flood test")
	}
	udpPort := startUDPEcho(t)
	cfg := limitsConfig(startHold(t), "", "max_flows = 500", "") + `
[[service]]
name = "dns"
tenants = ["*"]
vip = "10.100.0.20"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "udp"
  port = 5300
  target = ` + strconv.Itoa(udpPort) + `
  [service.health]
  type = "none"
  [service.timeouts]
  udp_idle = "1s"
`
	h := newHarness(t, cfg)
	dst := netip.MustParseAddrPort("10.100.0.20:5300")
	base := takeBaseline()
	const flood = 20000
	start := time.Now()
	peak := int64(0)
	for i := range flood {
		h.gw.lan.Deliver(netstacktest.UDPDatagram(spoofedAcme(i), dst, []byte("flood")))
		peak = max(peak, h.gw.limits.held("acme", tenantFlows))
	}
	elapsed := time.Since(start)
	if peak > 500 {
		t.Fatalf("acme held %d flows, its max_flows is 500", peak)
	}
	// Each datagram comes from its own source: it opens a flow or is
	// refused, and is counted either way. Flows idle out after 1 s, so a
	// slow machine that needs longer for the flood admits 500 more for
	// every second it takes.
	opened := metricValue(t, h.gw, "ztgate_flows_total", "protocol", "udp", "service", "dns", "tenant", "acme")
	refused := metricValue(t, h.gw, "ztgate_flows_refused_total", "protocol", "udp", "reason", refuseTenantLimit)
	if opened+refused != flood {
		t.Fatalf("%v flows opened + %v refused, want %d", opened, refused, flood)
	}
	if limit := 500 * (elapsed.Seconds() + 2); opened > limit {
		t.Fatalf("%v flows opened in %v, at most %v fit under max_flows", opened, elapsed, limit)
	}
	t.Logf("flood of %d in %v: %v flows opened, %v refused", flood, elapsed, opened, refused)
	c, err := h.client.DialUDP(globexClient, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	c.Write([]byte("hello"))
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("globex during the flood: %q %v", buf[:n], err)
	}
	c.Close()
	waitFor(t, 10*time.Second, "the flood's flows to go idle", func() bool { return h.gw.flowCount.Load() == 0 })
	assertBaseline(t, base, 10*time.Second)
}

// deniedPinger fails as the ICMP pinger does without CAP_NET_RAW and
// without ping_group_range.
type deniedPinger struct{}

func (deniedPinger) Ping(context.Context, netip.Addr, []byte) error {
	return errors.New("icmp socket (needs CAP_NET_RAW or net.ipv4.ping_group_range): operation not permitted")
}
func (deniedPinger) Close() error { return nil }

// TestPingerUnavailable: without ICMP sockets the gateway says so once
// and goes on: pings to a VIP get no reply, flows are served.
func TestPingerUnavailable(t *testing.T) {
	h := newHarness(t, limitsConfig(startHold(t), "", "", ""), func(o *Options) { o.Pinger = deniedPinger{} })
	for seq := range uint16(3) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := h.client.Ping(ctx, h.gw.lan, acmeClient, webVIP.Addr(), 3, seq, nil)
		cancel()
		if err == nil {
			t.Fatal("a ping got a reply without a pinger")
		}
	}
	if !h.gw.pingerWarned.Load() {
		t.Fatal("the missing pinger was not reported")
	}
	if _, err := h.dialWeb(t, acmeClient, 2*time.Second); err != nil {
		t.Fatalf("flows without a pinger: %v", err)
	}
}

// TestHandshakeFailedCounted: a client that sends a SYN and never
// completes the handshake costs the gateway a backend connection (dialled
// before the handshake completes), which is closed at the handshake
// timeout; the flow is counted as refused, handshake_failed, and opens
// nothing. Before, it left no trace.
func TestHandshakeFailedCounted(t *testing.T) {
	port := startHold(t)
	h := newHarness(t, limitsConfig(port, "", "", ""),
		func(o *Options) { o.HandshakeTimeout = 200 * time.Millisecond })
	h.gw.lan.Deliver(netstacktest.TCPSegment(spoofedAcme(0), webVIP, netstacktest.FlagSYN, 1, nil))
	waitFor(t, 5*time.Second, "the half-open handshake counted", func() bool {
		return metricValue(t, h.gw, "ztgate_flows_refused_total", "protocol", "tcp", "reason", refuseHandshake) == 1
	})
	if n := metricValue(t, h.gw, "ztgate_flows_active", "service", "web", "tenant", "acme", "protocol", "tcp"); n > 0 {
		t.Errorf("%v flows active after a handshake that failed", n)
	}
}
