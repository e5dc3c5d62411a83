package listenaddr

import (
	"net"
	"net/netip"
	"slices"
	"testing"
)

func TestNetwork(t *testing.T) {
	for _, tc := range []struct{ base, addr, want string }{
		{"tcp", "0.0.0.0:9090", "tcp4"},
		{"udp", "0.0.0.0:4433", "udp4"},
		{"udp", "192.0.2.1:53", "udp4"},
		{"tcp", "127.0.0.1:0", "tcp4"},
		{"udp", "[::ffff:192.0.2.1]:53", "udp4"},
		{"udp", "[::]:4433", "udp"},
		{"tcp", "[::1]:9090", "tcp"},
		{"udp", ":4433", "udp"},
		{"tcp", "localhost:9090", "tcp"},
		{"tcp", "no port", "tcp"},
	} {
		if got := Network(tc.base, tc.addr); got != tc.want {
			t.Errorf("Network(%q, %q) = %q, want %q", tc.base, tc.addr, got, tc.want)
		}
	}
}

// TestUnspecifiedIPv4IsIPv4Only: a listener on 0.0.0.0 takes no IPv6
// connection and no IPv6 datagram (Go's own "tcp" and "udp" would: their
// socket for 0.0.0.0 is a dual-stack one on [::]).
func TestUnspecifiedIPv4IsIPv4Only(t *testing.T) {
	probe, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	probe.Close()

	l, err := Listen("0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	if c, err := net.Dial("tcp", net.JoinHostPort("::1", port)); err == nil {
		c.Close()
		t.Errorf("a listener on 0.0.0.0 (%s) took a connection to [::1]", l.Addr())
	}
	if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port)); err != nil {
		t.Errorf("a listener on 0.0.0.0 refused 127.0.0.1: %v", err)
	} else {
		c.Close()
	}

	pc, err := ListenPacket("0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if got := pc.LocalAddr().(*net.UDPAddr).IP; got.To4() == nil {
		t.Errorf("a UDP socket for 0.0.0.0 is bound to %v, want an IPv4 socket", got)
	}
}

// TestHostAddrs: the host's addresses include its loopback one.
func TestHostAddrs(t *testing.T) {
	if got := HostAddrs(); !slices.Contains(got, netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("HostAddrs() = %v, want 127.0.0.1 among them", got)
	}
}
