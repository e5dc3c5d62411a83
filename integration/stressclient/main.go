// Command stressclient is the hostile and heavy client the integration
// tests run inside their client namespaces. It is test support, not part
// of ztgate. Every mode is bounded in count and time.
//
//	stressclient garbage  -to ADDR -n N           random UDP datagrams (QUIC ports)
//	stressclient synflood -to ADDR -src PREFIX -n N -pace D
//	                                               SYNs from spoofed sources of PREFIX (raw socket)
//	stressclient churn    -to ADDR -flows N -lifetime L -duration D
//	                                               N TCP flows to an HTTP server kept open, each replaced after ~L
//	stressclient proxy    -to ADDR -listen ADDR -loss F -delay D -duration D
//	                                               UDP proxy that drops F of the datagrams and delays the rest by D,
//	                                               both ways (a lossy, long link where netem is missing); prints
//	                                               its counters every second and when it stops
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: stressclient garbage|synflood|churn|proxy [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	to := fs.String("to", "", "target address:port")
	n := fs.Int("n", 1000, "packets to send (garbage, synflood)")
	src := fs.String("src", "", "synflood: prefix the spoofed sources are drawn from")
	pace := fs.Duration("pace", 0, "synflood: pause after every 100 SYNs")
	flows := fs.Int("flows", 10000, "churn: flows kept open, each replaced when it closes")
	duration := fs.Duration("duration", time.Minute, "churn, proxy: how long to run")
	lifetime := fs.Duration("lifetime", 10*time.Second, "churn: mean lifetime of a flow")
	listen := fs.String("listen", "127.0.0.1:0", "proxy: address the clients send to")
	loss := fs.Float64("loss", 0.05, "proxy: fraction of the datagrams dropped, each way")
	delay := fs.Duration("delay", 50*time.Millisecond, "proxy: delay of every datagram, each way")
	fs.Parse(os.Args[2:])
	target, err := netip.ParseAddrPort(*to)
	if err != nil {
		fail("-to: %v", err)
	}
	switch os.Args[1] {
	case "garbage":
		err = garbage(target, *n)
	case "synflood":
		err = synflood(target, *src, *n, *pace)
	case "churn":
		err = churn(target, *flows, *duration, *lifetime)
	case "proxy":
		err = proxy(target, *listen, *loss, *delay, *duration)
	default:
		fail("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "stressclient: "+format+"\n", args...)
	os.Exit(1)
}

// garbage sends n random datagrams of random sizes: not QUIC, short and
// long headers with random contents.
func garbage(to netip.AddrPort, n int) error {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		return err
	}
	defer c.Close()
	firsts := []byte{0x00, 0x40, 0xc0, 0xff}
	for i := range n {
		b := make([]byte, 1+rand.IntN(1400))
		for j := range b {
			b[j] = byte(rand.Uint32())
		}
		b[0] = firsts[i%len(firsts)] | b[0]&0x3f
		c.Write(b) // ICMP errors from a closed port are not ours to care about
		// At most ~10k datagrams a second: the test asserts that what
		// arrives is counted, not how much a 2-core machine's socket
		// buffers and quic-go's bounded queues absorb in one burst.
		if i%10 == 9 {
			time.Sleep(time.Millisecond)
		}
	}
	fmt.Printf("garbage: sent %d datagrams to %s\n", n, to)
	return nil
}

// synflood sends n SYNs to `to` from random addresses of prefix and random
// ports through a raw socket (the kernel fills in the IP checksum).
func synflood(to netip.AddrPort, prefix string, n int, pace time.Duration) error {
	p, err := netip.ParsePrefix(prefix)
	if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
		return fmt.Errorf("-src %q: an IPv4 prefix of at least 4 addresses", prefix)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket (needs CAP_NET_RAW): %w", err)
	}
	defer syscall.Close(fd)
	dst := &syscall.SockaddrInet4{Addr: to.Addr().As4()}
	base := binary.BigEndian.Uint32(p.Masked().Addr().AsSlice())
	hosts := uint32(1) << (32 - p.Bits())
	start := time.Now()
	for i := range n {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], base+1+rand.Uint32N(hosts-2))
		pkt := syn(netip.AddrPortFrom(netip.AddrFrom4(a), uint16(1024+rand.IntN(60000))), to)
		if err := syscall.Sendto(fd, pkt, 0, dst); err != nil && !errors.Is(err, syscall.ENOBUFS) {
			return fmt.Errorf("send: %w", err)
		}
		if pace > 0 && i%100 == 99 {
			time.Sleep(pace)
		}
	}
	fmt.Printf("synflood: sent %d SYNs to %s from %s in %v\n", n, to, p, time.Since(start).Round(time.Millisecond))
	return nil
}

