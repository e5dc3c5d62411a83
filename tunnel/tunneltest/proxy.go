// Package tunneltest provides helpers for tests of tunnel users: a lossy
// UDP proxy to put between a QUIC client and server, as quic-go's own
// integration tests do, and a dialer that presents no certificate.
package tunneltest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// maxClients bounds the client addresses one proxy serves.
	maxClients = 256
	// defaultMaxHeld bounds the datagrams held back at once, both
	// directions together: at a 50 ms delay, 16,384 datagrams of 1,200
	// bytes are some 390 MB/s, more than any path a test builds carries.
	defaultMaxHeld = 1 << 14
	// socketBuffer is asked for on every socket, so that a burst is held
	// by the kernel rather than lost outside the proxy's counters (the
	// kernel caps it at net.core.rmem_max and wmem_max).
	socketBuffer = 4 << 20
)

// testTargets are where a proxy may send besides loopback: the
// documentation ranges, which the integration tests use inside network
// namespaces of their own and which are routed nowhere else.
var testTargets = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("2001:db8::/32"),
}

// ProxyConfig configures a Proxy.
type ProxyConfig struct {
	// Target is the server's address: on loopback (127.0.0.1, ::1), or in
	// a documentation range (192.0.2.0/24, 198.51.100.0/24,
	// 203.0.113.0/24, 2001:db8::/32) inside a test's own namespaces.
	Target string
	// Listen is the address clients send to instead of Target; by
	// default an ephemeral port on Target when it is on loopback, else on
	// the loopback address of Target's family.
	Listen string
	// DropRate is the fraction of datagrams dropped, in each direction
	// (0 to 1).
	DropRate float64
	// DelayRate is the fraction of the remaining datagrams held back for
	// Delay (0 to 1): below 1 it also reorders them, at 1 every datagram
	// is delayed and their order kept, as by a long link.
	DelayRate float64
	Delay     time.Duration
	// MaxHeld bounds the datagrams held back at once (default 16,384);
	// beyond it a datagram to be delayed is dropped and counted as
	// Overflowed, as by a router's full queue.
	MaxHeld int
	// Seed makes the drop and delay decisions repeatable.
	Seed uint64
	// Observe, when set, is told the size of every datagram the proxy
	// receives, before it is dropped, delayed or sent; from the proxy's
	// read loops, one per direction and client.
	Observe func(toServer bool, size int)
}

// Counts counts what a proxy did with datagrams. Every datagram it read
// while open, from a client it serves, is in exactly one of them; those it
// read after Close, those of client addresses beyond the 256 it serves and
// those of a client whose upstream socket could not be opened are
// discarded and counted nowhere.
type Counts struct {
	Forwarded  uint64 // sent at once
	Dropped    uint64 // dropped at DropRate
	Delayed    uint64 // held back for Delay, then sent (or discarded by Close)
	Overflowed uint64 // to be delayed, but MaxHeld were held already: dropped
}

// Stats counts what a proxy did with datagrams: both directions together
// (the embedded Counts) and each direction.
type Stats struct {
	Counts
	ToServer, ToClient Counts
}

// Proxy relays UDP datagrams between clients and one server, dropping and
// delaying some. Each client address gets its own upstream socket, so the
// server sees one address per client. Delayed datagrams wait in one queue
// in the order they arrived, so a delay holds every datagram for Delay
// but does not space them out: what the path carries is still bounded by
// the endpoints' windows, as on a long link, not by Delay per datagram.
type Proxy struct {
	target *net.UDPAddr
	front  *net.UDPConn
	cfg    ProxyConfig

	mu      sync.Mutex
	rng     *rand.Rand                      // guarded by mu
	drop    float64                         // guarded by mu
	clients map[netip.AddrPort]*net.UDPConn // guarded by mu
	closed  bool                            // guarded by mu

	held  chan heldDatagram // the delay line, in order of due time
	nheld atomic.Int64      // datagrams in the delay line, the one waiting included
	stop  chan struct{}     // closed by Close: the delay line discards the rest

	toServer, toClient counters
	wg                 sync.WaitGroup // read loops and the delay line
}

