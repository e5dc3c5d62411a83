package gateway

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// emptyUDPConfig publishes echo (udp 7 → target) for acme with udp_idle.
func emptyUDPConfig(target int, idle string) string {
	return fmt.Sprintf(quietGateway+acmeTenant+`[[service]]
name = "echo"
tenants = ["acme"]
vip = "10.100.0.20"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "udp"
  port = 7
  target = %d
  [service.health]
  type = "none"
  [service.timeouts]
  udp_idle = %q
`, target, idle)
}

// TestUDPEmptyReplyReachesClient: a zero-length datagram is a datagram.
// The client's empty datagrams reach the backend (udpSender sends them
// alone), so the backend's empty replies must reach the client too:
// protocols use them as acknowledgements and keepalives.
func TestUDPEmptyReplyReachesClient(t *testing.T) {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() { // answers every datagram with an empty one, then "after"
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			pc.WriteToUDP(nil, from)
			pc.WriteToUDP([]byte("after"), from)
		}
	}()
	h := newHarness(t, emptyUDPConfig(pc.LocalAddr().(*net.UDPAddr).Port, "1m"))
	c, err := h.client.DialUDP(acmeClient, netip.MustParseAddrPort("10.100.0.20:7"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("the client's first datagram is %q; want the backend's empty one (it was dropped)", buf[:n])
	}
}

// TestUDPEmptyDatagramsKeepFlow: a client that sends only empty datagrams
// (keepalives) more often than udp_idle keeps its flow and its backend
// socket: the backend sees one source port.
func TestUDPEmptyDatagramsKeepFlow(t *testing.T) {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var (
		mu    sync.Mutex
		ports = map[int]int{}
	)
	go func() { // records the source port of each datagram, answers none
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			mu.Lock()
			ports[from.Port]++
			mu.Unlock()
		}
	}()
	const idle = 400 * time.Millisecond
	h := newHarness(t, emptyUDPConfig(pc.LocalAddr().(*net.UDPAddr).Port, idle.String()))
	c, err := h.client.DialUDP(acmeClient, netip.MustParseAddrPort("10.100.0.20:7"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("open")) // opens the flow
	for range 16 {          // 1.6 s: four times udp_idle
		time.Sleep(idle / 4)
		if _, err := c.Write(nil); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, n := range ports {
		total += n
	}
	if total < 10 {
		t.Fatalf("the backend got %d datagrams of 17", total)
	}
	if len(ports) != 1 {
		t.Fatalf("the backend saw %d source ports %v: the flow idled out and was opened again although the client sent an empty datagram every %v (udp_idle %v)", len(ports), ports, idle/4, idle)
	}
	if got := h.gw.flows.len(); got != 1 {
		t.Fatalf("%d flows open, want 1", got)
	}
}
