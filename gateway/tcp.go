package gateway

import (
	"context"
	"net"
	"net/netip"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack"
)

// HandleTCP implements netstack.Handler. It dials the backend before
// completing the client's handshake and answers RST when it cannot, so a
// client never hangs.
func (g *Gateway) HandleTCP(req *netstack.TCPRequest) {
	if !g.enter() {
		req.Refuse()
		return
	}
	defer g.leave()
	t := g.tbl.Load()
	d := g.classify(t, catalog.TCP, req.Src.Addr(), req.Dst)
	if d.refused != "" {
		g.refuse("tcp", d.refused)
		refuseOrDrop(req, d.refused)
		return
	}
	if reason := g.admit(d.t, d); reason != "" {
		g.refuse("tcp", reason)
		req.Refuse()
		return
	}
	// A tenant's SYN flood holds at most its share of the handshakes in
	// flight, the rest is the other tenants'; a service's bound caps what a
	// flood against it or a slow backend holds.
	if reason := g.beginHandshake(d.t, d); reason != "" {
		g.release(d.svc, d.peer.tenant)
		g.refuse("tcp", reason)
		refuseOrDrop(req, reason)
		return
	}
	be, b, reason := g.dialTCP(d, req.Src.Addr())
	if be == nil {
		g.endHandshake(d)
		g.release(d.svc, d.peer.tenant)
		g.refuse("tcp", reason)
		req.Refuse()
		return
	}
	client, err := req.Accept()
	g.endHandshake(d)
	if err != nil {
		b.dialing.Add(-1)
		be.Close()
		g.release(d.svc, d.peer.tenant)
		g.refuse("tcp", refuseHandshake)
		return
	}
	f := g.newFlow("tcp", req.Src, req.Dst, d, b)
	b.dialing.Add(-1) // after newFlow counted it active: counted all along, for a moment twice
	f.idle = d.svc.spec.Timeouts.TCPIdle
	f.attach(client)
	g.startTCPSplice(f, client, be)
}

// dialTCP connects to a usable backend, trying another one when a dial
// fails. A failed dial counts as a failed health check of that backend.
// The backend it returns counts the flow in dialing, which the caller
// ends once the flow is bound to it (newFlow) or given up.
func (g *Gateway) dialTCP(d decision, client netip.Addr) (*net.TCPConn, *backend, string) {
	var tried []*backend
	for len(tried) < 3 {
		b := d.svc.st.picker.pick(d.set, d.svc.spec.Balance, client, tried)
		if b == nil {
			break
		}
		tried = append(tried, b)
		b.dialing.Add(1)
		target := netip.AddrPortFrom(b.addr, b.portFor(d.port.Target))
		ctx, cancel := context.WithTimeout(context.Background(), g.opts.DialTimeout)
		// DialContext, not Dialer.DialTCP with a zero local AddrPort:
		// that binds the socket to port 0 before connecting, and the
		// kernel's search for a free port among thousands in TIME_WAIT
		// took 2.3 ms of CPU per connection (6,600 → 800 conns/s).
		var (
			c   net.Conn
			err error
		)
		if g.dial != nil {
			c, err = g.dial(ctx, "tcp", target.String())
		} else {
			// No keepalive yet: the sweeper turns it on for flows that
			// outlive keepaliveAfter (four setsockopt calls that a
			// short connection would pay for nothing).
			dialer := net.Dialer{KeepAlive: -1}
			c, err = dialer.DialContext(ctx, "tcp", target.String())
		}
		cancel()
		if err == nil {
			return c.(*net.TCPConn), b, ""
		}
		b.dialing.Add(-1)
		g.countDialError(d.svc.spec.Name, b)
		g.passiveFailure(d.svc, b, err)
	}
	if len(tried) == 0 {
		return nil, nil, refuseNoBackend
	}
	return nil, nil, refuseDial
}
