package netstack_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
)

// connHandler hands every TCP connection it accepts to the test.
type connHandler struct {
	echoHandler
	conns chan *netstack.TCPConn
}

func (h *connHandler) HandleTCP(req *netstack.TCPRequest) {
	c, err := req.Accept()
	if err != nil {
		return
	}
	h.conns <- c
}

// dialAccepted opens a connection from the client stack and returns both
// of its ends; the test's end closes them.
func dialAccepted(t *testing.T) (client net.Conn, server *netstack.TCPConn) {
	t.Helper()
	h := &connHandler{conns: make(chan *netstack.TCPConn, 1)}
	c, s := dialAcceptedOn(t, newFixture(t, h), h, "10.100.0.5:80")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	s.SetDeadline(time.Now().Add(5 * time.Second))
	return c, s
}

// dialAcceptedOn opens a connection to vip from f's client stack, which
// h accepts, and returns both of its ends; the test's end closes them.
func dialAcceptedOn(t *testing.T, f *fixture, h *connHandler, vip string) (client net.Conn, server *netstack.TCPConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := f.client.DialTCP(ctx, clientAddr, netip.MustParseAddrPort(vip))
	if err != nil {
		t.Fatalf("dial %s: %v", vip, err)
	}
	s := <-h.conns
	t.Cleanup(func() {
		c.Close()
		s.Close()
	})
	return c, s
}

// TestTCPConnResetWhileWriting: a client that resets the connection while
// a Write to it waits for room. The Write reports the reset as
// ECONNRESET, as TryWrite does, and so does a TryRead after it. gVisor
// hands the reset to the first call that asks and ends the connection's
// receiving side: the Write's error carried only gVisor's text, and
// TryRead then reported io.EOF, a clean end of what the client sent, so
// the gateway passed a FIN on to the backend for a client that aborted.
func TestTCPConnResetWhileWriting(t *testing.T) {
	c, s := dialAccepted(t)
	werr := make(chan error, 1)
	go func() {
		_, err := s.Write(make([]byte, 32<<20)) // the client reads none of it
		werr <- err
	}()
	c.(interface{ SetLinger(int) error }).SetLinger(0)
	c.Close()
	if err := <-werr; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Write after the client's reset: %v, want ECONNRESET", err)
	}
	if _, err := s.TryRead(make([]byte, 64)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("TryRead after the reset: %v, want ECONNRESET", err)
	}
	if _, err := s.TryWrite([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("TryWrite after the reset: %v, want ECONNRESET", err)
	}
}

// TestTCPConnSetLingerResets: SetLinger(0) makes Close reset the
// connection, as for a kernel socket: the client sees a reset, not the
// FIN of a stream that ended well.
func TestTCPConnSetLingerResets(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sec   int
		reset bool
	}{
		{"default", -1, false},
		{"linger 0", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s := dialAccepted(t)
			if _, err := s.Write([]byte("partial")); err != nil {
				t.Fatal(err)
			}
			if err := s.SetLinger(tc.sec); err != nil {
				t.Fatal(err)
			}
			s.Close()
			got, err := io.ReadAll(c)
			if reset := err != nil && strings.Contains(err.Error(), "connection reset"); reset != tc.reset {
				t.Fatalf("the client read %q, then %v; reset %v, want %v", got, err, reset, tc.reset)
			}
			if !tc.reset && string(got) != "partial" {
				t.Fatalf("the client read %q before the FIN", got)
			}
		})
	}
}

// TestTCPConnResetAfterFIN: a client that sent its FIN and then reset the
// connection (CLOSE-WAIT, where gVisor, as Linux, closes the endpoint
// instead of recording a reset) is reported as EPIPE, as Linux reports it,
// by Write and TryWrite: gVisor gave only "endpoint is closed for send",
// which the gateway logged as an error of its own.
func TestTCPConnResetAfterFIN(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(s *netstack.TCPConn) error
	}{
		{"Write", func(s *netstack.TCPConn) error { _, err := s.Write([]byte("x")); return err }},
		{"TryWrite", func(s *netstack.TCPConn) error { _, err := s.TryWrite([]byte("x")); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s := dialAccepted(t)
			c.(interface{ CloseWrite() error }).CloseWrite()
			s.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := s.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("read of the client's FIN: %d, %v", n, err)
			}
			c.(interface{ SetLinger(int) error }).SetLinger(0)
			c.Close()
			deadline := time.Now().Add(5 * time.Second)
			var err error
			for err == nil && time.Now().Before(deadline) { // until the reset has arrived
				err = tc.write(s)
				time.Sleep(time.Millisecond)
			}
			if !errors.Is(err, syscall.EPIPE) {
				t.Fatalf("write after the client's FIN and reset: %v, want EPIPE", err)
			}
		})
	}
}

