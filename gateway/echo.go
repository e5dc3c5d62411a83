package gateway

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/ztgate/ztgate/netstack"
)

// echoTimeout bounds how long a backend has to answer a ping.
const echoTimeout = 2 * time.Second

// HandleEcho implements netstack.Handler. The echo request goes to a
// backend of the VIP's service; the client gets a reply from the VIP only
// when that backend answered, so ping tells the truth about the service.
// A refused ping (no service on the VIP, a tenant the service does not
// allow, echo disabled, over the source's rate) gets an ICMP destination
// unreachable, administratively prohibited, at once; a ping from an
// unknown source, with no healthy backend, over the echo limits (the
// gateway's, its tenant's or its source's share: echolimits.go), or that
// the backend did not answer gets no reply.
func (g *Gateway) HandleEcho(req *netstack.EchoRequest) {
	d := g.classify(g.tbl.Load(), 0, req.Src, netip.AddrPortFrom(req.Dst, 0))
	if d.refused != "" {
		g.refuse("icmp", d.refused)
		if d.refused == refuseUnknownSource {
			req.Drop() // deny by default: an unknown source learns nothing
		} else {
			req.Refuse()
		}
		return
	}
	b := d.svc.st.picker.pick(d.set, d.svc.spec.Balance, req.Src, nil)
	if b == nil {
		g.refuse("icmp", refuseNoBackend)
		req.Drop()
		return
	}
	tenant, src := d.peer.tenant, req.Src
	if reason := g.echoLimits.take(tenant, src); reason != "" {
		g.refuse("icmp", reason)
		req.Drop()
		return
	}
	if !g.enter() {
		g.echoLimits.give(tenant, src)
		req.Drop()
		return
	}
	go func() {
		defer g.leave()
		defer g.echoLimits.give(tenant, src)
		ctx, cancel := context.WithTimeout(g.ctx, echoTimeout)
		defer cancel()
		if err := g.pingerOnce().Ping(ctx, b.addr, req.Payload); err != nil {
			d.svc.st.m.echoNoReply.Inc()
			g.warnPinger(err)
			req.Drop()
			return
		}
		d.svc.st.m.echoOK.Inc()
		req.Reply()
	}()
}

// warnPinger logs, once, that the pinger cannot send at all (no ICMP
// socket: neither CAP_NET_RAW nor net.ipv4.ping_group_range): the gateway
// goes on without echo, and pings to VIPs get no reply.
func (g *Gateway) warnPinger(err error) {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return // the backend did not answer: not the pinger's fault
	}
	if g.pingerWarned.CompareAndSwap(false, true) {
		g.log.Warn("ICMP echo to backends is unavailable: pings to VIPs get no reply", "err", err)
	}
}

// pingerOnce returns the pinger, creating the ICMP one on first use.
func (g *Gateway) pingerOnce() Pinger {
	g.pingerInit.Do(func() {
		if g.opts.Pinger != nil {
			g.pinger = g.opts.Pinger
		} else {
			g.pinger = newICMPPinger()
		}
	})
	return g.pinger
}
