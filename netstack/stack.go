package netstack

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/ztgate/ztgate/internal/gopool"
)

// Config configures a Stack. The zero value of every optional field is valid.
type Config struct {
	// Pools are the prefixes whose every address the stack terminates (the
	// VIP pools). Packets to other destinations are dropped.
	Pools []netip.Prefix
	// Local are the stack's own addresses (the gateway address): flows to
	// them reach listeners opened with ListenTCP/ListenUDP, and gVisor
	// answers pings to them itself.
	Local []netip.Addr
	// Handler receives every other flow. Required.
	Handler Handler
	// MaxInflightHandshakes bounds TCP handshakes that have not completed
	// yet; SYNs beyond it are dropped (the client retries). Default 1024.
	MaxInflightHandshakes int
	// HandshakeTimeout bounds how long TCPRequest.Accept waits for the
	// client's final ACK; a client that has not completed the handshake by
	// then (a spoofed SYN) is reset. Default 10s. Without it gVisor would
	// retransmit the SYN-ACK for about two minutes while the handler holds
	// its backend connection.
	HandshakeTimeout time.Duration
	// OnDrop, when set, is told about every packet the stack drops before
	// gVisor sees it. It is called on the packet path and must be cheap.
	OnDrop func(DropReason)
}

// Handler receives the flows the stack terminates. The gateway implements it;
// the methods never see a gVisor type.
type Handler interface {
	// HandleTCP is called in its own goroutine for every new TCP connection
	// attempt (a SYN). It must call exactly one of req.Accept, req.Refuse or
	// req.Drop, typically after dialling the backend.
	HandleTCP(req *TCPRequest)
	// HandleUDP is called on the packet path for the first datagram of a new
	// UDP flow. It must not block. It returns false to refuse the flow (the
	// client gets an ICMP port unreachable), or calls req.Accept and returns
	// true.
	HandleUDP(req *UDPRequest) bool
	// HandleEcho is called on the packet path for an ICMP echo request to a
	// pool address that is not a local address. It must not block; it owns
	// req and ends it, then or later, with req.Reply (the echo reply),
	// req.Refuse (an ICMP unreachable) or req.Drop (no answer).
	HandleEcho(req *EchoRequest)
}

// Stack is a gVisor network stack with the forwarders that hand flows to a
// Handler. Links (a TUN device, tunnel sessions) are attached with NewLink.
type Stack struct {
	cfg   Config
	log   *slog.Logger
	s     *stack.Stack
	pools atomic.Pointer[[]netip.Prefix] // the pools now; SetPools changes them

	echoes      sync.Pool     // *EchoRequest, with their packet buffers
	icmpSent    atomic.Uint64 // ICMP errors the stack built itself (refused echo requests)
	icmpLimited atomic.Uint64 // ... and those the ICMP rate limit suppressed

	udp       udpFlows     // accepted UDP flows, for the links' fast path
	listeners udpListeners // ListenUDP's sockets, for the links' fast path
	synAcks   synAckClock  // mends the timestamps of retransmitted SYN-ACKs (synack.go)

	timeWaitReused atomic.Uint64 // endpoints in TIME-WAIT a client's new SYN ended (timewait.go)

	// handlers runs the TCP handler of each SYN on a goroutine that has
	// run one before, whose stack is grown already (internal/gopool).
	handlers *gopool.Pool

	mu    sync.Mutex
	links map[tcpip.NICID]*Link
	// routes is gVisor's route table as updateRoutesLocked last set it,
	// most specific first, for linkTo and linkOf to read without a lock
	// or gVisor's route lookup (which allocates a route).
	routes atomic.Pointer[[]nicRoute]
	nextID tcpip.NICID
	closed bool
}

// New creates a stack. Close releases it.
func New(cfg Config, log *slog.Logger) (*Stack, error) {
	if cfg.Handler == nil {
		return nil, errors.New("netstack: a Handler is required")
	}
	if len(cfg.Pools) == 0 {
		return nil, errors.New("netstack: at least one pool is required")
	}
	if cfg.MaxInflightHandshakes <= 0 {
		cfg.MaxInflightHandshakes = 1024
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        false,
	})
	ns := &Stack{cfg: cfg, log: log, s: s, links: make(map[tcpip.NICID]*Link), nextID: 1, handlers: gopool.New(0, 0)}
	ns.SetPools(cfg.Pools)
	if err := ns.setOptions(); err != nil {
		s.Destroy()
		return nil, err
	}
	tf := tcp.NewForwarder(s, 0, cfg.MaxInflightHandshakes, ns.forwardTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tf.HandlePacket)
	uf := udp.NewForwarder(s, ns.forwardUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, uf.HandlePacket)
	return ns, nil
}

// TimeWait is how long a closed TCP endpoint of the netstack stays in
// TIME-WAIT (Linux: 60 s), holding its memory: short for a gateway with
// many flows.
const TimeWait = 5 * time.Second