// heldDatagram is a datagram in the delay line: towards the server on up,
// or towards client when up is nil.
type heldDatagram struct {
	due    time.Time
	b      []byte
	up     *net.UDPConn
	client netip.AddrPort
}

// counters are one direction's Counts.
type counters struct {
	forwarded, dropped, delayed, overflowed atomic.Uint64
}

func (c *counters) load() Counts {
	return Counts{Forwarded: c.forwarded.Load(), Dropped: c.dropped.Load(), Delayed: c.delayed.Load(), Overflowed: c.overflowed.Load()}
}

// NewProxy starts a proxy.
func NewProxy(cfg ProxyConfig) (*Proxy, error) {
	target, listen, err := cfg.addresses()
	if err != nil {
		return nil, fmt.Errorf("tunneltest: proxy: %w", err)
	}
	front, err := net.ListenUDP("udp", listen)
	if err != nil {
		return nil, fmt.Errorf("tunneltest: proxy: %w", err)
	}
	_ = front.SetReadBuffer(socketBuffer)
	_ = front.SetWriteBuffer(socketBuffer)
	if cfg.MaxHeld <= 0 {
		cfg.MaxHeld = defaultMaxHeld
	}
	p := &Proxy{
		target:  target,
		front:   front,
		cfg:     cfg,
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		drop:    cfg.DropRate,
		clients: make(map[netip.AddrPort]*net.UDPConn),
		held:    make(chan heldDatagram, cfg.MaxHeld),
		stop:    make(chan struct{}),
	}
	p.wg.Add(2)
	go p.frontLoop()
	go p.delayLine()
	return p, nil
}

// addresses checks the configuration and returns the target and the
// address to listen on.
func (cfg ProxyConfig) addresses() (target, listen *net.UDPAddr, err error) {
	switch {
	case cfg.DropRate < 0 || cfg.DropRate > 1:
		return nil, nil, fmt.Errorf("drop rate %v is not within 0..1", cfg.DropRate)
	case cfg.DelayRate < 0 || cfg.DelayRate > 1:
		return nil, nil, fmt.Errorf("delay rate %v is not within 0..1", cfg.DelayRate)
	case cfg.Delay < 0:
		return nil, nil, fmt.Errorf("negative delay %v", cfg.Delay)
	}
	// Addresses only: a name would be looked up before the check below.
	tap, err := netip.ParseAddrPort(cfg.Target)
	if err != nil {
		return nil, nil, fmt.Errorf("target %q: an ip:port (no names): %w", cfg.Target, err)
	}
	target = net.UDPAddrFromAddrPort(tap)
	ip := tap.Addr().Unmap()
	if !ip.IsLoopback() && !inTestRange(ip) {
		return nil, nil, fmt.Errorf("target %s is neither on loopback nor in a documentation range", cfg.Target)
	}
	switch {
	case cfg.Listen != "":
		lap, perr := netip.ParseAddrPort(cfg.Listen)
		if perr != nil {
			return nil, nil, fmt.Errorf("listen %q: an ip:port (no names): %w", cfg.Listen, perr)
		}
		listen = net.UDPAddrFromAddrPort(lap)
	case ip.IsLoopback():
		listen = &net.UDPAddr{IP: target.IP}
	case ip.Is4():
		listen = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	default:
		listen = &net.UDPAddr{IP: net.IPv6loopback}
	}
	return target, listen, err
}

