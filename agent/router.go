package agent

import (
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// router decides where each packet read from the TUN goes: to the local
// stack (DNS at the gateway address, and the fast refusals) or into the
// tunnel, framed with its service's name. It runs in the TUN reader's
// goroutine only, so its scratch buffer needs no lock.
type router struct {
	a       *Agent
	scratch []byte
}

// Deliver implements netstack.PacketSink.
func (r *router) Deliver(pkt []byte) {
	a := r.a
	src, dst, ok := netstack.IPv4Addrs(pkt)
	if !ok {
		a.m.drop("not_ipv4")
		return
	}
	if src != a.cfg.TUN.Address {
		a.m.drop("foreign_source")
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
	s := a.sess.Load()
	if s == nil {
		a.m.drop("no_session")
		return
	}
	b, err := tunnel.AppendRouted(r.scratch[:0], svc.name, pkt)
	if err != nil {
		a.m.drop("bad_service_id")
		return
	}
	r.scratch = b
	if err := s.SendDatagram(b); err != nil {
		a.m.drop("send_error")
		return
	}
	a.m.up.Add(1)
}

// opensFlow reports whether a packet starts a flow: a TCP SYN, any UDP
// datagram, an ICMP echo request.
func opensFlow(pkt []byte) bool {
	ihl := int(pkt[0]&0x0f) * 4
	if len(pkt) < ihl+14 {
		return pkt[9] == 17
	}
	switch pkt[9] {
	case 6:
		flags := pkt[ihl+13]
		return flags&0x02 != 0 && flags&0x10 == 0
	case 17:
		return true
	case 1:
		return pkt[ihl] == 8
	}
	return false
}

// refuser is the local stack's handler: it refuses every flow, fast.
type refuser struct{}

func (refuser) HandleTCP(req *netstack.TCPRequest)      { req.Refuse() }
func (refuser) HandleUDP(req *netstack.UDPRequest) bool { return false }
func (refuser) HandleEcho(req *netstack.EchoRequest)    {}