// setOptions applies the TCP settings that the fastest gVisor forwarders
// converged on: SACK on, RACK off (it performs badly at high BDP), reno,
// bounded buffers, a short TIME-WAIT for a gateway with many flows.
func (ns *Stack) setOptions() error {
	sack := tcpip.TCPSACKEnabled(true)
	recovery := tcpip.TCPRecovery(0)
	delay := tcpip.TCPDelayEnabled(false)
	cc := tcpip.CongestionControlOption("reno")
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	tw := tcpip.TCPTimeWaitTimeoutOption(TimeWait)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 128 << 10, Max: 6 << 20}
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 128 << 10, Max: 8 << 20}
	opts := []tcpip.SettableTransportProtocolOption{&sack, &recovery, &delay, &cc, &moderate, &tw, &snd, &rcv}
	for _, o := range opts {
		if err := ns.s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("netstack: tcp option %T: %s", o, err)
		}
	}
	ttl := tcpip.DefaultTTLOption(defaultTTL)
	if err := ns.s.SetNetworkProtocolOption(ipv4.ProtocolNumber, &ttl); err != nil {
		return fmt.Errorf("netstack: ipv4 ttl: %s", err)
	}
	return nil
}

// Close detaches every link and releases the stack. Flows still open see
// their connections closed.
func (ns *Stack) Close() {
	ns.mu.Lock()
	if ns.closed {
		ns.mu.Unlock()
		return
	}
	ns.closed = true
	links := make([]*Link, 0, len(ns.links))
	for _, l := range ns.links {
		links = append(links, l)
	}
	ns.mu.Unlock()
	for _, l := range links {
		l.Close()
	}
	ns.s.Close()
	ns.s.Wait()
	ns.s.Destroy()
	ns.handlers.Close()
}

// SetPools replaces the prefixes the stack terminates (a gateway attached
// to a relay learns its pool from the relay).
func (ns *Stack) SetPools(pools []netip.Prefix) {
	ps := make([]netip.Prefix, len(pools))
	for i, p := range pools {
		ps[i] = p.Masked()
	}
	ns.pools.Store(&ps)
}

// ResetOutsidePools resets the TCP connections whose local address (a VIP)
// is in none of the pools now and not one of the stack's own: packets to
// such an address are dropped from SetPools on, so whatever such a
// connection would still send could never be acknowledged (ResetTCP).
func (ns *Stack) ResetOutsidePools() int {
	return ns.ResetTCP(func(local, _ netip.AddrPort) bool {
		a := local.Addr()
		return !ns.isLocal(a) && !ns.inPool(a)
	})
}

// ResetTCP resets the TCP connections, open or closing, for which match
// reports true, given their local (VIP) and remote (client) address and
// port, and returns how many it reset. It is for connections whose
// client's packets the caller drops from now on (the VIP left the pools,
// the client lost its source or its rights, its tunnel ingress closed):
// whatever such a connection would still send — the FIN of one its owner
// closed, data the client has not acknowledged — could never be
// acknowledged, and gVisor would send it again for minutes. Connections
// still open are the caller's to end first, with the reason it logs; this
// takes what is left (those closed already, still sending their FIN).
// Listening endpoints, handshakes and connections done are left alone. It
// walks every endpoint: call it when what is admitted changes, not per
// packet.
func (ns *Stack) ResetTCP(match func(local, remote netip.AddrPort) bool) int {
	n := 0
	for _, ep := range ns.s.RegisteredEndpoints() {
		te, ok := ep.(*tcp.Endpoint)
		if !ok {
			continue
		}
		switch tcp.EndpointState(te.State()) {
		case tcp.StateEstablished, tcp.StateFinWait1, tcp.StateFinWait2, tcp.StateCloseWait, tcp.StateLastAck, tcp.StateClosing:
		default:
			continue // listening, in a handshake, or done
		}
		info, ok := te.Info().(*stack.TransportEndpointInfo)
		if !ok {
			continue
		}
		local := fromAddr(info.ID.LocalAddress)
		remote := fromAddr(info.ID.RemoteAddress)
		if !local.IsValid() || !remote.IsValid() {
			continue
		}
		if !match(netip.AddrPortFrom(local, info.ID.LocalPort), netip.AddrPortFrom(remote, info.ID.RemotePort)) {
			continue
		}
		te.Abort()
		n++
	}
	return n
}

// InPools reports whether addr belongs to one of the pools the stack
// terminates now (SetPools).
func (ns *Stack) InPools(addr netip.Addr) bool { return ns.inPool(addr.Unmap()) }

// inPool reports whether addr belongs to one of the pools.
func (ns *Stack) inPool(addr netip.Addr) bool {
	for _, p := range *ns.pools.Load() {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// isLocal reports whether addr is one of the stack's own addresses.
func (ns *Stack) isLocal(addr netip.Addr) bool {
	for _, a := range ns.cfg.Local {
		if a == addr {
			return true
		}
	}
	return false
}

func toAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

func fromAddr(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}

func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// tcpipError converts a gVisor error into a Go error at our boundary.
func tcpipError(op string, err tcpip.Error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("netstack: %s: %s", op, err)
}

// defaultTTL is the TTL of the packets the stack sends, gVisor's and those
// built outside it (the UDP fast path's).
const defaultTTL = 64