// syn builds an IPv4 packet with a TCP SYN, the TCP checksum correct.
func syn(src, dst netip.AddrPort) []byte {
	b := make([]byte, 40)
	b[0], b[8], b[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(b[2:], 40)
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:], src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], rand.Uint32())
	t[12], t[13] = 5<<4, 0x02
	binary.BigEndian.PutUint16(t[14:], 65535)
	var sum uint32
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	sum += 6 + 20
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(t[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(t[16:], ^uint16(sum))
	return b
}

// proxy relays UDP between the clients that send to listen and the
// server at `to`, dropping a fraction loss of the datagrams and delaying
// every other one by delay, in both directions, until d has passed or
// SIGTERM. The delayed datagrams wait in one queue, so the delay does not
// space them out. It prints "proxy listening on ADDR" once it listens,
// and "proxy stats JSON" (tunneltest.Stats) every second and last.
func proxy(to netip.AddrPort, listen string, loss float64, delay, d time.Duration) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, d)
	defer cancel2()
	p, err := tunneltest.NewProxy(tunneltest.ProxyConfig{
		Target: to.String(), Listen: listen, DropRate: loss, DelayRate: 1, Delay: delay, Seed: rand.Uint64(),
	})
	if err != nil {
		return err
	}
	fmt.Printf("proxy listening on %s, to %s, dropping %.1f %% and delaying by %v each way\n", p.Addr(), to, 100*loss, delay)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
			printStats(p.Stats())
		}
	}
	err = p.Close()
	printStats(p.Stats())
	return err
}

func printStats(s tunneltest.Stats) {
	b, _ := json.Marshal(s) // a struct of numbers
	fmt.Printf("proxy stats %s\n", b)
}

// churn keeps `flows` TCP flows to an HTTP server open for d, replacing
// them without pause: each opens, fetches /, stays idle for a random
// lifetime around `lifetime`, fetches again (the flow must still work),
// and closes; then it opens anew. It prints a line every 10 s and a
// summary, and stops early on SIGTERM.
func churn(to netip.AddrPort, flows int, d, lifetime time.Duration) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, d)
	defer cancel2()
	var open, opened, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := range flows {
		wg.Go(func() {
			// Stagger the first openings over one lifetime.
			if !sleepCtx(ctx, time.Duration(i)*lifetime/time.Duration(flows)) {
				return
			}
			for ctx.Err() == nil {
				if err := heldFlow(ctx, to, lifetime, &open); err != nil && ctx.Err() == nil {
					if failed.Add(1) <= 3 { // the first few say what went wrong
						fmt.Printf("churn: flow failed after %v: %v\n", time.Since(start).Round(time.Millisecond), err)
					}
					sleepCtx(ctx, 100*time.Millisecond)
					continue
				}
				opened.Add(1)
			}
		})
	}
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
			fmt.Printf("churn: %v open %d opened %d failed %d\n", time.Since(start).Round(time.Second), open.Load(), opened.Load(), failed.Load())
		}
	}
	wg.Wait()
	el := time.Since(start)
	fmt.Printf("churn done: %d flows opened and closed in %v (%.0f/s), at most %d open at once, %d failed\n",
		opened.Load(), el.Round(time.Second), float64(opened.Load())/el.Seconds(), flows, failed.Load())
	return nil
}

// heldFlow is one flow: GET / (HTTP/1.1, kept alive), idle for a random
// time around lifetime, GET / again, close.
func heldFlow(ctx context.Context, to netip.AddrPort, lifetime time.Duration, open *atomic.Int64) error {
	var dialer net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := dialer.DialContext(dctx, "tcp", to.String())
	cancel()
	if err != nil {
		return err
	}
	open.Add(1)
	defer open.Add(-1)
	defer c.Close()
	br := bufio.NewReader(c)
	if err := get(c, br); err != nil {
		return err
	}
	if !sleepCtx(ctx, lifetime/2+rand.N(lifetime)) {
		return nil
	}
	return get(c, br)
}

// get sends GET / on c and reads the whole response.
func get(c net.Conn, br *bufio.Reader) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: soak\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}

// sleepCtx sleeps for d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
