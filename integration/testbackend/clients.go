package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The client modes measure what iperf3 does not: round-trip latency of
// small messages, connections per second, and many idle flows. Each
// prints one JSON object on stdout.

// latency sends n 1-byte messages over one TCP connection to an echo
// server, one at a time, and reports the round-trip percentiles.
func latency(addr string, n int) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fail(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	buf := []byte{'x'}
	rtts := make([]time.Duration, 0, n)
	deadline := time.Now().Add(50 * time.Second)
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		start := time.Now()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(buf); err != nil {
			fail(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			fail(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	pct := func(p float64) float64 { return float64(rtts[int(p*float64(len(rtts)-1))]) / 1e3 }
	emit(map[string]any{"samples": len(rtts), "p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": pct(1)})
}

// connRate opens, echoes one byte over, and closes connections from c
// workers for d and reports connections per second and errors.
func connRate(addr string, workers int, d time.Duration) {
	var ok, errs atomic.Int64
	var firstErr atomic.Value
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := []byte{'x'}
			for time.Now().Before(stop) {
				c, err := net.DialTimeout("tcp", addr, 3*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(3 * time.Second))
					if _, err = c.Write(buf); err == nil {
						_, err = io.ReadFull(c, buf)
					}
					c.Close()
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	out := map[string]any{"conns_per_s": float64(ok.Load()) / d.Seconds(), "errors": errs.Load()}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	emit(out)
}

// holdMany opens n TCP connections (32 at a time), each echoing one byte
// so that it is established end to end, prints a line once all are open
// and keeps them idle until SIGTERM; then it closes them all.
func holdMany(addr string, n int) {
	var (
		mu     sync.Mutex
		conns  = make([]net.Conn, 0, n)
		failed atomic.Int64
		next   atomic.Int64
		wg     sync.WaitGroup
	)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := []byte{'x'}
			for next.Add(1) <= int64(n) {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err = c.Write(buf); err == nil {
						_, err = io.ReadFull(c, buf)
					}
					if err != nil {
						c.Close()
					}
				}
				if err != nil {
					if failed.Add(1) <= 3 {
						fmt.Fprintln(os.Stderr, "hold-many:", err)
					}
					continue
				}
				c.SetDeadline(time.Time{})
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	emit(map[string]any{"open": len(conns), "failed": failed.Load()})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	for _, c := range conns {
		c.Close()
	}
	fmt.Println(`{"closed": true}`)
}

func emit(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func fail(err error) {
	emit(map[string]any{"error": err.Error()})
	os.Exit(1)
}
