package resolver

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// served is a Server listening on loopback UDP and TCP.
type served struct {
	*Server
	udp, tcp string
}

// serve starts s on fresh loopback sockets and stops it at cleanup,
// checking that the Serve calls end cleanly.
func serve(t testing.TB, s *Server) *served { return serveWrapped(t, s, nil) }

// serveWrapped is serve with the UDP conn passed through wrap.
func serveWrapped(t testing.TB, s *Server, wrap func(net.PacketConn) net.PacketConn) *served {
	t.Helper()
	pc, l := listenBoth(t)
	if wrap != nil {
		return serveConns(t, s, wrap(pc), l)
	}
	return serveConns(t, s, pc, l)
}

// serveConns serves pc and l with s, as serve does.
func serveConns(t testing.TB, s *Server, pc net.PacketConn, l net.Listener) *served {
	t.Helper()
	served := &served{Server: s, udp: pc.LocalAddr().String(), tcp: l.Addr().String()}
	errs := make(chan error, 2)
	go func() { errs <- s.ServePacket(pc) }()
	go func() { errs <- s.ServeStream(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		for range 2 {
			// ErrServerClosed: the test ended before the goroutine called
			// Serve, which then closed the conn.
			if err := <-errs; err != nil && !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v after Shutdown, want nil", err)
			}
		}
	})
	return served
}

// listenBoth opens UDP and TCP sockets on one loopback port, as a DNS
// server has them (a client falls back to TCP on the same port).
func listenBoth(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 10 { // the TCP port of a fresh UDP port may be taken
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if l, err := net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, l
		}
		pc.Close()
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil, nil
}

// loopbackDir gives clients on 127.0.0.1 tenant A's view.
func loopbackDir() *testDir {
	d := testDirectory()
	d.views[loopback] = d.views[clientA]
	return d
}

func exchangeOver(t *testing.T, network, addr string, q *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("exchange over %s: %v", network, err)
	}
	return r
}

func TestServeLoopback(t *testing.T) {
	srv := serve(t, newTestServer(t, testConfig(), loopbackDir()))
	tests := []struct {
		name    string
		network string
		q       *dns.Msg
		rcode   int
		answers int
		tc      bool
	}{
		{name: "A over UDP", network: "udp", q: newQuery("web.ztna.internal.", dns.TypeA, 0), answers: 1},
		{name: "A over TCP", network: "tcp", q: newQuery("web.ztna.internal.", dns.TypeA, 0), answers: 1},
		{name: "PTR over UDP", network: "udp", q: newQuery("10.0.100.10.in-addr.arpa.", dns.TypePTR, 1232), answers: 1},
		{name: "NXDOMAIN over UDP", network: "udp", q: newQuery("nope.ztna.internal.", dns.TypeA, 0), rcode: dns.RcodeNameError},
		{name: "no EDNS: truncated at 512", network: "udp", q: newQuery("_svc._tcp.big.ztna.internal.", dns.TypeSRV, 0), tc: true},
		{name: "EDNS 1232: truncated", network: "udp", q: newQuery("_svc._tcp.big.ztna.internal.", dns.TypeSRV, 1232), tc: true},
		{name: "EDNS 4096: whole", network: "udp", q: newQuery("_svc._tcp.big.ztna.internal.", dns.TypeSRV, 4096), answers: 60},
		{name: "TCP: whole", network: "tcp", q: newQuery("_svc._tcp.big.ztna.internal.", dns.TypeSRV, 0), answers: 60},
		{name: "outside the zone without upstreams", network: "udp", q: newQuery("example.com.", dns.TypeA, 0), rcode: dns.RcodeRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := map[string]string{"udp": srv.udp, "tcp": srv.tcp}[tc.network]
			for range 2 { // a cache miss, then a hit
				r := exchangeOver(t, tc.network, addr, tc.q.Copy())
				if r.Rcode != tc.rcode || r.Truncated != tc.tc || !tc.tc && len(r.Answer) != tc.answers {
					t.Errorf("rcode %s TC %v %d answers, want %s %v %d", dns.RcodeToString[r.Rcode], r.Truncated,
						len(r.Answer), dns.RcodeToString[tc.rcode], tc.tc, tc.answers)
				}
				if tc.tc && len(r.Answer) >= 60 {
					t.Errorf("%d answers in a truncated reply", len(r.Answer))
				}
			}
		})
	}
	if n := counter(t, srv.Server, "ztgate_dns_queries_total", "rcode", "NOERROR"); n < 14 {
		t.Errorf("queries{NOERROR} = %v, want at least 14", n)
	}
	if n := counter(t, srv.Server, "ztgate_dns_cache_lookups_total", "result", "hit"); n == 0 {
		t.Error("no cache hit counted")
	}
}

