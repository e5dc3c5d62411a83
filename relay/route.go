package relay

import (
	"net/netip"

	"github.com/ztgate/ztgate/tunnel"
)

// fromAgent handles one datagram of an agent session.
func (r *Relay) fromAgent(a *agent, b []byte) {
	switch tunnel.Kind(b) {
	case tunnel.TypeRouted:
		service, packet, err := tunnel.ParseRouted(b)
		if err != nil {
			r.m.dropFromAgent(dropMalformed)
			return
		}
		r.routeToGateway(a, service, packet)
	case tunnel.TypeAgentRegistration, tunnel.TypeGatewayRegistration:
		if a.s.Version() == tunnel.V1 {
			r.legacyRegistration(a, b)
			return
		}
		r.m.dropFromAgent(dropUnexpected)
	case tunnel.TypeIP:
		r.m.dropFromAgent(dropRawFromAgent)
	default:
		r.m.dropFromAgent(dropUnexpected)
	}
}

// routeToGateway forwards an agent's packet for service as 0x30 under the
// tag of (agent session, service), drawing the tag on first use or after
// its gateway went away. Every packet's source must be the session's
// inner address (a v1 agent's first routed packet pins it). The cached
// tag carries the authorisation checked when it was drawn: a tag dies
// with its gateway, or when its gateway stops serving the service.
func (r *Relay) routeToGateway(a *agent, service, packet []byte) {
	src, _, ok := ipAddrs(packet)
	if !ok {
		r.m.dropFromAgent(dropMalformed)
		return
	}
	inner := a.inner
	if !inner.IsValid() {
		inner = src
	}
	if src != inner {
		r.m.dropFromAgent(dropSpoofed)
		return
	}
	t := a.bySvc[string(service)]
	if t == nil || t.dead.Load() {
		if a.s.Version() == tunnel.V1 && !a.registered[string(service)] {
			r.m.dropFromAgent(dropNotRegistered)
			return
		}
		var reason dropReason
		if t, reason = r.openTag(a, string(service), inner); t == nil {
			r.m.dropFromAgent(reason)
			return
		}
		a.bySvc[t.service] = t
		if !a.inner.IsValid() {
			r.pinInner(a, inner)
		}
	}
	a.buf, _ = tunnel.AppendTagged(a.buf[:0], t.id, t.service, packet)
	if err := t.gw.s.SendDatagram(a.buf); err != nil {
		r.m.dropFromAgent(dropSendFailed)
		return
	}
	r.m.toGateway.Inc()
}

// pinInner fixes a v1 agent's inner address at its first routed packet.
func (r *Relay) pinInner(a *agent, inner netip.Addr) {
	r.mu.Lock()
	a.inner = inner
	r.mu.Unlock()
	r.log.Info("v1 agent's inner address pinned", "session", a.s.ID(), "inner", inner.String())
}

// fromGateway handles one datagram of a gateway session: only 0x31, routed
// strictly by its tag to the agent session the tag was drawn for, and only
// if the tag belongs to this gateway and the packet is an IP packet for
// the agent's inner address.
func (r *Relay) fromGateway(g *gateway, b []byte) {
	id, packet, err := tunnel.ParseTagReturn(b)
	switch {
	case tunnel.Kind(b) != tunnel.TypeTagReturn:
		r.m.dropFromGateway(dropUnexpected)
		return
	case err != nil:
		r.m.dropFromGateway(dropMalformed)
		return
	}
	_, dst, ok := ipAddrs(packet)
	if !ok {
		r.m.dropFromGateway(dropNotIP)
		return
	}
	r.mu.RLock()
	t := r.tags[id]
	var inner netip.Addr
	if t != nil {
		inner = t.agent.inner
	}
	r.mu.RUnlock()
	switch {
	case t == nil:
		r.m.dropFromGateway(dropUnknownTag)
		return
	case t.gw != g:
		r.m.dropFromGateway(dropForeignTag)
		return
	case dst != inner:
		r.m.dropFromGateway(dropWrongDestination)
		return
	}
	if err := t.agent.s.SendDatagram(packet); err != nil {
		r.m.dropFromGateway(dropSendFailed)
		return
	}
	r.m.toAgent.Inc()
}
