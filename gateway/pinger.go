package gateway

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Pinger sends an ICMP echo request to a backend and waits for its reply.
type Pinger interface {
	Ping(ctx context.Context, dst netip.Addr, payload []byte) error
	Close() error
}

// icmpPinger pings through ICMP sockets: unprivileged datagram "ping"
// sockets where net.ipv4.ping_group_range allows them, else raw sockets
// (CAP_NET_RAW). Replies are matched by peer and sequence number.
type icmpPinger struct {
	mu      sync.Mutex
	conns   map[bool]*pingConn // by IPv6
	closed  bool
	wg      sync.WaitGroup
	waiters map[pingKey]chan struct{}
	seq     uint16
	id      uint16
}

type pingConn struct {
	c          *icmp.PacketConn
	privileged bool
}

type pingKey struct {
	peer netip.Addr
	seq  uint16
}

func newICMPPinger() *icmpPinger {
	return &icmpPinger{
		conns:   make(map[bool]*pingConn),
		waiters: make(map[pingKey]chan struct{}),
		id:      uint16(rand.Uint32()),
		seq:     uint16(rand.Uint32()),
	}
}

// conn opens the socket of a family on first use.
func (p *icmpPinger) conn(v6 bool) (*pingConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, net.ErrClosed
	}
	if pc := p.conns[v6]; pc != nil {
		return pc, nil
	}
	unpriv, priv, addr := "udp4", "ip4:icmp", "0.0.0.0"
	if v6 {
		unpriv, priv, addr = "udp6", "ip6:ipv6-icmp", "::"
	}
	pc := &pingConn{}
	c, err := icmp.ListenPacket(unpriv, addr)
	if err != nil {
		c, err = icmp.ListenPacket(priv, addr)
		if err != nil {
			return nil, fmt.Errorf("icmp socket (needs CAP_NET_RAW or net.ipv4.ping_group_range): %w", err)
		}
		pc.privileged = true
	}
	pc.c = c
	p.conns[v6] = pc
	p.wg.Add(1)
	go p.readLoop(pc, v6)
	return pc, nil
}

// Ping implements Pinger.
func (p *icmpPinger) Ping(ctx context.Context, dst netip.Addr, payload []byte) error {
	dst = dst.Unmap()
	pc, err := p.conn(dst.Is6())
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.seq++
	key := pingKey{peer: dst, seq: p.seq}
	ch := make(chan struct{})
	p.waiters[key] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.waiters, key)
		p.mu.Unlock()
	}()
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if dst.Is6() {
		typ = ipv6.ICMPTypeEchoRequest
	}
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(p.id), Seq: int(key.seq), Data: payload}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	var to net.Addr = &net.IPAddr{IP: dst.AsSlice()}
	if !pc.privileged {
		to = &net.UDPAddr{IP: dst.AsSlice()}
	}
	if _, err := pc.c.WriteTo(b, to); err != nil {
		return fmt.Errorf("ping %s: %w", dst, err)
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ping %s: %w", dst, ctx.Err())
	}
}

func (p *icmpPinger) readLoop(pc *pingConn, v6 bool) {
	defer p.wg.Done()
	proto := 1
	if v6 {
		proto = 58
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || (m.Type != ipv4.ICMPTypeEchoReply && m.Type != ipv6.ICMPTypeEchoReply) {
			continue
		}
		if pc.privileged && uint16(echo.ID) != p.id {
			continue // someone else's ping on the raw socket
		}
		peer := addrOf(from)
		p.mu.Lock()
		ch := p.waiters[pingKey{peer: peer, seq: uint16(echo.Seq)}]
		delete(p.waiters, pingKey{peer: peer, seq: uint16(echo.Seq)})
		p.mu.Unlock()
		if ch != nil {
			close(ch)
		}
	}
}

func addrOf(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.IPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}

// Close implements Pinger.
func (p *icmpPinger) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = map[bool]*pingConn{}
	p.mu.Unlock()
	for _, pc := range conns {
		pc.c.Close()
	}
	p.wg.Wait()
	return nil
}
