package tunneltest

import (
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer answers every UDP datagram with itself on loopback.
func echoServer(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c
}

// proxyTo starts a proxy to an echo server and a client connected to it.
func proxyTo(t *testing.T, cfg ProxyConfig) (*Proxy, net.Conn) {
	t.Helper()
	cfg.Target = echoServer(t).LocalAddr().String()
	p, err := NewProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c, err := net.Dial("udp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return p, c
}

// waitSeen waits until the proxy has read n datagrams from the client.
func waitSeen(t *testing.T, p *Proxy, n uint64) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := p.Stats()
		c := st.ToServer
		if c.Forwarded+c.Dropped+c.Delayed+c.Overflowed >= n {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v count fewer than the %d datagrams sent", st, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProxy(t *testing.T) {
	tests := []struct {
		name      string
		cfg       ProxyConfig
		minEchoes int
		maxEchoes int
	}{
		{"clean", ProxyConfig{}, 100, 100},
		{"all dropped", ProxyConfig{DropRate: 1}, 0, 0},
		{"lossy", ProxyConfig{DropRate: 0.2, Seed: 1}, 40, 85},
		{"delayed", ProxyConfig{DelayRate: 0.5, Delay: 5 * time.Millisecond, Seed: 2}, 100, 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, c := proxyTo(t, tc.cfg)
			for i := range 100 {
				if _, err := c.Write([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
			}
			echoes := 0
			seen := make(map[byte]bool)
			buf := make([]byte, 16)
			for echoes < tc.maxEchoes {
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				n, err := c.Read(buf)
				if err != nil {
					break
				}
				if n != 1 || seen[buf[0]] {
					t.Fatalf("bad or repeated echo %x", buf[:n])
				}
				seen[buf[0]] = true
				echoes++
			}
			if echoes < tc.minEchoes || echoes > tc.maxEchoes {
				t.Errorf("%d echoes, want %d..%d (stats %+v)", echoes, tc.minEchoes, tc.maxEchoes, p.Stats())
			}
			st := waitSeen(t, p, 100)
			if tc.cfg.Delay > 0 && st.Delayed == 0 {
				t.Error("nothing delayed")
			}
			if tc.cfg.DropRate == 1 && (st.ToServer.Dropped != 100 || st.ToClient != (Counts{})) {
				t.Errorf("at drop rate 1: %+v, want 100 dropped towards the server and nothing back", st)
			}
			if st.Overflowed != 0 {
				t.Errorf("%d datagrams overflowed the delay line", st.Overflowed)
			}
		})
	}
}

// TestProxyDelayLine delays every datagram by 50 ms each way: each echo
// takes at least 100 ms, the echoes keep their order, and a burst is not
// spaced out by the delay (200 datagrams one after the other would take
// 20 s; together they take about 100 ms, the bound leaves room for a slow
// machine).
func TestProxyDelayLine(t *testing.T) {
	const delay, n = 50 * time.Millisecond, 200
	p, c := proxyTo(t, ProxyConfig{DelayRate: 1, Delay: delay})
	sent := make([]time.Time, n)
	for i := range n {
		sent[i] = time.Now()
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 16)
	for i := range n {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("echo %d: %v (stats %+v)", i, err, p.Stats())
		}
		if m != 1 || buf[0] != byte(i) {
			t.Fatalf("echo %d carries %x: out of order", i, buf[:m])
		}
		if rtt := time.Since(sent[i]); rtt < 2*delay {
			t.Fatalf("echo %d after %v, want at least %v", i, rtt, 2*delay)
		}
	}
	if took := time.Since(sent[0]); took > 10*time.Second { // serialised: 20 s at least
		t.Errorf("%d delayed echoes took %v: the delay serialises them", n, took)
	}
	st := p.Stats()
	if st.ToServer.Delayed != n || st.ToClient.Delayed != n || st.Forwarded != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v, want %d delayed each way and nothing else", st, n)
	}
}

// TestProxyDelayLineBound holds at most MaxHeld datagrams; the rest
// overflow, and Close discards the held ones without waiting for them.
func TestProxyDelayLineBound(t *testing.T) {
	p, c := proxyTo(t, ProxyConfig{DelayRate: 1, Delay: time.Hour, MaxHeld: 10})
	for i := range 50 {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	st := waitSeen(t, p, 50)
	if st.ToServer.Delayed != 10 || st.ToServer.Overflowed != 40 {
		t.Errorf("stats %+v, want 10 delayed and 40 overflowed", st)
	}
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for the held datagrams")
	}
}

func TestProxyConfig(t *testing.T) {
	tests := []struct {
		name   string
		cfg    ProxyConfig
		listen string // prefix of Addr; "" when refused
	}{
		{"loopback", ProxyConfig{Target: "127.0.0.1:4433"}, "127.0.0.1:"},
		{"documentation range", ProxyConfig{Target: "203.0.113.1:4433"}, "127.0.0.1:"},
		{"listen address", ProxyConfig{Target: "192.0.2.1:4433", Listen: "127.0.0.1:0"}, "127.0.0.1:"},
		{"public address", ProxyConfig{Target: "192.0.3.1:4433"}, ""},
		{"VIP pool", ProxyConfig{Target: "10.100.0.1:53"}, ""},
		{"a name", ProxyConfig{Target: "localhost:4433"}, ""}, // never looked up
		{"no port", ProxyConfig{Target: "127.0.0.1"}, ""},
		{"drop rate", ProxyConfig{Target: "127.0.0.1:4433", DropRate: 1.5}, ""},
		{"delay rate", ProxyConfig{Target: "127.0.0.1:4433", DelayRate: -0.1}, ""},
		{"negative delay", ProxyConfig{Target: "127.0.0.1:4433", DelayRate: 1, Delay: -time.Second}, ""},
		{"bad listen address", ProxyConfig{Target: "127.0.0.1:4433", Listen: "nowhere"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewProxy(tc.cfg)
			if tc.listen == "" {
				if err == nil {
					p.Close()
					t.Fatalf("proxy with %+v started", tc.cfg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if !strings.HasPrefix(p.Addr(), tc.listen) {
				t.Errorf("listens on %s, want %s…", p.Addr(), tc.listen)
			}
		})
	}
}

func TestProxySetDropRate(t *testing.T) {
	p, c := proxyTo(t, ProxyConfig{})
	p.SetDropRate(1)
	_, _ = c.Write([]byte{1})
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 4)); err == nil {
		t.Fatal("a datagram passed at drop rate 1")
	}
	if p.Stats().Dropped != 1 {
		t.Errorf("stats %+v", p.Stats())
	}
}
