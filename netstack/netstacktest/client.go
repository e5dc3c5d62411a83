// Package netstacktest provides a client network stack for in-process tests:
// a second gVisor stack joined to a netstack.Link, so that tests can open
// TCP and UDP flows and send pings and raw packets through the gateway's
// stack exactly as a LAN client would, without root or sockets.
package netstacktest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/ztgate/ztgate/netstack"
)

const nicID = 1

// clientQueueLen bounds the packets the client stack has sent and Run has
// not handed to the stack under test yet; beyond it gVisor's channel link
// drops them. A kernel would hold its sockets back instead (its queue
// disciplines, TCP small queues). With 1,024, 200 flows at once on a busy
// machine lost hundreds of packets: a lost RST (never sent again) left its
// flow open, and retransmissions backed off stalled others for seconds.
const clientQueueLen = 8192

// Client is a client stack with one or more addresses. It implements
// netstack.Device: attach it to the stack under test with AttachDevice.
type Client struct {
	s   *stack.Stack
	ep  *channel.Endpoint
	mtu int

	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	echo  map[uint32]chan pingAnswer // (id<<16|seq) → waiter
	unrch int                        // ICMP destination unreachable messages seen
}

var _ netstack.Device = (*Client)(nil)

// NewClient creates a client stack owning addrs.
func NewClient(mtu int, addrs ...netip.Addr) (*Client, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	ep := channel.New(clientQueueLen, uint32(mtu), "")
	if err := s.CreateNIC(nicID, ep); err != nil {
		return nil, fmt.Errorf("client NIC: %s", err)
	}
	for _, a := range addrs {
		pa := tcpip.ProtocolAddress{Protocol: proto(a), AddressWithPrefix: tcpip.AddressWithPrefix{Address: toAddr(a), PrefixLen: a.BitLen()}}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return nil, fmt.Errorf("client address %s: %s", a, err)
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{s: s, ep: ep, mtu: mtu, ctx: ctx, cancel: cancel, echo: make(map[uint32]chan pingAnswer)}, nil
}

// MTU implements netstack.Device.
func (c *Client) MTU() int { return c.mtu }

// Headroom implements netstack.Device.
func (c *Client) Headroom() int { return 0 }

// WriteCap implements netstack.Device.
func (c *Client) WriteCap() int { return c.mtu }

// BatchSize implements netstack.Device.
func (c *Client) BatchSize() int { return 64 }

// Run implements netstack.Device: packets the client stack sends go to sink,
// in batches of what is queued (up to BatchSize), each followed by Flush
// when sink is a Flusher — as a TUN hands over what one read returned.
func (c *Client) Run(sink netstack.PacketSink) error {
	flusher, _ := sink.(netstack.Flusher)
	for {
		pkt := c.ep.ReadContext(c.ctx)
		if pkt == nil {
			return nil
		}
		for n := 0; pkt != nil; n++ {
			v := pkt.ToView()
			sink.Deliver(v.AsSlice())
			v.Release()
			pkt.DecRef()
			if n+1 == c.BatchSize() {
				break
			}
			pkt = c.ep.Read()
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

// WritePackets implements netstack.Device: packets from the stack under
// test reach the client stack; echo replies are taken by Ping.
func (c *Client) WritePackets(pkts [][]byte) error {
	for _, p := range pkts {
		if c.takeICMP(p) {
			continue
		}
		pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		n := ipv4.ProtocolNumber
		if len(p) > 0 && p[0]>>4 == 6 {
			n = ipv6.ProtocolNumber
		}
		c.ep.InjectInbound(n, pkb)
		pkb.DecRef()
	}
	return nil
}

// Close stops Run and releases the client stack.
func (c *Client) Close() error {
	c.cancel()
	c.ep.Close()
	c.s.Close()
	c.s.Wait()
	return nil
}

// DialTCP opens a TCP connection from src, on a port the stack picks, to
// dst.
func (c *Client) DialTCP(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return c.DialTCPFrom(ctx, netip.AddrPortFrom(src, 0), dst)
}

// DialTCPFrom opens a TCP connection from src to dst; a src port of 0
// lets the stack pick one. The connection is a *TCPConn.
func (c *Client) DialTCPFrom(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	conn, err := dialTCP(ctx, c.s,
		tcpip.FullAddress{NIC: nicID, Addr: toAddr(src.Addr()), Port: src.Port()},
		tcpip.FullAddress{NIC: nicID, Addr: toAddr(dst.Addr()), Port: dst.Port()}, proto(src.Addr()))
	if err != nil {
		return nil, err // not a nil *TCPConn in a non-nil net.Conn
	}
	return conn, nil
}

// DialUDP opens a connected UDP socket from src, on a port the stack
// picks, to dst.
func (c *Client) DialUDP(src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	return c.DialUDPFrom(netip.AddrPortFrom(src, 0), dst)
}

// DialUDPFrom opens a connected UDP socket from src to dst; a src port of
// 0 lets the stack pick one.
func (c *Client) DialUDPFrom(src, dst netip.AddrPort) (net.Conn, error) {
	return gonet.DialUDP(c.s,
		&tcpip.FullAddress{NIC: nicID, Addr: toAddr(src.Addr()), Port: src.Port()},
		&tcpip.FullAddress{NIC: nicID, Addr: toAddr(dst.Addr()), Port: dst.Port()}, proto(src.Addr()))
}

// Unreachables returns how many ICMP destination-unreachable messages the
// client has received.
func (c *Client) Unreachables() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.unrch
}

// ClosedPortDatagrams returns how many UDP datagrams reached the client
// stack for a port no socket was open on; it answered each with an ICMP
// port unreachable (within its ICMP rate limit).
func (c *Client) ClosedPortDatagrams() uint64 {
	return c.s.Stats().UDP.UnknownPortErrors.Value()
}

// ErrNoReply is returned by Ping when no echo reply came in time.
var ErrNoReply = errors.New("no echo reply")

// UnreachableError is returned by Ping when the request was answered with
// an ICMP destination unreachable quoting it.
type UnreachableError struct {
	Code uint8 // 13: communication administratively prohibited
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("ICMP destination unreachable, code %d", e.Code)
}

// pingAnswer is an echo reply's payload, or the unreachable that answered
// the request.
type pingAnswer struct {
	payload []byte
	err     error
}

// Ping sends one IPv4 echo request from src to dst and waits for the reply
// until ctx is done. It returns the reply's payload, or an
// *UnreachableError when the request was refused with an ICMP error.
func (c *Client) Ping(ctx context.Context, link *netstack.Link, src, dst netip.Addr, id, seq uint16, payload []byte) ([]byte, error) {
	key := uint32(id)<<16 | uint32(seq)
	ch := make(chan pingAnswer, 1)
	c.mu.Lock()
	c.echo[key] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.echo, key)
		c.mu.Unlock()
	}()
	link.Deliver(EchoRequest(src, dst, id, seq, payload))
	select {
	case a := <-ch:
		return a.payload, a.err
	case <-ctx.Done():
		return nil, ErrNoReply
	}
}

// takeICMP consumes echo replies for Ping and counts unreachables; it
// returns true when the packet was an echo reply.
func (c *Client) takeICMP(p []byte) bool {
	if len(p) < 28 || p[0]>>4 != 4 || p[9] != 1 {
		return false
	}
	ihl := int(p[0]&0x0f) * 4
	if len(p) < ihl+8 {
		return false
	}
	icmpb := p[ihl:]
	switch icmpb[0] {
	case 3:
		c.mu.Lock()
		c.unrch++
		c.mu.Unlock()
		// An error quoting one of Ping's requests answers it.
		q := icmpb[8:]
		if len(q) >= 20 && q[0]>>4 == 4 && q[9] == 1 {
			if qh := int(q[0]&0x0f) * 4; len(q) >= qh+8 && q[qh] == 8 {
				c.answer(uint32(binary.BigEndian.Uint16(q[qh+4:]))<<16|uint32(binary.BigEndian.Uint16(q[qh+6:])),
					pingAnswer{err: &UnreachableError{Code: icmpb[1]}})
			}
		}
		return false
	case 0:
		key := uint32(binary.BigEndian.Uint16(icmpb[4:6]))<<16 | uint32(binary.BigEndian.Uint16(icmpb[6:8]))
		c.answer(key, pingAnswer{payload: append([]byte(nil), icmpb[8:]...)})
		return true
	}
	return false
}

// answer hands a to the Ping waiting for key, if any.
func (c *Client) answer(key uint32, a pingAnswer) {
	c.mu.Lock()
	ch := c.echo[key]
	c.mu.Unlock()
	if ch != nil {
		select {
		case ch <- a:
		default:
		}
	}
}

// EchoRequest builds an IPv4 ICMP echo request packet.
func EchoRequest(src, dst netip.Addr, id, seq uint16, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     toAddr(src),
		DstAddr:     toAddr(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmpb := header.ICMPv4(b[header.IPv4MinimumSize:])
	icmpb.SetType(header.ICMPv4Echo)
	icmpb.SetIdent(id)
	icmpb.SetSequence(seq)
	copy(icmpb.Payload(), payload)
	icmpb.SetChecksum(^checksum.Checksum(icmpb, 0))
	return b
}

func toAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

func proto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}