func TestServeGarbageThenQuery(t *testing.T) {
	srv := serve(t, newTestServer(t, testConfig(), loopbackDir()))
	good := mustPack(t, newQuery("web.ztna.internal.", dns.TypeA, 0))
	// The last, a query padded to fill a batch read buffer, is taken as cut
	// short: FORMERR, where its parse alone would answer it.
	huge := append(append([]byte{0x0b, 0x0b}, good[2:]...), make([]byte, 5000)...)
	junk := [][]byte{{}, {0xde, 0xad}, []byte("GET / HTTP/1.1\r\n\r\n"), make([]byte, 700), huge}
	t.Run("udp", func(t *testing.T) {
		c, err := net.Dial("udp", srv.udp)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, j := range junk {
			if _, err := c.Write(j); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Write(good); err != nil {
			t.Fatal(err)
		}
		readUntilAnswer(t, c, func(c net.Conn, buf []byte) (int, error) { return c.Read(buf) })
	})
	t.Run("tcp", func(t *testing.T) {
		c, err := net.Dial("tcp", srv.tcp)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, m := range append(junk[1:len(junk)-1], good) {
			if _, err := c.Write(append([]byte{byte(len(m) >> 8), byte(len(m))}, m...)); err != nil {
				t.Fatal(err)
			}
		}
		readUntilAnswer(t, c, readTCPFrame)
	})
}

// readUntilAnswer reads replies from c until the answer for web's A.
func readUntilAnswer(t *testing.T, c net.Conn, read func(net.Conn, []byte) (int, error)) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, maxMsgSize)
	for range 10 {
		n, err := read(c, buf)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		r := mustUnpack(t, buf[:n])
		if len(r.Answer) == 1 && r.Id == 4242 {
			return
		}
		if r.Rcode != dns.RcodeFormatError && r.Rcode != dns.RcodeNotImplemented { // "GET " reads as opcode 10
			t.Errorf("reply to junk: %s, want FORMERR or NOTIMP", dns.RcodeToString[r.Rcode])
		}
	}
	t.Fatal("no answer to the good query")
}

func readTCPFrame(c net.Conn, buf []byte) (int, error) {
	if _, err := readFull(c, buf[:2]); err != nil {
		return 0, err
	}
	n := int(be16(buf))
	return readFull(c, buf[:n])
}

func readFull(c net.Conn, b []byte) (int, error) {
	for got := 0; got < len(b); {
		n, err := c.Read(b[got:])
		if err != nil {
			return got, err
		}
		got += n
	}
	return len(b), nil
}

func TestServeStreamLimits(t *testing.T) {
	cfg := testConfig()
	cfg.TCPIdleTimeout, cfg.TCPReadTimeout, cfg.MaxTCPConns = 300*time.Millisecond, 300*time.Millisecond, 2
	srv := serve(t, newTestServer(t, cfg, loopbackDir()))
	limitCfg := testConfig()
	limitCfg.MaxTCPConns = 2 // and no connection of another subtest counts
	limited := serve(t, newTestServer(t, limitCfg, loopbackDir()))
	dialTo := func(t *testing.T, addr string) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial := func(t *testing.T) net.Conn { return dialTo(t, srv.tcp) }
	// waitClosed requires the server to close c within bound.
	waitClosed := func(t *testing.T, c net.Conn, bound time.Duration) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(bound))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("read: %v, want the server to close the connection", err)
		}
	}
	t.Run("idle connection is closed", func(t *testing.T) {
		waitClosed(t, dial(t), 5*time.Second)
	})
	t.Run("slow query is cut off, others are served", func(t *testing.T) {
		slow := dial(t)
		if _, err := slow.Write([]byte{0, 40, 0xab}); err != nil { // 40 octets announced, 1 sent
			t.Fatal(err)
		}
		r := exchangeOver(t, "udp", srv.udp, newQuery("web.ztna.internal.", dns.TypeA, 0))
		if len(r.Answer) != 1 {
			t.Errorf("answer %v while a TCP client stalls", r.Answer)
		}
		waitClosed(t, slow, 5*time.Second)
	})
	t.Run("connections over the limit are closed", func(t *testing.T) {
		conns := []net.Conn{dialTo(t, limited.tcp), dialTo(t, limited.tcp), dialTo(t, limited.tcp)}
		closedBy := make(chan error, len(conns))
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Go(func() {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := c.Read(make([]byte, 1))
				closedBy <- err
			})
		}
		// The first to end must be one the server closed; then the test
		// closes the others, which the server kept open.
		if err := <-closedBy; err == nil || isTimeout(err) || errors.Is(err, net.ErrClosed) {
			t.Errorf("first connection to end: %v, want closed by the server", err)
		}
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
		if got := counter(t, limited.Server, "ztgate_dns_dropped_total", "reason", dropTCPLimit.String()); got != 1 {
			t.Errorf("dropped{tcp_limit} = %v, want 1 (limit 2 of 3)", got)
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestShutdown(t *testing.T) {
	s := newTestServer(t, testConfig(), loopbackDir())
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServePacket(pc) }()
	r := exchangeOver(t, "udp", pc.LocalAddr().String(), newQuery("web.ztna.internal.", dns.TypeA, 0))
	if len(r.Answer) != 1 {
		t.Fatalf("answer %v", r.Answer)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("ServePacket after Shutdown: %v, want nil", err)
	}
	pc2, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ServePacket(pc2); !errors.Is(err, ErrServerClosed) {
		t.Errorf("ServePacket on a closed server: %v, want ErrServerClosed", err)
	}
	if _, err := pc2.WriteTo([]byte{0}, pc.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write to the conn handed to a closed server: %v, want net.ErrClosed", err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestServePacketConnClosed(t *testing.T) {
	s := newTestServer(t, testConfig(), loopbackDir())
	defer s.Shutdown(context.Background())
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServePacket(pc) }()
	exchangeOver(t, "udp", pc.LocalAddr().String(), newQuery("web.ztna.internal.", dns.TypeA, 0))
	pc.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("ServePacket on a closed conn: %v, want net.ErrClosed", err)
	}
}

