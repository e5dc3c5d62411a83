package relay

import (
	"fmt"
	"slices"
	"sync"

	"github.com/ztgate/ztgate/tunnel"
)

// outboxLen bounds the datagrams waiting to be sent on one session
// (tunnel.Outbox): quic-go drops what arrives while its 128-datagram
// receive queue is full, and a reader stalled on another session's send
// would let it fill.
const outboxLen = 1024

// gatewayOutbox starts the outbox of gateway session s. It stays out of
// the agents' outboxes' budget: it carries the packets of every agent
// that reaches the gateway, and slow agents that spent the budget must not
// hold all of them to tunnel.OutboxReserve. Gateways are few, each bounded
// by outboxLen.
func gatewayOutbox(s tunnel.DatagramSender) *tunnel.Outbox {
	return tunnel.NewOutbox(s, outboxLen, nil, nil)
}

// outboxBudget bounds the datagrams queued in all agent sessions' outboxes
// together (tunnel.OutboxBudget): 32 full outboxes, 64 MiB at most of
// quic-go's and pooled buffers. Past it a session that holds
// tunnel.OutboxReserve datagrams or more drops its new ones
// (outbox_budget): a thousand slow agents hold 64 datagrams each, not a
// full outbox each.
const outboxBudget = 32 * outboxLen

// serve runs one session from admission to its end.
func (r *Relay) serve(s *tunnel.Session) {
	defer s.Close("relay: session over")
	p, ref := r.admit(s)
	var g *gateway
	if ref == nil && p.role == roleGateway {
		// Entered before the welcome: the bound of its identity's gateways
		// may refuse it, and the check and the entry are one step.
		g = newGateway(p, s.Hello().Name)
		ref = r.addGateway(g)
	}
	if ref != nil {
		r.m.refusals.WithLabelValues(ref.reason).Inc()
		r.log.Warn("session refused", "session", s.ID(), "remote", s.RemoteAddr().String(),
			"peer", s.Peer().String(), "name", s.Hello().Name, "reason", ref.reason, "detail", ref.message)
		_ = s.Refuse(ref.reason, ref.message)
		return
	}
	r.log.Info("session admitted", "session", s.ID(), "role", p.role, "identity", p.id.String(),
		"version", s.Version().String(), "remote", s.RemoteAddr().String())
	if g != nil {
		r.serveGateway(g)
	} else {
		r.serveAgent(p)
	}
	if s.Revoked() {
		// Out of the registry by now (serveGateway, serveAgent).
		r.closeRevokedForwarders(p, g)
	}
	r.log.Info("session ended", "session", s.ID(), "role", p.role, "identity", p.id.String(), "err", s.Err())
}

// serveGateway answers the hello of a gateway addGateway entered, and
// serves its registrations and tag returns until the session ends; then it
// takes the gateway out of the registry. Its outbox is set before it
// registers services, so before any tag of it exists.
func (r *Relay) serveGateway(g *gateway) {
	s := g.s
	if err := s.SendWelcome(tunnel.Welcome{MaxPacket: s.MaxDatagram() - tunnel.TagReturnOverhead}); err != nil {
		r.removeGateway(g)
		return
	}
	g.out = gatewayOutbox(s)
	defer g.out.Close()
	defer r.removeGateway(g) // before the outbox closes, as its tags die
	var wg sync.WaitGroup
	wg.Go(func() {
		r.datagrams(s, func(b []byte) {
			g.heard.Add(1)
			r.fromGateway(g, b, true)
		})
	})
	wg.Go(func() { r.watchGateway(g) })
	r.controlLoop(s, func(typ string, msg any) error {
		g.heard.Add(1)
		switch m := msg.(type) {
		case *tunnel.Register:
			r.register(g, m)
		case *tunnel.Health:
			r.health(g, m)
		case *tunnel.Answer:
			r.onAnswer(g, m)
		case *tunnel.ErrorMessage:
			r.onSignalError(party{g: g}, m)
		case *tunnel.Pong:
		case *tunnel.Ping:
			return s.Send(&tunnel.Pong{Type: tunnel.MessagePong, Seq: m.Seq})
		case *tunnel.Offer:
			r.rejectSignal(party{g: g}, m.SessionID, sigWrongRole, typ)
		case *tunnel.Result:
			r.rejectSignal(party{g: g}, m.SessionID, sigWrongRole, typ)
		default:
			return &tunnel.UnknownTypeError{Type: typ}
		}
		return nil
	})
	_ = s.Close("control stream ended")
	wg.Wait()
}

// serveAgent answers a v2 agent's hello, pushes its directory and routes
// its datagrams until the session ends.
func (r *Relay) serveAgent(p peer) {
	a := newAgent(p, p.s.Hello().InnerAddr, &r.m.flows)
	v2 := p.s.Version() == tunnel.V2
	if v2 {
		if err := p.s.SendWelcome(tunnel.Welcome{MaxPacket: r.maxPacket(a)}); err != nil {
			return
		}
	}
	a.out = tunnel.NewOutbox(p.s, outboxLen, r.outboxes, nil)
	defer a.out.Close()
	r.addAgent(a)
	defer r.removeAgent(a)
	if !v2 {
		r.datagrams(p.s, func(b []byte) { r.fromAgent(a, b); tunnel.ReleaseDatagram(b) })
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { r.datagrams(p.s, func(b []byte) { r.fromAgent(a, b); tunnel.ReleaseDatagram(b) }) })
	wg.Go(func() { r.pushDirectory(a) })
	r.controlLoop(p.s, func(typ string, msg any) error {
		switch m := msg.(type) {
		case *tunnel.Offer:
			r.onOffer(a, m)
		case *tunnel.Result:
			r.onResult(a, m)
		case *tunnel.ErrorMessage:
			r.onSignalError(party{a: a}, m)
		case *tunnel.Ping:
			return p.s.Send(&tunnel.Pong{Type: tunnel.MessagePong, Seq: m.Seq})
		case *tunnel.Answer:
			r.rejectSignal(party{a: a}, m.SessionID, sigWrongRole, typ)
		default:
			return &tunnel.UnknownTypeError{Type: typ}
		}
		return nil
	})
	_ = p.s.Close("control stream ended")
	wg.Wait()
}