// TestResetOutsidePools: once the pools no longer hold a VIP, a TCP
// connection of that VIP that its owner closed already (its FIN sent, the
// client's answer dropped from now on as not routed) is reset, so that
// gVisor does not send its FIN and unacknowledged data for minutes; a
// connection of a VIP still in the pools is left alone.
func TestResetOutsidePools(t *testing.T) {
	h := &connHandler{conns: make(chan *netstack.TCPConn, 2)}
	f := newFixture(t, h, func(c *netstack.Config) {
		c.Pools = append(c.Pools, netip.MustParsePrefix("10.101.0.0/24"))
	})
	goneC, goneS := dialAcceptedOn(t, f, h, "10.100.0.5:80")
	keptC, _ := dialAcceptedOn(t, f, h, "10.101.0.5:80")
	closeServerEnd(t, goneC, goneS)

	f.ns.SetPools([]netip.Prefix{netip.MustParsePrefix("10.101.0.0/24")})
	if n := f.ns.ResetOutsidePools(); n != 1 {
		t.Errorf("ResetOutsidePools reset %d connections, want 1", n)
	}
	// The client's end learns of the reset: its writes fail (gVisor says
	// "closed for send" to a write after the RST that followed the FIN).
	// Without it they go on succeeding, into packets dropped as not routed.
	waitWriteFails(t, goneC, "the client's end of the VIP that left the pools")
	stillOpen(t, keptC, "the connection of a VIP still in the pools")
}

func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// TestResetTCPMatches: ResetTCP hands match each TCP connection's local
// (VIP) and remote (client) address and port, and resets those it
// chooses, open or closed already, and no other.
func TestResetTCPMatches(t *testing.T) {
	h := &connHandler{conns: make(chan *netstack.TCPConn, 2)}
	f := newFixture(t, h)
	goneC, goneS := dialAcceptedOn(t, f, h, "10.100.0.5:80")
	keptC, _ := dialAcceptedOn(t, f, h, "10.100.0.6:80")
	closeServerEnd(t, goneC, goneS)

	gone := netip.MustParseAddrPort(goneC.LocalAddr().String())
	seen := map[netip.AddrPort]netip.AddrPort{}
	n := f.ns.ResetTCP(func(local, remote netip.AddrPort) bool {
		seen[remote] = local
		return remote == gone
	})
	if n != 1 {
		t.Errorf("ResetTCP reset %d connections, want 1", n)
	}
	kept := netip.MustParseAddrPort(keptC.LocalAddr().String())
	want := map[netip.AddrPort]netip.AddrPort{
		gone: netip.MustParseAddrPort("10.100.0.5:80"),
		kept: netip.MustParseAddrPort("10.100.0.6:80"),
	}
	if len(seen) != len(want) || seen[gone] != want[gone] || seen[kept] != want[kept] {
		t.Errorf("match saw %v, want %v", seen, want)
	}
	waitWriteFails(t, goneC, "the matched connection's client end")
	stillOpen(t, keptC, "the connection match left")
}

// closeServerEnd closes the server's end of a connection: its FIN reaches
// the client, which keeps its own end open.
func closeServerEnd(t *testing.T, client net.Conn, server *netstack.TCPConn) {
	t.Helper()
	server.Close()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the client's read after the FIN: %v, want EOF", err)
	}
}

// waitWriteFails writes to c until a write fails, for 5 s at most: its
// end learnt of a reset (gVisor says "closed for send" to a write after
// the RST that followed the FIN). Without the reset, writes go on
// succeeding, into packets the stack drops.
func waitWriteFails(t *testing.T, c net.Conn, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Write([]byte("x")); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was never reset", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stillOpen checks that c reads nothing, neither an end nor a reset, for
// 300 ms.
func stillOpen(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
		t.Errorf("%s: %v, want it open", what, err)
	}
}
