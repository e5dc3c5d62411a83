package relay

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/udpseg"
)

// freePorts finds n consecutive UDP ports free on 127.0.0.1.
func freePorts(t *testing.T, n int) conf.PortRange {
	t.Helper()
	for range 50 {
		first := 40000 + rand.IntN(20000)
		ok := true
		for p := first; p < first+n && ok; p++ {
			c, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				continue
			}
			c.Close()
		}
		if ok {
			return conf.PortRange{First: uint16(first), Last: uint16(first + n - 1)}
		}
	}
	t.Fatal("no free ports")
	return conf.PortRange{}
}

// newTestForwarding returns a forwarding on 127.0.0.1 over n ports.
func newTestForwarding(t *testing.T, n int) *forwarding {
	t.Helper()
	fw := newForwarding(freePorts(t, n), "127.0.0.1:4433", newForwardMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	t.Cleanup(fw.shutdown)
	return fw
}

// udpAt opens a UDP socket on addr ("127.0.0.2:0").
func udpAt(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// recv reads datagrams from c (cut apart if they came as a GRO run, which
// they do not here: the test sockets have no GRO) until want of them came,
// and returns them and the source of the last.
func recv(t *testing.T, c *net.UDPConn, want int) ([][]byte, netip.AddrPort) {
	t.Helper()
	var out [][]byte
	var from netip.AddrPort
	buf := make([]byte, 65536)
	for len(out) < want {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(out), want, err)
		}
		out, from = append(out, append([]byte(nil), buf[:n]...)), src
	}
	return out, from
}

// quiet fails if c receives anything within d.
func quiet(t *testing.T, c *net.UDPConn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 2048)
	if n, src, err := c.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("got %q from %v", buf[:n], src)
	}
}

// send writes payloads from c to dst, as one GSO run when gso is set.
func send(t *testing.T, c *net.UDPConn, dst netip.AddrPort, gso bool, payloads ...[]byte) {
	t.Helper()
	if gso {
		var run []byte
		for _, p := range payloads {
			run = append(run, p...)
		}
		if _, _, err := c.WriteMsgUDPAddrPort(run, udpseg.PutSegmentSize(make([]byte, udpseg.CmsgSpace), len(payloads[0])), dst); err != nil {
			t.Fatal(err)
		}
		return
	}
	for _, p := range payloads {
		if _, err := c.WriteToUDPAddrPort(p, dst); err != nil {
			t.Fatal(err)
		}
	}
}

func fwdDropped(fw *forwarding, reason string) float64 {
	return testutil.ToFloat64(fw.m.dropped.WithLabelValues(reason))
}