// maxPacket is the largest IP packet the relay can carry for an agent end
// to end: its own path with a 0x2F header, and the path to the gateways
// with a 0x30 header. Every QUIC path starts at the same minimum size, so
// the agent's own stands in for gateways that are not connected yet: the
// bound holds for a gateway that connects later.
func (r *Relay) maxPacket(a *agent) int {
	r.mu.RLock()
	gateways := make([]int, 0, len(r.gateways))
	for g := range r.gateways {
		gateways = append(gateways, g.s.MaxDatagram())
	}
	r.mu.RUnlock()
	return packetBound(a.s.MaxDatagram(), gateways)
}

// packetBound is maxPacket's arithmetic: own is the agent session's largest
// datagram, gateways those of the gateway sessions. The 0x30 header is
// charged against own too, so the bound is never above own −
// [tunnel.MaxTaggedOverhead]; the smaller 0x2F header on the agent's own
// path is then always covered. 0 means nothing fits.
func packetBound(own int, gateways []int) int {
	gwMin := own
	for _, g := range gateways {
		gwMin = min(gwMin, g)
	}
	return max(0, gwMin-tunnel.MaxTaggedOverhead)
}

// datagrams hands every datagram of a session to handle until it ends.
// Each datagram is handle's, to release (tunnel.ReleaseDatagram) once it
// is done with it, or to keep.
func (r *Relay) datagrams(s *tunnel.Session, handle func([]byte)) {
	for {
		b, err := s.ReceiveDatagram(r.ctx)
		if err != nil {
			return
		}
		handle(b)
	}
}

// controlLoop reads control messages and passes each to handle; a message
// that cannot be handled is answered with an error message and the loop
// reads on. It returns when the stream breaks or the session ends.
func (r *Relay) controlLoop(s *tunnel.Session, handle func(typ string, msg any) error) {
	for {
		typ, raw, err := s.Next()
		msg, err := tunnel.DecodeControl(typ, raw, err)
		if err == nil {
			err = handle(typ, msg)
		}
		if err == nil {
			continue
		}
		reply, ok := tunnel.ReplyFor(err)
		if !ok {
			return
		}
		if err := s.Send(&reply); err != nil {
			return
		}
	}
}

// addAgent enters an agent session into the registry. An identity with
// more than tunnel.MaxIdentitySessions live sessions loses its oldest.
func (r *Relay) addAgent(a *agent) {
	var evict []*agent
	key, bounded := identityKeyOf(&a.peer)
	r.mu.Lock()
	r.agents[a] = struct{}{}
	if bounded {
		set := r.byIdentity[key]
		if set == nil {
			set = make(map[*agent]struct{})
			r.byIdentity[key] = set
		}
		set[a] = struct{}{}
		var live []*agent
		for o := range set {
			if !o.evicted {
				live = append(live, o)
			}
		}
		if over := len(live) - tunnel.MaxIdentitySessions; over > 0 {
			slices.SortFunc(live, func(x, y *agent) int { return x.since.Compare(y.since) })
			for _, o := range live[:over] {
				o.evicted = true
				evict = append(evict, o)
			}
		}
	}
	r.mu.Unlock()
	r.m.agentGauge.Inc()
	for _, o := range evict {
		r.m.identityClosed.Inc()
		r.log.Warn("an agent identity has more sessions than allowed; closing its oldest", "agent", a.id.String(),
			"max", tunnel.MaxIdentitySessions, "closed_session", o.s.ID())
		_ = o.s.Close(fmt.Sprintf("more than %d sessions of this identity: the oldest is closed", tunnel.MaxIdentitySessions))
	}
}

// identityKey is an agent or gateway identity whose sessions are bounded
// (addAgent, addGateway).
type identityKey struct{ tenant, role, name string }

// identityKeyOf returns p's identity, and false when its sessions are not
// bounded: legacy and unverified identities, which a fleet may share.
func identityKeyOf(p *peer) (identityKey, bool) {
	return identityKey{p.id.Tenant, p.id.Role, p.id.Name}, !p.id.Legacy && p.s.Peer().Tenant != ""
}

// removeAgent takes an ended agent session out of the registry; its tags
// die and their gateways are told, so they close the flows bound to them.
func (r *Relay) removeAgent(a *agent) {
	closed := make(tagsByGateway)
	r.mu.Lock()
	delete(r.agents, a)
	if key, bounded := identityKeyOf(&a.peer); bounded {
		if set := r.byIdentity[key]; set != nil {
			delete(set, a)
			if len(set) == 0 {
				delete(r.byIdentity, key)
			}
		}
	}
	for _, t := range a.tags {
		closed.add(t)
		r.killTagLocked(t)
	}
	r.mu.Unlock()
	a.flows.clear()
	r.m.agentGauge.Dec()
	closed.send()
	r.dropSignaling(party{a: a})
}
