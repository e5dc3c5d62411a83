package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/internal/monoclock"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// dnsQuery builds a query for name's A record.
func dnsQuery(id uint16, name string) []byte {
	q := make([]byte, 12)
	binary.BigEndian.PutUint16(q, id)
	q[2], q[5] = 0x01, 1 // RD, one question
	for label := range strings.SplitSeq(strings.TrimSuffix(name, "."), ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	return append(q, 0, 0, 1, 0, 1) // root, A, IN
}

// TestDownServiceRefusedLocally checks the agent's answers to new flows to
// a service whose gateways report no healthy backend: TCP is refused at
// once, UDP gets an ICMP unreachable, ping no reply, nothing reaches the
// relay, and DNS still resolves the name. A healthy service is carried.
func TestDownServiceRefusedLocally(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(directoryOf(false)) })
	a, dev := startAgent(t, p, relay.addr())
	refused := func() float64 { return testutil.ToFloat64(a.m.refusals.WithLabelValues("service_down")) }

	t.Run("dns still resolves it", func(t *testing.T) {
		c, err := dev.DialUDP(innerAddr, netip.AddrPortFrom(a.gatewayAddr(), 53))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(testTimeout))
		if _, err := c.Write(dnsQuery(7, "web.ztna.internal")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		vip := webVIP.As4()
		if err != nil || n < 12 || buf[3]&0x0f != 0 || !bytes.Contains(buf[:n], vip[:]) {
			t.Fatalf("answer % x, %v", buf[:n], err)
		}
	})
	t.Run("tcp refused at once", func(t *testing.T) {
		before := refused()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		start := time.Now()
		c, err := dev.DialTCP(ctx, innerAddr, netip.AddrPortFrom(webVIP, 80))
		if err == nil {
			c.Close()
			t.Fatal("connected")
		}
		if d := time.Since(start); d > time.Second || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("after %v: %v", d, err)
		}
		if refused() <= before {
			t.Error("refusal not counted")
		}
	})
	t.Run("udp gets port unreachable", func(t *testing.T) {
		before := dev.Unreachables()
		udpFlow(t, dev, netip.AddrPortFrom(webVIP, 7), "x")
		waitFor(t, "ICMP unreachable", func() bool { return dev.Unreachables() > before })
	})
	t.Run("ping gets no reply", func(t *testing.T) {
		before := refused()
		newRouter(a).Deliver(netstacktest.EchoRequest(innerAddr, webVIP, 1, 1, []byte("x")))
		if refused() != before+1 {
			t.Error("echo request not refused")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := dev.Ping(ctx, a.local, innerAddr, webVIP, 2, 1, []byte("x")); err == nil {
			t.Error("the local stack answered a ping to a down service")
		}
	})
	if !relay.quietFor("web", 100*time.Millisecond) {
		t.Error("a packet to the down service reached the relay")
	}

	t.Run("a healthy service is carried both ways", func(t *testing.T) {
		c := udpFlow(t, dev, netip.AddrPortFrom(upVIP, 7), "hello")
		if !relay.routed("hello", testTimeout) {
			t.Fatal("nothing reached the relay")
		}
		local := netip.MustParseAddrPort(c.LocalAddr().String())
		relay.session().SendDatagram(udpReply(netip.AddrPortFrom(upVIP, 7), local, "back"))
		c.SetReadDeadline(time.Now().Add(testTimeout))
		buf := make([]byte, 64)
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "back" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
	})

	t.Run("the service comes back: carried", func(t *testing.T) {
		relay.session().Send(directoryOf(true))
		waitFor(t, "directory", func() bool { return a.dir.Load().byName["web"].healthy })
		udpFlow(t, dev, netip.AddrPortFrom(webVIP, 7), "again")
		if !relay.routed("again", testTimeout) {
			t.Fatal("nothing reached the relay")
		}
	})
}

func TestOpensFlow(t *testing.T) {
	tcp := func(flags byte) []byte {
		p := udpReply(netip.AddrPortFrom(innerAddr, 1), netip.AddrPortFrom(webVIP, 80), "xxxxxxxxxxxx")
		p[9] = tunnel.ProtoTCP
		p[20+13] = flags
		return p
	}
	echo := func(typ byte, payload int) []byte {
		p := netstacktest.EchoRequest(innerAddr, webVIP, 1, 1, make([]byte, payload))
		p[20] = typ
		return p
	}
	tests := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"tcp syn", tcp(0x02), true},
		{"tcp syn-ack", tcp(0x12), false},
		{"tcp ack", tcp(0x10), false},
		{"truncated tcp", tcp(0x02)[:30], false},
		{"udp", udpReply(netip.AddrPortFrom(innerAddr, 1), netip.AddrPortFrom(webVIP, 7), ""), true},
		{"echo request without payload", echo(8, 0), true},
		{"echo request", echo(8, 56), true},
		{"echo reply", echo(0, 56), false},
		// A later fragment holds no transport header: what it holds
		// where one would have flags or a type is payload.
		{"later tcp fragment whose data looks like a syn", laterFragment(tcp(0x02)), false},
		{"later icmp fragment whose data looks like an echo request", laterFragment(echo(8, 56)), false},
		{"first tcp fragment of a syn", firstFragment(tcp(0x02)), true},
		{"later udp fragment", laterFragment(udpReply(netip.AddrPortFrom(innerAddr, 1), netip.AddrPortFrom(webVIP, 7), "xxxxxxxx")), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := opensFlow(tc.pkt); got != tc.want {
				t.Errorf("got %v", got)
			}
		})
	}
}

