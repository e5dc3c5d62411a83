package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// echoHandler accepts flows to VIPs ending in .5 and echoes them; others are
// refused. It answers pings itself.
type echoHandler struct {
	tcpSeen, udpSeen atomic.Int32
}

var accepted = netip.MustParseAddr("10.100.0.5")

func (h *echoHandler) HandleTCP(req *netstack.TCPRequest) {
	h.tcpSeen.Add(1)
	if req.Dst.Addr() != accepted {
		req.Refuse()
		return
	}
	c, err := req.Accept()
	if err != nil {
		return
	}
	go func() {
		defer c.Close()
		io.Copy(c, c)
	}()
}

func (h *echoHandler) HandleUDP(req *netstack.UDPRequest) bool {
	h.udpSeen.Add(1)
	if req.Dst.Addr() != accepted {
		return false
	}
	c, err := req.Accept()
	if err != nil {
		return false
	}
	go func() {
		defer c.Close()
		buf := make([]byte, 2048)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		c.Write(buf[:n])
	}()
	return true
}

func (h *echoHandler) HandleEcho(req *netstack.EchoRequest) {
	if req.Dst == accepted {
		req.Reply()
		return
	}
	req.Drop()
}

type fixture struct {
	ns     *netstack.Stack
	client *netstacktest.Client
	link   *netstack.Link
	drops  atomic.Int32
}

var (
	clientAddr = netip.MustParseAddr("198.51.100.10")
	strangerIP = netip.MustParseAddr("192.0.2.66")
)

// newFixture joins a client stack to a stack with handler h; opts adjust
// the stack's configuration.
func newFixture(t *testing.T, h netstack.Handler, opts ...func(*netstack.Config)) *fixture {
	t.Helper()
	return newLinkFixture(t, h, nil, opts...)
}

// newLinkFixture is newFixture with the link's configuration changed by
// link (when not nil).
func newLinkFixture(t *testing.T, h netstack.Handler, link func(*netstack.LinkConfig), opts ...func(*netstack.Config)) *fixture {
	t.Helper()
	f := &fixture{}
	cfg := netstack.Config{
		Pools:   []netip.Prefix{netip.MustParsePrefix("10.100.0.0/24")},
		Local:   []netip.Addr{netip.MustParseAddr("10.100.0.1")},
		Handler: h,
		OnDrop:  func(netstack.DropReason) { f.drops.Add(1) },
	}
	for _, o := range opts {
		o(&cfg)
	}
	ns, err := netstack.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err := netstacktest.NewClient(1420, clientAddr, strangerIP)
	if err != nil {
		t.Fatal(err)
	}
	lc := netstack.LinkConfig{
		Name:  "test",
		Admit: func(src netip.Addr) bool { return src != strangerIP },
	}
	if link != nil {
		link(&lc)
	}
	l, err := ns.AttachDevice(client, lc)
	if err != nil {
		t.Fatal(err)
	}
	f.ns, f.client, f.link = ns, client, l
	t.Cleanup(func() {
		client.Close()
		l.Close()
		ns.Close()
	})
	return f
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestTCPEchoAndRefusal(t *testing.T) {
	h := &echoHandler{}
	f := newFixture(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	c, err := f.client.DialTCP(ctx, clientAddr, netip.MustParseAddrPort("10.100.0.5:80"))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	msg := bytes.Repeat([]byte("ztgate"), 50000)
	go c.Write(msg)
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo mismatch")
	}
	c.Close()

	start := time.Now()
	_, err = f.client.DialTCP(ctx, clientAddr, netip.MustParseAddrPort("10.100.0.9:80"))
	if !errors.Is(err, syscall.ECONNREFUSED) && (err == nil || !contains(err.Error(), "refused")) {
		t.Fatalf("dial to refused VIP: got %v, want connection refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refusal took %v", d)
	}
}

func TestUnknownSourceDropped(t *testing.T) {
	h := &echoHandler{}
	f := newFixture(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := f.client.DialTCP(ctx, strangerIP, netip.MustParseAddrPort("10.100.0.5:80")); err == nil {
		t.Fatal("dial from an unknown source succeeded")
	}
	if h.tcpSeen.Load() != 0 {
		t.Fatal("handler saw a flow from an unknown source")
	}
	if f.drops.Load() == 0 {
		t.Fatal("drop not counted")
	}
}

func TestUDPEchoAndPortUnreachable(t *testing.T) {
	h := &echoHandler{}
	f := newFixture(t, h)
	c, err := f.client.DialUDP(clientAddr, netip.MustParseAddrPort("10.100.0.5:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("udp echo: %q %v", buf[:n], err)
	}

	r, err := f.client.DialUDP(clientAddr, netip.MustParseAddrPort("10.100.0.9:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before := f.client.Unreachables()
	r.Write([]byte("hello"))
	// The client stack does not surface ICMP errors on gonet reads; count
	// the port-unreachable it received instead.
	deadline := time.Now().Add(time.Second)
	for f.client.Unreachables() == before {
		if time.Now().After(deadline) {
			t.Fatal("no ICMP port unreachable for a refused UDP flow")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEcho(t *testing.T) {
	h := &echoHandler{}
	f := newFixture(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p, err := f.client.Ping(ctx, f.link, clientAddr, accepted, 7, 1, []byte("abc"))
	if err != nil || string(p) != "abc" {
		t.Fatalf("ping: %q %v", p, err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if _, err := f.client.Ping(ctx2, f.link, clientAddr, netip.MustParseAddr("10.100.0.9"), 7, 2, nil); err == nil {
		t.Fatal("ping to a VIP without service got a reply")
	}
	// The gateway's own address is answered by the stack.
	ctx3, cancel3 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel3()
	if _, err := f.client.Ping(ctx3, f.link, clientAddr, netip.MustParseAddr("10.100.0.1"), 7, 3, nil); err != nil {
		t.Fatalf("ping gateway address: %v", err)
	}
}

func TestListenLocal(t *testing.T) {
	f := newFixture(t, &echoHandler{})
	pc, err := f.ns.ListenUDP(netip.MustParseAddrPort("10.100.0.1:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 512)
		n, from, err := pc.ReadFrom(buf)
		if err == nil {
			pc.WriteTo(buf[:n], from)
		}
	}()
	c, err := f.client.DialUDP(clientAddr, netip.MustParseAddrPort("10.100.0.1:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("q"))
	buf := make([]byte, 16)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "q" {
		t.Fatalf("local listener: %q %v", buf[:n], err)
	}
	var _ net.PacketConn = pc
}

func contains(s, sub string) bool { return bytes.Contains([]byte(s), []byte(sub)) }
