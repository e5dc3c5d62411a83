// Package tunneltest provides helpers for tests of tunnel users: a lossy
// UDP proxy to put between a QUIC client and server on loopback, as
// quic-go's own integration tests do.
package tunneltest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// maxClients bounds the client addresses one proxy serves.
const maxClients = 256

// ProxyConfig configures a Proxy.
type ProxyConfig struct {
	// Target is the server's address, on loopback (127.0.0.1 or ::1).
	Target string
	// DropRate is the fraction of datagrams dropped, in each direction
	// (0 to 1).
	DropRate float64
	// DelayRate is the fraction of the remaining datagrams held back for
	// Delay, which also reorders them.
	DelayRate float64
	Delay     time.Duration
	// Seed makes the drop and delay decisions repeatable.
	Seed uint64
}

// Stats counts what a proxy did with datagrams, both directions together.
type Stats struct {
	Forwarded, Dropped, Delayed uint64
}

// Proxy relays UDP datagrams between clients and one server on loopback,
// dropping and delaying some. Each client address gets its own upstream
// socket, so the server sees one address per client.
type Proxy struct {
	target *net.UDPAddr
	front  *net.UDPConn
	cfg    ProxyConfig

	mu      sync.Mutex
	rng     *rand.Rand                      // guarded by mu
	drop    float64                         // guarded by mu
	clients map[netip.AddrPort]*net.UDPConn // guarded by mu
	closed  bool                            // guarded by mu

	forwarded, dropped, delayed atomic.Uint64
	wg                          sync.WaitGroup // read loops and delayed sends
}

// NewProxy starts a proxy on an ephemeral loopback port of the target's
// address family.
func NewProxy(cfg ProxyConfig) (*Proxy, error) {
	target, err := net.ResolveUDPAddr("udp", cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("tunneltest: proxy: %w", err)
	}
	if !target.IP.IsLoopback() {
		return nil, fmt.Errorf("tunneltest: proxy: target %s is not on loopback", cfg.Target)
	}
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: target.IP})
	if err != nil {
		return nil, fmt.Errorf("tunneltest: proxy: %w", err)
	}
	p := &Proxy{
		target:  target,
		front:   front,
		cfg:     cfg,
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		drop:    cfg.DropRate,
		clients: make(map[netip.AddrPort]*net.UDPConn),
	}
	p.wg.Add(1)
	go p.frontLoop()
	return p, nil
}

// Addr returns the address clients dial instead of the target.
func (p *Proxy) Addr() string { return p.front.LocalAddr().String() }

// SetDropRate changes the fraction of datagrams dropped.
func (p *Proxy) SetDropRate(rate float64) {
	p.mu.Lock()
	p.drop = rate
	p.mu.Unlock()
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	return Stats{Forwarded: p.forwarded.Load(), Dropped: p.dropped.Load(), Delayed: p.delayed.Load()}
}

// Close stops the proxy and waits for its goroutines (delayed datagrams
// are sent or discarded first, within the configured Delay).
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := make([]*net.UDPConn, 0, len(p.clients))
	for _, c := range p.clients {
		conns = append(conns, c)
	}
	p.mu.Unlock()
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
		up := p.upstream(from)
		if up == nil {
			continue
		}
		p.pass(buf[:n], func(b []byte) { _, _ = up.Write(b) })
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
		p.pass(buf[:n], func(b []byte) { _, _ = p.front.WriteToUDPAddrPort(b, client) })
	}
}

// pass drops, delays or sends one datagram. b is only valid during the
// call.
func (p *Proxy) pass(b []byte, send func([]byte)) {
	p.mu.Lock()
	drop := p.rng.Float64() < p.drop
	delay := !drop && p.cfg.Delay > 0 && p.rng.Float64() < p.cfg.DelayRate
	closed := p.closed
	if delay && !closed {
		p.wg.Add(1)
	}
	p.mu.Unlock()
	switch {
	case closed:
	case drop:
		p.dropped.Add(1)
	case delay:
		p.delayed.Add(1)
		held := append([]byte(nil), b...)
		time.AfterFunc(p.cfg.Delay, func() {
			defer p.wg.Done()
			send(held)
		})
	default:
		p.forwarded.Add(1)
		send(b)
	}
}
