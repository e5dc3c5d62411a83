package relay

import (
	"net/netip"

	"github.com/ztgate/ztgate/internal/monoclock"
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
// tag of its flow. Every packet's source must be the session's inner
// address (a v1 agent's first routed packet pins it).
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
	t, reason := r.flowTag(a, service, packet, inner)
	if t == nil {
		r.m.dropFromAgent(reason)
		return
	}
	if err := t.gw.out.SendTagged(t.id, t.service, packet); err != nil {
		r.m.dropFromAgent(sendDrop(err))
		return
	}
	r.m.toGateway.Inc()
}

// flowTag returns the tag for a packet: a known flow keeps its tag (and is
// dropped if its gateway is gone), a new flow gets a gateway chosen now.
// Every fragment of a datagram is its flow's (its first fragment's,
// tunnel.Fragments), so that all of a datagram reaches one gateway. A
// packet the table cannot key (IPv6, a later fragment whose first was not
// seen) or a TCP segment of a flow it does not know (expired, evicted)
// takes the service's current tag. A cached tag carries the authorisation checked when it was drawn: a
// tag dies with its gateway, or when its gateway stops serving the
// service. An ICMP error about a packet of a known flow takes that flow's
// tag (the agent's port unreachable reaches the gateway whose backend
// sent the datagram), else the service's current one.
func (r *Relay) flowTag(a *agent, service, packet []byte, inner netip.Addr) (*tag, dropReason) {
	now := monoclock.Now()
	fp, ok := a.frags.Flow(packet, now)
	if !ok {
		return r.currentTag(a, service, inner)
	}
	t, verdict := a.flows.lookup(fp, service, now)
	if fp.Error { // an ICMP error about a packet of a flow goes where the flow goes, and opens none
		if verdict == flowKnown {
			return t, 0
		}
		return r.currentTag(a, service, inner)
	}
	switch verdict {
	case flowKnown:
		return t, 0
	case flowLost:
		return nil, dropFlowLost
	case flowOrphan:
		t, reason := r.currentTag(a, service, inner)
		if t != nil {
			a.flows.insert(fp, t, now)
		}
		return t, reason
	}
	var hint *gateway
	if t != nil {
		hint = t.gw
	}
	t, reason := r.newFlowTag(a, service, inner, wantsOf(a.id.Tenant, &fp), hint)
	if t != nil {
		a.flows.insert(fp, t, now)
	}
	return t, reason
}

// currentTag returns the tag of the service's latest new flow while it
// lives, else a new flow's.
func (r *Relay) currentTag(a *agent, service []byte, inner netip.Addr) (*tag, dropReason) {
	if t := a.current[string(service)]; t != nil && !t.dead.Load() {
		return t, 0
	}
	return r.newFlowTag(a, service, inner, wantsOf(a.id.Tenant, nil), nil)
}

// newFlowTag chooses a gateway for a new flow of the agent (w: what it
// needs) after the checks a new flow needs (the service exists, the agent
// may reach it, a gateway takes it) and returns the tag of (agent,
// service, gateway), drawing it on first use.
func (r *Relay) newFlowTag(a *agent, service []byte, inner netip.Addr, w flowWants, hint *gateway) (*tag, dropReason) {
	if a.s.Version() == tunnel.V1 && !a.registered[string(service)] {
		return nil, dropNotRegistered
	}
	r.mu.RLock()
	svc := r.services[string(service)]
	var g *gateway
	var reason dropReason
	switch {
	case svc == nil:
		reason = dropUnknownService
	case !a.may(svc): // may holds only if a gateway of svc admits the tenant
		reason = dropNotAuthorized
	default:
		if g = r.chooseGatewayLocked(svc, w, hint, false); g == nil {
			reason = dropNoEligible
		}
	}
	r.mu.RUnlock()
	if g == nil {
		return nil, reason
	}
	rt := route{svc.name, g}
	t := a.byRoute[rt]
	if t == nil || t.dead.Load() {
		if t, reason = r.openTag(a, svc, g, inner); t == nil {
			return nil, reason
		}
		a.forgetDeadRoutes()
		a.byRoute[rt] = t
		if !a.inner.IsValid() {
			r.pinInner(a, inner)
		}
	}
	a.current[svc.name] = t
	return t, 0
}

// forgetDeadRoutes drops the dead tags of byRoute and current once they
// have grown, so that gateways and services that came and went do not
// accumulate over a long session.
func (a *agent) forgetDeadRoutes() {
	forgetDead(a.byRoute)
	forgetDead(a.current)
}

// forgetDead drops the dead tags of m once it holds 64.
func forgetDead[K comparable](m map[K]*tag) {
	if len(m) < 64 {
		return
	}
	for k, t := range m {
		if t.dead.Load() {
			delete(m, k)
		}
	}
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
// if the tag belongs to this gateway and the packet is an IP packet from a
// VIP of the tag's service (a gateway speaks only for the services it
// serves) to the agent's inner address. b becomes the relay's: the packet
// in it is queued to the agent without a copy. With release (b is the
// session's, from ReceiveDatagram), b goes back to the tunnel
// (tunnel.ReleaseDatagram) once it is sent or dropped; tests pass their
// own slices without.
func (r *Relay) fromGateway(g *gateway, b []byte, release bool) {
	var received []byte
	if release {
		received = b
	}
	if !r.forwardFromGateway(g, b, received) && release {
		tunnel.ReleaseDatagram(b)
	}
}

// forwardFromGateway is fromGateway; true when b was queued to the agent,
// whose outbox then releases received (when not nil).
func (r *Relay) forwardFromGateway(g *gateway, b, received []byte) bool {
	id, packet, err := tunnel.ParseTagReturn(b)
	switch {
	case tunnel.Kind(b) != tunnel.TypeTagReturn:
		r.m.dropFromGateway(dropUnexpected)
		return false
	case err != nil:
		r.m.dropFromGateway(dropMalformed)
		return false
	}
	src, dst, ok := ipAddrs(packet)
	if !ok {
		r.m.dropFromGateway(dropNotIP)
		return false
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
		return false
	case t.gw != g:
		r.m.dropFromGateway(dropForeignTag)
		return false
	case dst != inner:
		r.m.dropFromGateway(dropWrongDestination)
		return false
	case !src.IsValid() || (src != t.vip && src != t.vip6):
		r.m.dropFromGateway(dropWrongSource)
		return false
	}
	if err := t.agent.out.Send(packet, received); err != nil { // the outbox released received
		r.m.dropFromGateway(sendDrop(err))
		return true
	}
	r.m.toAgent.Inc()
	return true
}