// laterFragment makes p (an IPv4 packet of a 20-byte header) look like a
// fragment at offset 64 with more to follow.
func laterFragment(p []byte) []byte {
	binary.BigEndian.PutUint16(p[6:], 0x2000|8)
	return p
}

// firstFragment makes p look like the first fragment of a larger packet.
func firstFragment(p []byte) []byte {
	binary.BigEndian.PutUint16(p[6:], 0x2000)
	return p
}

// newTestRouter returns the router of an agent that has no session, no
// device and no direct path yet.
func newTestRouter() *router {
	a := &Agent{log: slog.New(slog.DiscardHandler), ctx: context.Background(), m: newMetrics(prometheus.NewRegistry())}
	a.direct = newDirect(a)
	return newRouter(a)
}

// BenchmarkPathOf is the router's per-packet cost of choosing a path: the
// flow table lookup of a known flow. It must not allocate.
func BenchmarkPathOf(b *testing.B) {
	r := newTestRouter()
	for i := range 4096 {
		r.pathOf("web", udpReply(netip.AddrPortFrom(innerAddr, uint16(1000+i)), netip.AddrPortFrom(webVIP, 7), ""))
	}
	pkt := udpReply(netip.AddrPortFrom(innerAddr, 3000), netip.AddrPortFrom(webVIP, 7), "payload")
	b.ReportAllocs()
	for b.Loop() {
		r.pathOf("web", pkt)
	}
}

// directFlow records the UDP flow src → dst as gone direct, on the path
// it returns.
func (r *router) directFlow(src, dst netip.AddrPort) *path {
	f, _ := tunnel.ParseFlow(udpReply(src, dst, "first datagram"))
	direct := &path{gateway: "gw1"}
	r.flows.Put(f.Key, direct, monoclock.Now(), f.Idle())
	return direct
}

// TestICMPErrorTakesItsFlowsPath: the agent's ICMP error about a packet
// of one of its flows (a port unreachable for a late datagram of the
// gateway's) leaves on that flow's path, direct or the relay, so that it
// reaches the gateway the flow is on; an error about no known flow takes
// the service's current path and opens no flow.
func TestICMPErrorTakesItsFlowsPath(t *testing.T) {
	r := newTestRouter()
	src, dst := netip.AddrPortFrom(innerAddr, 4000), netip.AddrPortFrom(webVIP, 53)
	direct := r.directFlow(src, dst)

	unreachable := func(q []byte) []byte {
		p := udpReply(src, dst, "")[:20:20] // an IPv4 header from the agent to the VIP
		p[9] = tunnel.ProtoICMP
		binary.BigEndian.PutUint16(p[2:], uint16(28+len(q)))
		return append(append(p, 3, 3, 0, 0, 0, 0, 0, 0), q...)
	}
	if got := r.pathOf("web", unreachable(udpReply(dst, src, "late"))); got != direct {
		t.Errorf("the error about the direct flow's datagram took path %v, want the direct one", got)
	}
	n := r.flows.Len()
	if got := r.pathOf("web", unreachable(udpReply(dst, netip.AddrPortFrom(innerAddr, 4999), "other"))); got != nil {
		t.Errorf("the error about an unknown flow took path %v, want the relay (the current path)", got)
	}
	if r.flows.Len() != n {
		t.Errorf("an ICMP error opened a flow: %d flows, want %d", r.flows.Len(), n)
	}
}

// TestFragmentsTakeTheirFlowsPath: every fragment of a datagram of a flow
// leaves on the flow's path, not only the first (which names the flow):
// a flow that went direct while the service's current path is the relay
// sends all of a large datagram direct, and the gateway gets the pieces on
// one link, where they can be put together again. A later fragment whose
// first was not seen takes the current path.
func TestFragmentsTakeTheirFlowsPath(t *testing.T) {
	r := newTestRouter()
	src, dst := netip.AddrPortFrom(innerAddr, 4000), netip.AddrPortFrom(webVIP, 7)
	direct := r.directFlow(src, dst)

	fragment := func(id, offset uint16, more bool) []byte {
		p := udpReply(src, dst, strings.Repeat("x", 64))
		binary.BigEndian.PutUint16(p[4:], id)
		if more {
			offset |= 0x2000
		}
		binary.BigEndian.PutUint16(p[6:], offset)
		return p
	}
	for i, p := range [][]byte{fragment(9, 0, true), fragment(9, 8, true), fragment(9, 16, false)} {
		if got := r.pathOf("web", p); got != direct {
			t.Errorf("fragment %d of the direct flow's datagram took path %v, want the direct one", i, got)
		}
	}
	if got := r.pathOf("web", fragment(10, 8, false)); got != nil {
		t.Errorf("a later fragment of an unseen datagram took path %v, want the relay (the current path)", got)
	}
}
