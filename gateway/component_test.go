package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

var (
	acmeClient   = netip.MustParseAddr("198.51.100.10")
	globexClient = netip.MustParseAddr("203.0.113.10")
	strayClient  = netip.MustParseAddr("192.0.2.200")
)

// fakePinger answers pings to the addresses in up.
type fakePinger struct{ up map[netip.Addr]bool }

func (p fakePinger) Ping(ctx context.Context, dst netip.Addr, payload []byte) error {
	if p.up[dst] {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}
func (fakePinger) Close() error { return nil }

// harness is a gateway whose LAN is a client stack with addresses in both
// tenants' prefixes and one in none.
type harness struct {
	gw     *Gateway
	client *netstacktest.Client
}

func newHarness(t testing.TB, toml string, opts ...func(*Options)) *harness {
	t.Helper()
	return newHarnessWith(t, toml, nil, opts...)
}

// newHarnessWith is newHarness with a hook that sees the gateway after New
// and before Start.
func newHarnessWith(t testing.TB, toml string, beforeStart func(*Gateway), opts ...func(*Options)) *harness {
	t.Helper()
	toml = strings.ReplaceAll(toml, "STATE", t.TempDir())
	cfg, err := conf.ParseGateway("test.toml", []byte(toml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	client, err := netstacktest.NewClient(1420, acmeClient, globexClient, strayClient)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Device: client,
		Pinger: fakePinger{up: map[netip.Addr]bool{netip.MustParseAddr("127.0.0.1"): true}},
	}
	for _, f := range opts {
		f(&o)
	}
	gw, err := New(cfg, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if beforeStart != nil {
		beforeStart(gw)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	return &harness{gw: gw, client: client}
}

// baseConfig publishes web (tcp 80 → the HTTP backend) for acme, and echo
// (udp 7 → the UDP backend) for both tenants.
func baseConfig(httpPort, udpPort int) string {
	return fmt.Sprintf(quietGateway+twoTenants+`[[service]]
name = "web"
tenants = ["acme"]
vip = "10.100.0.10"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = %d
  [service.health]
  type = "none"
[[service]]
name = "echo"
tenants = ["*"]
vip = "10.100.0.20"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "udp"
  port = 7
  target = %d
`, httpPort, udpPort)
}

func startHTTP(t *testing.T, body []byte) (*httptest.Server, int) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Write(body)
			return
		}
		fmt.Fprintf(w, "hello from %s", r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	return srv, srv.Listener.Addr().(*net.TCPAddr).Port
}

func startUDPEcho(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	serveUDPEcho(t, pc, nil)
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// serveUDPEcho answers every datagram on pc with tag followed by the
// datagram, until the test ends and closes pc.
func serveUDPEcho(t testing.TB, pc *net.UDPConn, tag []byte) {
	t.Cleanup(func() { pc.Close() })
	// Room for a test's whole burst (hundreds of datagrams) while this
	// goroutine waits for a core on a loaded machine: the kernel's default
	// buffer dropped some under a loaded CI run. Forced beyond rmem_max
	// when the tests run as root.
	if rc, err := pc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
			}
		})
	}
	go func() {
		buf := make([]byte, 65536)
		copy(buf, tag)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf[len(tag):])
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(buf[:len(tag)+n], from)
		}
	}()
}

// httpClient fetches through the client stack from src.
func (h *harness) httpClient(src netip.Addr) *http.Client {
	return &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return h.client.DialTCP(ctx, src, netip.MustParseAddrPort(addr))
			},
		},
	}
}

func TestTCPSplice(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	_, port := startHTTP(t, big)
	h := newHarness(t, baseConfig(port, startUDPEcho(t)))
	hc := h.httpClient(acmeClient)

	resp, err := hc.Get("http://10.100.0.10/big")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(big) {
		t.Fatalf("16 MiB download corrupted: got %d bytes", len(got))
	}

	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := hc.Get(fmt.Sprintf("http://10.100.0.10/p%d", i))
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("hello from /p%d", i); string(b) != want {
				errs <- fmt.Errorf("got %q, want %q", b, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestRefusals(t *testing.T) {
	_, port := startHTTP(t, nil)
	h := newHarness(t, baseConfig(port, startUDPEcho(t)))
	cases := []struct {
		name string
		src  netip.Addr
		dst  string
	}{
		{"other tenant", globexClient, "10.100.0.10:80"},
		{"unmapped port", acmeClient, "10.100.0.10:81"},
		{"VIP without service", acmeClient, "10.100.0.99:80"},
		{"gateway address, no listener", acmeClient, "10.100.0.1:22"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			start := time.Now()
			c, err := h.client.DialTCP(ctx, tc.src, netip.MustParseAddrPort(tc.dst))
			if err == nil {
				c.Close()
				t.Fatal("connection was accepted")
			}
			if !strings.Contains(err.Error(), "refused") {
				t.Fatalf("got %v, want connection refused", err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Fatalf("refusal took %v", d)
			}
		})
	}
	t.Run("unknown source gets nothing", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := h.client.DialTCP(ctx, strayClient, netip.MustParseAddrPort("10.100.0.10:80")); err == nil || strings.Contains(err.Error(), "refused") {
			t.Fatalf("got %v, want a timeout (dropped)", err)
		}
	})
}

func TestUDPAndEcho(t *testing.T) {
	_, port := startHTTP(t, nil)
	h := newHarness(t, baseConfig(port, startUDPEcho(t)))
	for _, src := range []netip.Addr{acmeClient, globexClient} {
		c, err := h.client.DialUDP(src, netip.MustParseAddrPort("10.100.0.20:7"))
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("ping from " + src.String())
		c.Write(msg)
		buf := make([]byte, 256)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(buf)
		c.Close()
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("udp echo from %s: %q %v", src, buf[:n], err)
		}
	}

	before := h.client.Unreachables()
	c, _ := h.client.DialUDP(globexClient, netip.MustParseAddrPort("10.100.0.10:80"))
	c.Write([]byte("x"))
	c.Close()
	waitFor(t, time.Second, "ICMP unreachable for a refused UDP flow", func() bool { return h.client.Unreachables() > before })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if p, err := h.client.Ping(ctx, h.gw.lan, acmeClient, netip.MustParseAddr("10.100.0.10"), 1, 1, []byte("abc")); err != nil || string(p) != "abc" {
		t.Fatalf("ping VIP: %q %v", p, err)
	}
	// Refused pings are answered at once with an ICMP destination
	// unreachable, administratively prohibited (DESIGN §3.3).
	for i, tc := range []struct {
		name     string
		src, dst netip.Addr
	}{
		{"from a tenant the service does not allow", globexClient, netip.MustParseAddr("10.100.0.10")},
		{"to a VIP without a service", acmeClient, netip.MustParseAddr("10.100.0.200")},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := h.client.Ping(ctx, h.gw.lan, tc.src, tc.dst, 1, uint16(2+i), nil)
		cancel()
		var unreach *netstacktest.UnreachableError
		if !errors.As(err, &unreach) || unreach.Code != 13 {
			t.Errorf("ping %s: %v, want destination unreachable code 13", tc.name, err)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