// TestForwarder carries datagrams between an agent socket and a gateway
// socket: only from the agent's address, locked to the first socket that
// sends from there, only to the gateway's target, runs of datagrams (GSO)
// intact both ways.
func TestForwarder(t *testing.T) {
	fw := newTestForwarding(t, 4)
	gw := udpAt(t, "127.0.0.1:0")
	agentSock := udpAt(t, "127.0.0.2:0")
	other := udpAt(t, "127.0.0.2:0")
	stranger := udpAt(t, "127.0.0.3:0")
	f, why := fw.open("acme/agent/a1", "acme/gateway/gw1", "gw1", netip.MustParseAddr("127.0.0.2"), addrOf(gw))
	if f == nil {
		t.Fatalf("no forwarder: %s", why)
	}
	if f.port < fw.ports.First || f.port > fw.ports.Last {
		t.Fatalf("port %d outside %v", f.port, fw.ports)
	}
	fwdAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), f.port)

	send(t, stranger, fwdAddr, false, []byte("stranger"))
	waitFor(t, "the stranger's packet dropped", func() bool { return fwdDropped(fw, fwdDropSource) == 1 })
	quiet(t, gw, 50*time.Millisecond)

	// The gateway before the agent: nobody to send it to.
	gwSide := udpAt(t, "127.0.0.1:0") // not the target: the connected socket ignores it
	send(t, gwSide, addrOf(f.gconn), false, []byte("not the gateway"))
	time.Sleep(50 * time.Millisecond)
	if _, err := gw.WriteToUDPAddrPort([]byte("early"), addrOf(f.gconn)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the early packet dropped", func() bool { return fwdDropped(fw, fwdDropNoAgent) == 1 })

	send(t, agentSock, fwdAddr, false, []byte("hello"))
	got, from := recv(t, gw, 1)
	if string(got[0]) != "hello" || from != addrOf(f.gconn) {
		t.Fatalf("the gateway got %q from %v", got[0], from)
	}
	send(t, gw, from, false, []byte("welcome"))
	got, from = recv(t, agentSock, 1)
	if string(got[0]) != "welcome" || from != fwdAddr {
		t.Fatalf("the agent got %q from %v, want from %v", got[0], from, fwdAddr)
	}

	// Another socket of the agent's address: the forwarder is locked.
	send(t, other, fwdAddr, false, []byte("hijack"))
	waitFor(t, "the other socket's packet dropped", func() bool { return fwdDropped(fw, fwdDropSource) == 2 })
	quiet(t, gw, 50*time.Millisecond)

	for _, dir := range []struct {
		name     string
		from, to *net.UDPConn
		dst      netip.AddrPort
	}{
		{"up", agentSock, gw, fwdAddr},
		{"down", gw, agentSock, addrOf(f.gconn)},
	} {
		t.Run("a GSO run "+dir.name, func(t *testing.T) {
			var want [][]byte
			for i := range 5 {
				want = append(want, bytes.Repeat([]byte{byte('a' + i)}, 1200))
			}
			want = append(want, []byte("short last"))
			send(t, dir.from, dir.dst, udpseg.GSO(), want...)
			got, _ := recv(t, dir.to, len(want))
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("datagram %d: %d bytes, want %d", i, len(got[i]), len(want[i]))
				}
			}
		})
	}
	// Counted after the send returns, so possibly after the receiver read
	// them: wait, then require exactly 7 each way.
	counted := func() (float64, float64) {
		return testutil.ToFloat64(fw.m.datagrams[fwdUp]), testutil.ToFloat64(fw.m.datagrams[fwdDown])
	}
	waitFor(t, "7 datagrams counted each way", func() bool { up, down := counted(); return up >= 7 && down >= 7 })
	time.Sleep(20 * time.Millisecond)
	if up, down := counted(); up != 7 || down != 7 {
		t.Errorf("datagrams up %v down %v, want 7 and 7", up, down)
	}
	if b := testutil.ToFloat64(fw.m.bytes[fwdUp]); b != 5+5*1200+10 {
		t.Errorf("bytes up %v", b)
	}
	if testutil.ToFloat64(fw.m.live) != 1 {
		t.Errorf("live %v", testutil.ToFloat64(fw.m.live))
	}
	f.close(fwdCloseShutdown, "test")
	send(t, agentSock, fwdAddr, false, []byte("after close"))
	quiet(t, gw, 50*time.Millisecond)
	if testutil.ToFloat64(fw.m.live) != 0 {
		t.Errorf("live %v after close", testutil.ToFloat64(fw.m.live))
	}
}

// TestForwarderLimits: the ports of the range, the cap per agent and the
// target's checks bound what the forwarders hold.
func TestForwarderLimits(t *testing.T) {
	target := netip.MustParseAddrPort("127.0.0.1:9")
	ip := netip.MustParseAddr("127.0.0.1")
	t.Run("ports", func(t *testing.T) {
		fw := newTestForwarding(t, 2)
		for i := range 2 {
			if f, why := fw.open(fmt.Sprintf("acme/agent/a%d", i), "g", "g", ip, target); f == nil {
				t.Fatalf("forwarder %d: %s", i, why)
			}
		}
		if f, why := fw.open("acme/agent/a9", "g", "g", ip, target); f != nil || why != fwdRefuseNoPort {
			t.Fatalf("a third forwarder on two ports: %v, %q", f, why)
		}
	})
	t.Run("per agent", func(t *testing.T) {
		fw := newTestForwarding(t, forwardPerAgent+2)
		var first *forwarder
		for i := range forwardPerAgent {
			f, why := fw.open("acme/agent/a1", "g", "g", ip, target)
			if f == nil {
				t.Fatalf("forwarder %d: %s", i, why)
			}
			first = cmpOr(first, f)
		}
		if f, why := fw.open("acme/agent/a1", "g", "g", ip, target); f != nil || why != fwdRefuseAgentCap {
			t.Fatalf("one more: %v, %q", f, why)
		}
		if f, _ := fw.open("acme/agent/a2", "g", "g", ip, target); f == nil {
			t.Fatal("another agent was refused")
		}
		first.close(fwdCloseShutdown, "test")
		if f, why := fw.open("acme/agent/a1", "g", "g", ip, target); f == nil {
			t.Fatalf("after one closed: %s", why)
		}
	})
	t.Run("targets", func(t *testing.T) {
		fw := newTestForwarding(t, 1)
		for _, bad := range []string{"0.0.0.0:4434", "224.0.0.1:4434", "127.0.0.1:0"} {
			if f, why := fw.open("acme/agent/a1", "g", "g", ip, netip.MustParseAddrPort(bad)); f != nil || why != fwdRefuseTarget {
				t.Errorf("target %s: %v, %q", bad, f, why)
			}
		}
		if f, why := fw.open("acme/agent/a1", "g", "g", netip.Addr{}, target); f != nil || why != fwdRefuseTarget {
			t.Errorf("no agent address: %v, %q", f, why)
		}
	})
}