func inTestRange(ip netip.Addr) bool {
	for _, p := range testTargets {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Addr returns the address clients send to instead of the target.
func (p *Proxy) Addr() string { return p.front.LocalAddr().String() }

// SetDropRate changes the fraction of datagrams dropped.
func (p *Proxy) SetDropRate(rate float64) {
	p.mu.Lock()
	p.drop = rate
	p.mu.Unlock()
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	s := Stats{ToServer: p.toServer.load(), ToClient: p.toClient.load()}
	s.Forwarded = s.ToServer.Forwarded + s.ToClient.Forwarded
	s.Dropped = s.ToServer.Dropped + s.ToClient.Dropped
	s.Delayed = s.ToServer.Delayed + s.ToClient.Delayed
	s.Overflowed = s.ToServer.Overflowed + s.ToClient.Overflowed
	return s
}

// Close stops the proxy and waits for its goroutines; datagrams still
// held back are discarded.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := make([]*net.UDPConn, 0, len(p.clients))
	for _, c := range p.clients {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	close(p.stop)
	err := p.front.Close()
	for _, c := range conns {
		err = errors.Join(err, c.Close())
	}
	p.wg.Wait()
	return err
}

// frontLoop reads datagrams from clients and forwards them upstream.
func (p *Proxy) frontLoop() {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if up := p.upstream(from); up != nil {
			p.pass(buf[:n], &p.toServer, up, from)
		}
	}
}

// upstream returns the socket towards the target for a client, creating
// it and its return loop on first use; nil when closed or full.
func (p *Proxy) upstream(client netip.AddrPort) *net.UDPConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[client]; ok || p.closed || len(p.clients) >= maxClients {
		return c
	}
	c, err := net.DialUDP("udp", nil, p.target)
	if err != nil {
		return nil
	}
	_ = c.SetReadBuffer(socketBuffer)
	_ = c.SetWriteBuffer(socketBuffer)
	p.clients[client] = c
	p.wg.Add(1)
	go p.backLoop(client, c)
	return c
}

// backLoop returns the server's datagrams for one client.
func (p *Proxy) backLoop(client netip.AddrPort, up *net.UDPConn) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		if err != nil {
			return
		}
		p.pass(buf[:n], &p.toClient, nil, client)
	}
}

// pass drops, delays or sends one datagram: to the server on up, or to
// client when up is nil. b is only valid during the call.
func (p *Proxy) pass(b []byte, c *counters, up *net.UDPConn, client netip.AddrPort) {
	if p.cfg.Observe != nil {
		p.cfg.Observe(up != nil, len(b))
	}
	p.mu.Lock()
	drop := p.rng.Float64() < p.drop
	delay := !drop && p.cfg.Delay > 0 && p.rng.Float64() < p.cfg.DelayRate
	closed := p.closed
	p.mu.Unlock()
	switch {
	case closed:
	case drop:
		c.dropped.Add(1)
	case delay && p.nheld.Add(1) > int64(p.cfg.MaxHeld):
		p.nheld.Add(-1)
		c.overflowed.Add(1)
	case delay: // never blocks: held has room for MaxHeld
		c.delayed.Add(1)
		p.held <- heldDatagram{due: time.Now().Add(p.cfg.Delay), b: bytes.Clone(b), up: up, client: client}
	default:
		c.forwarded.Add(1)
		p.send(b, up, client)
	}
}

// delayLine sends the held datagrams when they are due. They all wait the
// same Delay, so the queue is in order of due time and one timer serves
// it; a datagram that arrived while another waited is due soon after it.
func (p *Proxy) delayLine() {
	defer p.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var h heldDatagram
		select {
		case h = <-p.held:
		case <-p.stop:
			return
		}
		if wait := time.Until(h.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-p.stop:
				return
			}
		}
		p.send(h.b, h.up, h.client)
		p.nheld.Add(-1)
	}
}

// send writes one datagram; errors are the network's (a closed port, a
// closed proxy), not the proxy's to report.
func (p *Proxy) send(b []byte, up *net.UDPConn, client netip.AddrPort) {
	if up != nil {
		_, _ = up.Write(b)
		return
	}
	_, _ = p.front.WriteToUDPAddrPort(b, client)
}
