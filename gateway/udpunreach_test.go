package gateway

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// TestUDPClientUnreachableKeepsFlow: the flow's own client reports its
// port unreachable (a client socket closed with an answer on its way, and
// the port then used again, as a client that sends from a fixed port
// does). gVisor leaves the error on the flow's endpoint until the next
// read or write, which returns it instead of the datagram. The flow goes
// on to its idle timeout, and neither way loses a datagram to the error:
// the client's next datagram reaches the backend, and the backend's next
// datagram reaches the client, whichever comes first.
func TestUDPClientUnreachableKeepsFlow(t *testing.T) {
	for _, first := range []string{"client", "backend"} {
		t.Run(first+" first", func(t *testing.T) {
			backend, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer backend.Close()
			h := newHarness(t, emptyUDPConfig(backend.LocalAddr().(*net.UDPAddr).Port, "1m"))
			src, vip := netip.AddrPortFrom(acmeClient, 4000), netip.MustParseAddrPort("10.100.0.20:7")
			c, err := h.client.DialUDPFrom(src, vip)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			read := func(from net.Conn, who, what string) string {
				t.Helper()
				from.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 64)
				n, err := from.Read(buf)
				if err != nil {
					t.Fatalf("%s: the %s got nothing: %v", what, who, err)
				}
				return string(buf[:n])
			}
			recv := func(what string) string { t.Helper(); return read(backend, "backend", what) }
			answer := func(what string) string { t.Helper(); return read(c, "client", what) }

			c.Write([]byte("hello"))
			backend.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			_, gw, err := backend.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatal(err)
			}
			backend.WriteToUDPAddrPort([]byte("welcome"), gw)
			if got := answer("welcome"); got != "welcome" {
				t.Fatalf("the client got %q, want welcome", got)
			}
			flows := h.gw.flows.list(nil)
			if len(flows) != 1 {
				t.Fatalf("%d flows", len(flows))
			}
			// The client's error about the answer it got.
			h.gw.lan.Deliver(icmpUnreachable(acmeClient, vip.Addr(), netstacktest.UDPDatagram(vip, src, []byte("welcome"))))

			if first == "client" {
				c.Write([]byte("again"))
				if got := recv("again"); got != "again" {
					t.Fatalf("the backend got %q, want again", got)
				}
				backend.WriteToUDPAddrPort([]byte("reply"), gw)
				if got := answer("reply"); got != "reply" {
					t.Fatalf("the client got %q, want reply", got)
				}
			} else {
				backend.WriteToUDPAddrPort([]byte("push"), gw)
				if got := answer("push"); got != "push" {
					t.Fatalf("the client got %q, want push", got)
				}
				c.Write([]byte("again"))
				if got := recv("again"); got != "again" {
					t.Fatalf("the backend got %q, want again", got)
				}
			}
			if reason, closed := flows[0].closed(); closed || h.gw.flows.len() != 1 {
				t.Fatalf("the flow ended (%s), %d flows: the client's port unreachable ended it", reason, h.gw.flows.len())
			}
		})
	}
}
