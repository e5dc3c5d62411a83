// Command testbackend is the backend the integration tests and benchmarks
// run inside their network namespaces: an HTTP server with a deterministic
// large file, a UDP echo server and a TCP echo server. It is test support,
// not part of ztgate.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	httpAddr := flag.String("http", "", "HTTP listen address (serves /, /big, /big.sha256, /healthz, /bytes?n=N)")
	udpAddr := flag.String("udp", "", "UDP echo listen address")
	tcpAddr := flag.String("tcp", "", "TCP echo listen address")
	name := flag.String("name", "backend", "name returned by / and /healthz")
	size := flag.Int("size", 16<<20, "size of /big in bytes")
	lat := flag.String("latency", "", "client mode: measure round trips of 1-byte messages to this echo address")
	conns := flag.String("connrate", "", "client mode: connect, echo 1 byte, close in a loop against this echo address")
	many := flag.String("hold-many", "", "client mode: open -n idle connections to this echo address and hold them until SIGTERM")
	n := flag.Int("n", 10000, "client modes: samples (-latency) or connections (-hold-many)")
	workers := flag.Int("c", 32, "client mode -connrate: concurrent workers")
	dur := flag.Duration("d", 5*time.Second, "client modes -connrate, -udpflood, -udpdrain: duration")
	sink := flag.String("udpsink", "", "count UDP datagrams received on this address (GET /udpcount on -http reads and resets)")
	flood := flag.String("udpflood", "", "client mode: send -dgram byte datagrams to this address at -pps for -d")
	pps := flag.Int("pps", 100000, "client modes -udpflood, -udpdrain: packets per second")
	dgram := flag.Int("dgram", 64, "client modes -udpflood, -udpdrain: payload bytes")
	blastAddr := flag.String("udpblast", "", "serve downstream UDP floods on this address (a datagram \"blast PPS MS SIZE\" starts one back to its sender)")
	drain := flag.String("udpdrain", "", "client mode: ask the -udpblast server at this address for -dgram byte datagrams at -pps for -d and count them")
	flows := flag.Int("flows", 1, "client mode -udpflood: source ports (flows) to spread the datagrams over")
	segments := flag.Int("segments", 1, "client mode -udpflood: datagrams per send, as one UDP_SEGMENT (GSO) super-datagram when more than 1")
	gso := flag.String("udpgso", "", "client mode: send -n datagrams of -dgram bytes, all different, to this UDP echo address in one system call with UDP_SEGMENT (GSO), and check that each comes back intact")
	hold := flag.String("hold", "", "client mode: hold one TCP connection to this echo address, send a line every 100ms and check the echo; print FAIL and exit 1 on the first error")
	flag.Parse()
	switch {
	case *hold != "":
		holdFlow(*hold)
		return
	case *gso != "":
		udpGSOEcho(*gso, *n, *dgram)
		return
	case *lat != "":
		latency(*lat, *n)
		return
	case *conns != "":
		connRate(*conns, *workers, *dur)
		return
	case *many != "":
		holdMany(*many, *n)
		return
	case *flood != "":
		udpFlood(*flood, *pps, *dur, *dgram, *flows, *segments)
		return
	case *drain != "":
		udpDrain(*drain, *pps, *dur, *dgram)
		return
	}
	if *blastAddr != "" {
		if err := udpBlast(*blastAddr); err != nil {
			log.Fatal(err)
		}
	}
	var counter udpSink
	if *sink != "" {
		if err := counter.serve(*sink); err != nil {
			log.Fatal(err)
		}
	}

	big := make([]byte, *size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	sum := sha256.Sum256(big)
	bigSum := hex.EncodeToString(sum[:])

	if *httpAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s %s\n", *name, r.URL.Path) })
		mux.HandleFunc("/udpcount", counter.handler)
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok", *name) })
		mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { w.Write(big) })
		mux.HandleFunc("/big.sha256", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, bigSum) })
		// /blob?seed=S&n=N is N deterministic bytes of stream S; /blob.sha256 its digest.
		mux.HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) { w.Write(blob(r)) })
		mux.HandleFunc("/blob.sha256", func(w http.ResponseWriter, r *http.Request) {
			s := sha256.Sum256(blob(r))
			fmt.Fprintln(w, hex.EncodeToString(s[:]))
		})
		// /digest answers the SHA-256 of the body it was sent (uploads).
		mux.HandleFunc("/digest", func(w http.ResponseWriter, r *http.Request) {
			h := sha256.New()
			if _, err := io.Copy(h, r.Body); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintln(w, hex.EncodeToString(h.Sum(nil)))
		})
		mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			w.Write(big[:min(max(n, 0), len(big))])
		})
		l, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			log.Fatal(err)
		}
		go http.Serve(l, mux)
	}
	if *udpAddr != "" {
		pc, err := net.ListenPacket("udp", *udpAddr)
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
	}
	if *tcpAddr != "" {
		l, err := net.Listen("tcp", *tcpAddr)
		if err != nil {
			log.Fatal(err)
		}
		go serveEcho(l)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}

// holdFlow is a long-lived flow that must never notice reloads.
func holdFlow(addr string) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fmt.Println("FAIL: dial:", err)
		os.Exit(1)
	}
	defer c.Close()
	buf := make([]byte, 64)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-sig:
			fmt.Println("done", n)
			return
		case <-tick.C:
		}
		line := fmt.Sprintf("seq %08d\n", n)
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, line); err != nil {
			fmt.Println("FAIL: write:", err)
			os.Exit(1)
		}
		if _, err := io.ReadFull(c, buf[:len(line)]); err != nil || string(buf[:len(line)]) != line {
			fmt.Printf("FAIL: echo %d: %q %v\n", n, buf[:len(line)], err)
			os.Exit(1)
		}
		if n%10 == 0 {
			fmt.Println("ok", n)
		}
	}
}

// blob is the content /blob serves: n bytes of the PCG stream seed (n ≤ 64 MiB).
func blob(r *http.Request) []byte {
	seed, _ := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	n = min(max(n, 0), 64<<20)
	g := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.Uint32())
	}
	return b
}

// serveEcho echoes every connection with a plain copy loop: io.Copy
// between two TCP sockets would splice(2) through a pipe per connection,
// three descriptors per idle flow, and run out of them at 10 000 flows.
func serveEcho(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: keep serving
			continue
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
