// Command stressclient is the hostile and heavy client the integration
// tests run inside their client namespaces. It is test support, not part
// of ztgate. Every mode is bounded in count and time.
//
//	stressclient garbage  -to ADDR -n N           random UDP datagrams (QUIC ports)
//	stressclient synflood -to ADDR -src PREFIX -n N -pace D
//	                                               SYNs from spoofed sources of PREFIX (raw socket)
//	stressclient churn    -to ADDR -conc C -duration D -hold H
//	                                               TCP flows opened and closed (HTTP GET /), H held open
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: stressclient garbage|synflood|churn [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	to := fs.String("to", "", "target address:port")
	n := fs.Int("n", 1000, "packets to send (garbage, synflood)")
	src := fs.String("src", "", "synflood: prefix the spoofed sources are drawn from")
	pace := fs.Duration("pace", 0, "synflood: pause after every 100 SYNs")
	conc := fs.Int("conc", 50, "churn: concurrent workers")
	duration := fs.Duration("duration", time.Minute, "churn: how long to run")
	hold := fs.Int("hold", 0, "churn: connections held open, replaced every cycle")
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
		err = churn(target, *conc, *duration, *hold)
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
		if i%100 == 99 {
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

// churn opens, uses and closes TCP flows with conc workers for d, and
// keeps hold more connections open, replacing them every 10,000 flows. It
// prints a line every 10 s and a summary, and stops early on SIGTERM.
func churn(to netip.AddrPort, conc int, d time.Duration, hold int) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, d)
	defer cancel2()
	var opened, failed atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := oneFlow(ctx, to); err != nil {
					failed.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				opened.Add(1)
			}
		})
	}
	held := holdConns(to, hold)
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	start, cycles := time.Now(), int64(0)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
			fmt.Printf("churn: %v flows %d failed %d held %d\n", time.Since(start).Round(time.Second), opened.Load(), failed.Load(), len(held))
		}
		if c := opened.Load() / 10000; c > cycles {
			cycles = c
			closeAll(held)
			held = holdConns(to, hold)
		}
	}
	wg.Wait()
	closeAll(held)
	fmt.Printf("churn done: %d flows in %v (%.0f/s), %d failed, %d cycles of 10000\n",
		opened.Load(), time.Since(start).Round(time.Second), float64(opened.Load())/time.Since(start).Seconds(), failed.Load(), cycles)
	return nil
}

// oneFlow is one HTTP/1.0 GET /: connect, request, read to EOF, close.
func oneFlow(ctx context.Context, to netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", to.String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return err
	}
	b, err := io.ReadAll(c)
	if err != nil || len(b) == 0 {
		return fmt.Errorf("read: %v (%d bytes)", err, len(b))
	}
	return nil
}

func holdConns(to netip.AddrPort, n int) []net.Conn {
	var out []net.Conn
	for range n {
		c, err := net.DialTimeout("tcp", to.String(), 2*time.Second)
		if err != nil {
			continue
		}
		out = append(out, c)
	}
	return out
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}