func cmpOr(a, b *forwarder) *forwarder {
	if a != nil {
		return a
	}
	return b
}

// TestForwarderExpiry: a forwarder the agent never uses closes after the
// lock wait; one that carried nothing for the idle time closes too, and
// its port is free again.
func TestForwarderExpiry(t *testing.T) {
	fw := newTestForwarding(t, 1)
	// The lock wait bounds the wait for the agent's first packet, which
	// under -race on a loaded machine may take most of 100 ms to read.
	// The idle time is ten keepalive intervals and more: a loaded machine
	// (-race, other packages' tests on the same two cores) stretched a gap
	// past 300 ms, and the busy forwarder closed.
	fw.lockWait, fw.idle = time.Second, time.Second
	gw := udpAt(t, "127.0.0.1:0")
	ip := netip.MustParseAddr("127.0.0.1")
	if f, why := fw.open("acme/agent/a1", "g", "g", ip, addrOf(gw)); f == nil {
		t.Fatal(why)
	}
	waitFor(t, "the unused forwarder closed", func() bool { return testutil.ToFloat64(fw.m.live) == 0 })
	closed := func(reason string) float64 { return testutil.ToFloat64(fw.m.closed.WithLabelValues(reason)) }
	if closed(fwdCloseUnused) != 1 {
		t.Errorf("%v forwarders counted as closed unused, want 1", closed(fwdCloseUnused))
	}

	f, why := fw.open("acme/agent/a1", "g", "g", ip, addrOf(gw))
	if f == nil {
		t.Fatalf("the port was not freed: %s", why)
	}
	agentSock := udpAt(t, "127.0.0.1:0")
	fwdAddr := netip.AddrPortFrom(ip, f.port)
	start, last := time.Now(), time.Now()
	for time.Since(start) < 1500*time.Millisecond { // busy for longer than the idle time: stays open
		send(t, agentSock, fwdAddr, false, []byte("keepalive"))
		recv(t, gw, 1)
		last = time.Now()
		time.Sleep(50 * time.Millisecond)
	}
	if testutil.ToFloat64(fw.m.live) != 1 {
		t.Fatal("a busy forwarder closed")
	}
	waitFor(t, "the idle forwarder closed", func() bool { return testutil.ToFloat64(fw.m.live) == 0 })
	if d := time.Since(last); d < fw.idle-50*time.Millisecond { // the forwarder stamped it a little before recv returned
		t.Errorf("closed %v after the last packet, before it was idle for %v", d, fw.idle)
	}
	if closed(fwdCloseIdle) != 1 || closed(fwdCloseUnused) != 1 {
		t.Errorf("closed counted: idle %v, unused %v, want 1 and 1", closed(fwdCloseIdle), closed(fwdCloseUnused))
	}
}