// TestServePacketConn serves a PacketConn that is not a *net.UDPConn (as a
// netstack's is), read one datagram at a time.
func TestServePacketConn(t *testing.T) {
	up := startUpstream(t, false)
	cfg := testConfig()
	cfg.Upstreams = []netip.AddrPort{up.addr}
	srv := serveWrapped(t, newTestServer(t, cfg, loopbackDir()), func(pc net.PacketConn) net.PacketConn {
		return struct{ net.PacketConn }{pc} // hides *net.UDPConn
	})
	tests := []struct {
		name    string
		q       *dns.Msg
		answers int
		tc      bool
	}{
		{name: "zone answer", q: newQuery("web.ztna.internal.", dns.TypeA, 0), answers: 1},
		{name: "truncated", q: newQuery("_svc._tcp.big.ztna.internal.", dns.TypeSRV, 0), tc: true},
		{name: "forwarded", q: newQuery("example.com.", dns.TypeA, 0), answers: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := exchangeOver(t, "udp", srv.udp, tc.q)
			if r.Truncated != tc.tc || !tc.tc && len(r.Answer) != tc.answers {
				t.Errorf("TC %v, %d answers; want %v, %d", r.Truncated, len(r.Answer), tc.tc, tc.answers)
			}
		})
	}
}

// TestServeStreamPerClientLimit has one client hold idle TCP connections,
// more than MaxTCPConnsPerClient: those over its share are closed and
// counted, and another client's query over TCP is still answered. Before,
// one client holding MaxTCPConns idle connections (renewed every
// TCPIdleTimeout) left every other client of every tenant without TCP.
func TestServeStreamPerClientLimit(t *testing.T) {
	cfg := testConfig()
	cfg.MaxTCPConns, cfg.TCPIdleTimeout = 32, time.Minute
	srv := serve(t, newTestServer(t, cfg, loopbackDir()))
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for range cfg.MaxTCPConns {
		c, err := net.Dial("tcp", srv.tcp)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	other := &dns.Client{Net: "tcp", Timeout: 5 * time.Second,
		Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}}
	r, _, err := other.Exchange(newQuery("web.ztna.internal.", dns.TypeA, 0), srv.tcp)
	if err != nil {
		t.Fatalf("another client's query over TCP while one holds %d connections: %v", len(held), err)
	}
	if r.Rcode != dns.RcodeRefused { // 127.0.0.2 has no view
		t.Fatalf("rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	want := float64(cfg.MaxTCPConns - DefaultMaxTCPConnsPerClient)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got := counter(t, srv.Server, "ztgate_dns_dropped_total", "reason", dropTCPClientLimit.String())
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dropped{tcp_client_limit} = %v, want %v", got, want)
		}
	}
	if got := counter(t, srv.Server, "ztgate_dns_dropped_total", "reason", dropTCPLimit.String()); got != 0 {
		t.Errorf("dropped{tcp_limit} = %v, want 0", got)
	}
}

// forgetfulListener's connections tell their remote address once: a
// netstack connection (gonet) tells none once the peer has reset it.
type forgetfulListener struct{ net.Listener }

func (l forgetfulListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &forgetfulConn{Conn: c}, nil
}

type forgetfulConn struct {
	net.Conn
	told atomic.Bool
}

func (c *forgetfulConn) RemoteAddr() net.Addr {
	if c.told.Swap(true) {
		return nil
	}
	return c.Conn.RemoteAddr()
}

// TestServeStreamPerClientCountEnds: the connection a client address holds
// is counted and let go under the one address read at accept, so that a
// connection whose remote address is gone by the time it is served (reset
// early, on a netstack) does not stay counted: 16 of those shut the
// client out of DNS over TCP for good.
func TestServeStreamPerClientCountEnds(t *testing.T) {
	cfg := testConfig()
	s := newTestServer(t, cfg, loopbackDir())
	pc, l := listenBoth(t)
	pc.Close()
	go s.ServeStream(forgetfulListener{l})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	for range DefaultMaxTCPConnsPerClient + 1 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		open, of := s.tcp, maps.Clone(s.tcpOf)
		s.mu.Unlock()
		if open == 0 {
			if len(of) != 0 {
				t.Fatalf("no connection open, still counted by client: %v", of)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open", open)
		}
	}
}
