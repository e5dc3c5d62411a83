package tunneltest

import (
	"net"
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
			srv := echoServer(t)
			tc.cfg.Target = srv.LocalAddr().String()
			p, err := NewProxy(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			c, err := net.Dial("udp", p.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
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
			// Every datagram sent was seen once on its way in.
			deadline := time.Now().Add(5 * time.Second)
			st := p.Stats()
			for ; st.Forwarded+st.Dropped+st.Delayed < 100 && time.Now().Before(deadline); st = p.Stats() {
				time.Sleep(5 * time.Millisecond)
			}
			if st.Forwarded+st.Dropped+st.Delayed < 100 {
				t.Errorf("stats %+v count fewer than the 100 datagrams sent", st)
			}
			if tc.cfg.Delay > 0 && st.Delayed == 0 {
				t.Error("nothing delayed")
			}
		})
	}
}

func TestProxyRefusesNonLoopback(t *testing.T) {
	if _, err := NewProxy(ProxyConfig{Target: "192.0.2.1:4433"}); err == nil {
		t.Fatal("proxy to a non-loopback target")
	}
}

func TestProxySetDropRate(t *testing.T) {
	srv := echoServer(t)
	p, err := NewProxy(ProxyConfig{Target: srv.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.SetDropRate(1)
	c, err := net.Dial("udp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte{1})
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 4)); err == nil {
		t.Fatal("a datagram passed at drop rate 1")
	}
	if p.Stats().Dropped != 1 {
		t.Errorf("stats %+v", p.Stats())
	}
}