// TestForwarderFamilies: IPv6 agents and gateways, and IPv4 agents of a
// relay that listens on "[::]" (their addresses arrive IPv4-mapped).
func TestForwarderFamilies(t *testing.T) {
	for _, tc := range []struct {
		name, listen, agent, gw, dial string
	}{
		{"IPv6", "[::1]:4433", "[::1]:0", "[::1]:0", "::1"},
		{"IPv4 agent, dual-stack relay", "[::]:4433", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1"},
		{"IPv4 agent, IPv6 gateway", "[::]:4433", "127.0.0.1:0", "[::1]:0", "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fw := newForwarding(freePorts(t, 2), tc.listen, newForwardMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
			t.Cleanup(fw.shutdown)
			gw, agentSock, other := udpAt(t, tc.gw), udpAt(t, tc.agent), udpAt(t, tc.agent)
			// The agent's relay session address, as the relay's listener
			// reports it: IPv4-mapped on a dual-stack socket.
			sessionIP := netip.MustParseAddr(tc.dial)
			if sessionIP.Is4() {
				sessionIP = netip.AddrFrom16(sessionIP.As16())
			}
			f, why := fw.open("acme/agent/a1", "g", "g", sessionIP, addrOf(gw))
			if f == nil {
				t.Fatal(why)
			}
			fwdAddr := netip.AddrPortFrom(netip.MustParseAddr(tc.dial), f.port)
			send(t, agentSock, fwdAddr, false, []byte("hello"))
			got, from := recv(t, gw, 1)
			if string(got[0]) != "hello" {
				t.Fatalf("the gateway got %q", got[0])
			}
			send(t, gw, from, false, []byte("welcome"))
			if got, from := recv(t, agentSock, 1); string(got[0]) != "welcome" || from.Port() != f.port {
				t.Fatalf("the agent got %q from %v", got[0], from)
			}
			send(t, other, fwdAddr, false, []byte("hijack"))
			waitFor(t, "the other socket's packet dropped", func() bool { return fwdDropped(fw, fwdDropSource) == 1 })
		})
	}
}

// TestForwarderSurvivesICMP: a gateway listener that is gone for a moment
// (port unreachable: the forwarder's socket reports it on a later read or
// send) costs the packets sent meanwhile, not the forwarder.
func TestForwarderSurvivesICMP(t *testing.T) {
	fw := newTestForwarding(t, 1)
	gw := udpAt(t, "127.0.0.1:0")
	target := addrOf(gw)
	agentSock := udpAt(t, "127.0.0.1:0")
	f, why := fw.open("acme/agent/a1", "g", "g", netip.MustParseAddr("127.0.0.1"), target)
	if f == nil {
		t.Fatal(why)
	}
	fwdAddr := netip.AddrPortFrom(target.Addr(), f.port)
	send(t, agentSock, fwdAddr, false, []byte("first"))
	recv(t, gw, 1)
	gw.Close()
	for i := range 5 {
		send(t, agentSock, fwdAddr, false, []byte(fmt.Sprint("lost ", i)))
		time.Sleep(20 * time.Millisecond)
	}
	gw = udpAt(t, target.String())
	send(t, agentSock, fwdAddr, false, []byte("again"))
	got, from := recv(t, gw, 1)
	if string(got[0]) != "again" {
		t.Fatalf("the gateway got %q", got[0])
	}
	send(t, gw, from, false, []byte("back"))
	if got, _ := recv(t, agentSock, 1); string(got[0]) != "back" {
		t.Fatalf("the agent got %q", got[0])
	}
	if testutil.ToFloat64(fw.m.live) != 1 {
		t.Fatal("the forwarder closed")
	}
}

// TestForwarderBuffers: a forwarder's sockets ask for quic-go's buffer
// size (a burst that waits for a core must fit; with the kernel's default
// the relay's socket dropped runs of datagrams, see docs/performance.md,
// "Forwarded paths"), as far as net.core.rmem_max and wmem_max allow.
func TestForwarderBuffers(t *testing.T) {
	limit := func(name string) int {
		b, err := os.ReadFile("/proc/sys/net/core/" + name)
		if err != nil {
			t.Skip(err)
		}
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	fw := newTestForwarding(t, 1)
	f, why := fw.open("acme/agent/a1", "g", "g", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddrPort("127.0.0.1:9"))
	if f == nil {
		t.Fatal(why)
	}
	for _, c := range []struct {
		name string
		conn *net.UDPConn
	}{{"agent side", f.aconn}, {"gateway side", f.gconn}} {
		for _, o := range []struct {
			opt   int
			sysct string
		}{{unix.SO_RCVBUF, "rmem_max"}, {unix.SO_SNDBUF, "wmem_max"}} {
			rc, err := c.conn.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var got int
			var gerr error
			rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, o.opt) })
			if gerr != nil {
				t.Fatal(gerr)
			}
			// The kernel doubles what it grants (bookkeeping).
			if want := 2 * min(forwardSockBuf, limit(o.sysct)); got < want {
				t.Errorf("%s: %s %d, want at least %d", c.name, o.sysct, got, want)
			}
		}
	}
}
