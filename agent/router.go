package agent

import (
	"encoding/binary"
	"errors"

	"github.com/ztgate/ztgate/internal/monoclock"
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// maxRouterFlows bounds the router's flow table.
const maxRouterFlows = 8192

// maxRouterFragmented bounds the fragmented datagrams whose later fragments
// the router awaits.
const maxRouterFragmented = 1024

// router decides where each packet read from the TUN goes: to the local
// stack (DNS at the gateway address, and the fast refusals) or into the
// tunnel, framed with its service's name, on the path its flow started on:
// the relay (nil) or a direct path. It runs in the TUN reader's goroutine
// only, so its scratch buffer and flow table need no lock.
type router struct {
	a       *Agent
	scratch []byte
	flows   *tunnel.FlowTable[*path]
	frags   *tunnel.Fragments // the flows of fragmented datagrams, for their later fragments
}

// newRouter returns the agent's router.
func newRouter(a *Agent) *router {
	return &router{a: a, frags: tunnel.NewFragments(maxRouterFragmented), flows: tunnel.NewFlowTable(maxRouterFlows, func(_ *path, why tunnel.FlowRemoval) {
		switch why {
		case tunnel.FlowExpired:
			a.m.flowsExpired.Inc()
		case tunnel.FlowEvicted:
			a.m.flowsEvicted.Inc()
		}
	})}
}

// Deliver implements netstack.PacketSink.
func (r *router) Deliver(pkt []byte) {
	a := r.a
	src, dst, ok := netstack.IPv4Addrs(pkt)
	if !ok {
		a.m.drop(dropNotIPv4)
		return
	}
	if src != a.cfg.TUN.Address {
		a.m.drop(dropForeignSource)
		return
	}
	if dst == a.gatewayAddr() {
		a.local.Deliver(pkt)
		return
	}
	d := a.dir.Load()
	svc := d.byVIP[dst]
	if svc == nil || (!svc.healthy && opensFlow(pkt)) {
		// An unknown VIP, or a new flow to a service whose gateways report
		// no healthy backend: the local stack answers RST or ICMP
		// unreachable at once, and ping gets no reply.
		a.m.refused(svc == nil)
		a.local.Deliver(pkt)
		return
	}
	b, err := tunnel.AppendRouted(r.scratch[:0], svc.name, pkt)
	if err != nil {
		a.m.drop(dropBadServiceID)
		return
	}
	r.scratch = b
	if p := r.pathOf(svc.name, pkt); p != nil {
		err := p.s.SendDatagram(b)
		if err == nil {
			p.used.Add(1)
			a.m.upDirect.Inc()
			return
		}
		if errors.Is(err, tunnel.ErrDatagramQueueFull) {
			// The path is congested, not dead: the packet is lost as on
			// any full link, and its flow stays on the path (through the
			// relay, the gateway would answer it with a RST).
			a.m.drop(dropSendError)
			return
		}
		// The path just died, or the packet is larger than it carries:
		// the relay takes it.
	}
	s := a.sess.Load()
	if s == nil {
		a.m.drop(dropNoSession)
		return
	}
	if err := s.SendDatagram(b); err != nil {
		a.m.drop(dropSendError)
		return
	}
	a.m.up.Add(1)
}

// pathOf returns the path of a packet's flow: a known flow keeps its path
// while that lives; a new one (or one whose direct path died) takes the
// service's current path and, when that is the relay, asks for a direct
// one. Every fragment of a datagram takes its flow's path (its first
// fragment's, tunnel.Fragments); a packet without a known flow (a later
// fragment whose first was not seen) takes the current path; an ICMP
// error about a packet of a flow takes that flow's path.
func (r *router) pathOf(service string, pkt []byte) *path {
	d := r.a.direct
	now := monoclock.Now()
	f, ok := r.frags.Flow(pkt, now)
	if !ok {
		return d.route(service)
	}
	r.flows.Sweep(now)
	if p, known := r.flows.Lookup(f.Key, now, f.Refresh()); known && (p == nil || !p.dead.Load()) {
		return p
	}
	if f.Error { // an ICMP error about a packet of an unknown flow opens none
		return d.route(service)
	}
	p := d.route(service)
	r.flows.Put(f.Key, p, now, f.Idle())
	if p == nil {
		d.want(service)
	}
	return p
}

// opensFlow reports whether a packet starts a flow: a TCP SYN, any UDP
// datagram, an ICMP echo request (of any size). pkt is an IPv4 packet of
// at least 20 bytes. A later fragment has no transport header to tell:
// one of a UDP datagram goes where its first went (every UDP datagram
// opens a flow), any other opens none (it goes on with its flow).
func opensFlow(pkt []byte) bool {
	if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return pkt[9] == tunnel.ProtoUDP
	}
	l4 := pkt[min(int(pkt[0]&0x0f)*4, len(pkt)):]
	switch pkt[9] {
	case tunnel.ProtoTCP:
		return len(l4) >= 14 && l4[13]&0x12 == 0x02 // SYN without ACK
	case tunnel.ProtoUDP:
		return true
	case tunnel.ProtoICMP:
		return len(l4) >= 1 && l4[0] == 8
	}
	return false
}

// refuser is the local stack's handler: it refuses every flow, fast.
type refuser struct{}

func (refuser) HandleTCP(req *netstack.TCPRequest)      { req.Refuse() }
func (refuser) HandleUDP(req *netstack.UDPRequest) bool { return false }
func (refuser) HandleEcho(req *netstack.EchoRequest)    { req.Drop() }
