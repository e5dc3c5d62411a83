package resolver

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// benchHandle measures handle on one worker, as a UDP reader runs it.
func benchHandle(b *testing.B, cfg Config, q *dns.Msg) {
	s := newTestServer(b, cfg, testDirectory())
	raw := mustPack(b, q)
	w := s.newWorker()
	if out, _ := s.handle(w, raw, clientA, false); out == nil {
		b.Fatal("no reply")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.handle(w, raw, clientA, false)
	}
}

func BenchmarkHandleA(b *testing.B) {
	benchHandle(b, testConfig(), newQuery("web.ztna.internal.", dns.TypeA, 1232))
}

func BenchmarkHandleNXDOMAIN(b *testing.B) {
	benchHandle(b, testConfig(), newQuery("nope.ztna.internal.", dns.TypeA, 0))
}

func BenchmarkHandleSRV(b *testing.B) {
	benchHandle(b, testConfig(), newQuery("_http._tcp.web.ztna.internal.", dns.TypeSRV, 1232))
}

// BenchmarkHandleAUncached is the cost of a cache miss: resolving and packing.
func BenchmarkHandleAUncached(b *testing.B) {
	cfg := testConfig()
	cfg.CacheSize = -1
	benchHandle(b, cfg, newQuery("web.ztna.internal.", dns.TypeA, 1232))
}

// benchLoopback sends b.N queries over loopback UDP from 8 concurrent
// clients to addr and reports queries per second.
func benchLoopback(b *testing.B, addr string) {
	raw := mustPack(b, newQuery("web.ztna.internal.", dns.TypeA, 0))
	const clients = 8
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := net.Dial("udp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	per := b.N/clients + 1
	for _, c := range conns {
		wg.Go(func() {
			buf := make([]byte, 512)
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			for range per {
				if _, err := c.Write(raw); err != nil {
					b.Error(err)
					return
				}
				if _, err := c.Read(buf); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(per*clients)/time.Since(start).Seconds(), "queries/s")
}

// BenchmarkServePacket is ServePacket over loopback UDP.
func BenchmarkServePacket(b *testing.B) {
	benchLoopback(b, serve(b, newTestServer(b, testConfig(), loopbackDir())).udp)
}

// BenchmarkMiekgServer is the same Server behind miekg's dns.Server, the
// alternative to ServePacket's own loop.
func BenchmarkMiekgServer(b *testing.B) {
	s := newTestServer(b, testConfig(), loopbackDir())
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dnsHandler{s}}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	<-started
	benchLoopback(b, pc.LocalAddr().String())
	b.StopTimer()
	if err := srv.Shutdown(); err != nil {
		b.Fatal(err)
	}
	<-done
}
