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
		req.Refuse()
		return
	}
	if !g.admit(t, d.svc) {
		g.refuse("tcp", refuseLimit)
		req.Refuse()
		return
	}
	be, b, reason := g.dialTCP(d, req.Src.Addr())
	if be == nil {
		g.release(d.svc)
		g.refuse("tcp", reason)
		req.Refuse()
		return
	}
	client, err := req.Accept()
	if err != nil {
		be.Close()
		g.release(d.svc)
		return
	}
	f := g.newFlow("tcp", req.Src, req.Dst, d, b)
	f.idle = d.svc.spec.Timeouts.TCPIdle
	f.attach(client)
	g.startTCPSplice(f, client, be)
}

// dialTCP connects to a usable backend, trying another one when a dial
// fails. A failed dial counts as a failed health check of that backend.
func (g *Gateway) dialTCP(d decision, client netip.Addr) (*net.TCPConn, *backend, string) {
	set := d.svc.st.backends.Load()
	var tried []*backend
	for len(tried) < 3 {
		b := d.svc.st.picker.pick(set, d.svc.spec.Balance, client, tried)
		if b == nil {
			break
		}
		tried = append(tried, b)
		target := netip.AddrPortFrom(b.addr, b.portFor(d.port.Target))
		ctx, cancel := context.WithTimeout(context.Background(), g.opts.DialTimeout)
		var dialer net.Dialer
		c, err := dialer.DialContext(ctx, "tcp", target.String())
		cancel()
		if err == nil {
			return c.(*net.TCPConn), b, ""
		}
		g.m.dialErrors.WithLabelValues(d.svc.spec.Name, b.addr.String()).Inc()
		g.passiveFailure(d.svc, b, err)
	}
	if len(tried) == 0 {
		return nil, nil, refuseNoBackend
	}
	return nil, nil, refuseDial
}
