package relay

import (
	"net/netip"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// The signaling messages of the direct path (docs/direct-path.md): the
// relay checks each against the state machine of signal.go and forwards
// what it accepts to the other party, under that party's id of the
// session. Rejections are logged, counted and, unless the rejected message
// was itself an error, answered with an error naming the sender's id.

// onOffer handles an agent's offer: the agent must be authorised for the
// service, and a gateway serving it with direct candidates must take new
// flows; the session is bound to both before the offer goes to the
// gateway: the first such gateway, in the order new flows prefer them,
// that has room for it (signaling.offer).
func (r *Relay) onOffer(a *agent, m *tunnel.Offer) {
	from := party{a: a}
	if checkLabel(m.Service) != nil || !validCandidates(m.Candidates, false) {
		r.rejectSignal(from, m.SessionID, sigBadMessage, m.Type)
		return
	}
	r.mu.RLock()
	svc := r.services[m.Service]
	var gws []*gateway
	reason := sigNotAuthorized
	if svc != nil && a.may(svc) {
		if gws = r.directGatewaysLocked(svc, a.id.Tenant); len(gws) == 0 {
			reason = sigNoGateway
		}
	}
	r.mu.RUnlock()
	if len(gws) == 0 {
		r.rejectSignal(from, m.SessionID, reason, m.Type)
		return
	}
	r.sigMu.Lock()
	s, reason := r.sig.offer(from, m.SessionID, gws, svc.name, time.Now())
	r.updateSignalGauges()
	r.sigMu.Unlock()
	if s == nil {
		r.rejectSignal(from, m.SessionID, reason, m.Type)
		return
	}
	g := s.g
	err := g.s.Post(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: s.legID, Service: s.service,
		Candidates: m.Candidates, Agent: a.id.String()})
	if err != nil {
		r.endSignal(s, outcomePeerGone, party{g: g}, tunnel.CodePeerGone, "the gateway's session ended")
		return
	}
	r.log.Debug("direct path offered", "agent", a.id.String(), "service", s.service, "gateway", g.id.String())
}

// onAnswer handles a gateway's answer to a session bound to it and
// forwards it to the agent with the gateway's verified identity.
func (r *Relay) onAnswer(g *gateway, m *tunnel.Answer) {
	from := party{g: g}
	if !validCandidates(m.Candidates, true) {
		r.rejectSignal(from, m.SessionID, sigBadMessage, m.Type)
		return
	}
	r.sigMu.Lock()
	s, reason := r.sig.answer(from, m.SessionID)
	var port uint16
	if s != nil && r.fwd != nil {
		// Opened under sigMu, so that whatever ends the session closes it.
		// The target is the gateway's listen port (its candidates all
		// carry it) at its session's address; no candidate, no target.
		f, why := (*forwarder)(nil), fwdRefuseTarget
		if len(m.Candidates) > 0 {
			target := netip.AddrPortFrom(g.s.RemoteAddr().Addr(), m.Candidates[0].Port())
			f, why = r.fwd.open(s.a.id.String(), g.id.String(), g.name, s.a.s.RemoteAddr().Addr(), target)
		}
		if f != nil {
			s.fwd, port = f, f.port
		} else {
			r.fwd.m.refused.WithLabelValues(why).Inc()
			r.log.Info("no forwarder for a direct path", "agent", s.a.id.String(), "gateway", g.id.String(), "reason", why)
		}
	}
	r.sigMu.Unlock()
	if s == nil {
		r.rejectSignal(from, m.SessionID, reason, m.Type)
		return
	}
	err := s.a.s.Post(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: s.agentID, Service: s.service,
		Candidates: m.Candidates, Gateway: g.id.String(), ForwardPort: port})
	if err != nil {
		r.endSignal(s, outcomePeerGone, party{a: s.a}, tunnel.CodePeerGone, "the agent's session ended")
	}
}

// onResult handles the bound agent's result, which ends the session; a
// success is remembered as a direct path.
func (r *Relay) onResult(a *agent, m *tunnel.Result) {
	from := party{a: a}
	r.sigMu.Lock()
	s, reason := r.sig.result(from, m.SessionID)
	outcome := outcomeFailed
	if s != nil && m.Success {
		r.sig.addPath(s)
		outcome = outcomeSuccess
	}
	r.updateSignalGauges()
	r.sigMu.Unlock()
	if s == nil {
		r.rejectSignal(from, m.SessionID, reason, m.Type)
		return
	}
	if !m.Success {
		s.closeForwarder("the attempt failed")
	}
	r.m.sigOutcomes.WithLabelValues(outcome).Inc()
	_ = s.g.s.Post(&tunnel.Result{Type: tunnel.MessageResult, SessionID: s.legID, Success: m.Success, Address: m.Address})
	r.log.Info("direct path attempt", "agent", a.id.String(), "service", s.service, "gateway", s.g.id.String(),
		"success", m.Success, "address", m.Address.String())
	if m.Success {
		r.retireLatePath(s)
	}
}

// retireLatePath retires at once the direct path of a session that
// succeeded after its gateway was drained, reported the service down, or
// stopped serving it or admitting the agent's tenant: those events retire
// the paths established before them only. The path is recorded before
// this check and every such event changes the registry before it retires
// paths, so one of the two sees the other.
func (r *Relay) retireLatePath(s *sigSession) {
	r.mu.RLock()
	healthy, serves := s.g.services[s.service]
	drained := r.drained[gatewayName(s.g)]
	admits := s.g.admits(s.service, s.a.id.Tenant)
	r.mu.RUnlock()
	code := ""
	switch {
	case drained:
		code = tunnel.CodeDrained
	case serves && !admits:
		code = tunnel.CodeNotAuthorized
	case !serves || !healthy:
		code = tunnel.CodeServiceDown
	}
	if code != "" {
		r.retireDirectPathsWhere(s.g, s.service, func(x *agent) bool { return x == s.a }, code)
	}
}

// onSignalError handles an error from a party: one about a session of
// its own ends it at both; one from anybody else is rejected (and never
// answered: two peers must not trade errors forever).
func (r *Relay) onSignalError(from party, m *tunnel.ErrorMessage) {
	if m.SessionID == 0 {
		if from.mayWarn() {
			r.log.Warn("peer error", "identity", from.identity(), "code", m.Code, "message", m.Message)
		}
		return
	}
	r.sigMu.Lock()
	s, reason := r.sig.abort(from, m.SessionID)
	r.updateSignalGauges()
	r.sigMu.Unlock()
	if s == nil {
		r.rejectSignal(from, 0, reason, m.Type)
		return
	}
	s.closeForwarder("the session was aborted")
	r.m.sigOutcomes.WithLabelValues(outcomeAborted).Inc()
	r.notifySignal(s, s.other(from), clip(m.Code, maxSignalText), clip(m.Message, maxSignalText))
}

// rejectSignal logs, counts and (for id ≠ 0) answers a rejected message.
// A message about another party's session is answered as unknown: the
// sender learns nothing about sessions that are not its own.
func (r *Relay) rejectSignal(from party, id uint64, reason, typ string) {
	r.m.sigRejected.WithLabelValues(reason).Inc()
	var message string
	switch {
	case reason == sigNoGateway:
		// Not the sender's fault: the answer to every offer while no
		// gateway of the service has [tunnel] listen, the relay's own
		// path being the deployment's choice.
		message = noGatewayMessage
		r.log.Debug("direct path offer refused: no gateway of the service offers one", "identity", from.identity(),
			"session_id", id)
	case from.mayWarn():
		r.log.Warn("signaling message rejected", "identity", from.identity(), "type", typ,
			"session_id", id, "reason", reason)
	}
	if id == 0 {
		return
	}
	code := reason
	if reason == sigNotOwner {
		code = sigUnknown
	}
	_ = from.session().Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: code, SessionID: id, Message: message})
}

// noGatewayMessage explains the error no_gateway to the agent, whose log
// shows it.
const noGatewayMessage = "no gateway serving the service accepts direct paths now ([tunnel] listen unset, or drained, or not admitting this tenant): the relay carries it"

// endSignal removes a session that cannot go on because the party gone
// did not take a message, and tells the other party. A session something
// else ended meanwhile (the party's departure, expiry) was counted and
// told of then.
func (r *Relay) endSignal(s *sigSession, outcome string, gone party, code, message string) {
	r.sigMu.Lock()
	live := r.sig.byLeg[s.legID] == s
	if live {
		r.sig.remove(s)
	}
	r.updateSignalGauges()
	r.sigMu.Unlock()
	if !live {
		return
	}
	s.closeForwarder("the session ended: " + outcome)
	r.m.sigOutcomes.WithLabelValues(outcome).Inc()
	r.notifySignal(s, s.other(gone), code, message)
}

// closeForwarder closes the forwarder of a session that did not succeed.
func (s *sigSession) closeForwarder(why string) {
	if s.fwd != nil {
		s.fwd.close(fwdCloseSignaling, why)
	}
}

// notifySignal sends one party of a session an error under its own id.
func (r *Relay) notifySignal(s *sigSession, to party, code, message string) {
	_ = to.session().Post(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: code, Message: message, SessionID: s.idFor(to)})
}

// expireSignaling ends the sessions whose time is up and tells both
// parties.
func (r *Relay) expireSignaling(now time.Time) {
	for _, s := range r.takeSignals(outcomeExpired, func(sg *signaling) []*sigSession { return sg.expire(now) }) {
		r.log.Info("signaling session expired", "agent", s.a.id.String(), "gateway", s.g.id.String(), "service", s.service)
		r.notifySignal(s, party{a: s.a}, tunnel.CodeExpired, "not completed in time")
		r.notifySignal(s, party{g: s.g}, tunnel.CodeExpired, "not completed in time")
	}
}

// dropSignaling ends the sessions of a party whose session ended and tells
// the other parties.
func (r *Relay) dropSignaling(gone party) {
	for _, s := range r.takeSignals(outcomePeerGone, func(sg *signaling) []*sigSession { return sg.dropParty(gone) }) {
		r.notifySignal(s, s.other(gone), tunnel.CodePeerGone, "the other party's session ended")
	}
}

// takeSignals ends the sessions take returns, under sigMu, and counts
// them with outcome.
func (r *Relay) takeSignals(outcome string, take func(*signaling) []*sigSession) []*sigSession {
	r.sigMu.Lock()
	ended := take(r.sig)
	r.updateSignalGauges()
	r.sigMu.Unlock()
	for _, s := range ended {
		s.closeForwarder("the session ended: " + outcome)
	}
	r.m.sigOutcomes.WithLabelValues(outcome).Add(float64(len(ended)))
	return ended
}

// retireDirectPaths tells the agents with a direct path through g (for
// service, or every service when "") to start no new flows on it: g was
// drained, or reports the service down, or stopped serving it.
func (r *Relay) retireDirectPaths(g *gateway, service, code string) {
	r.retireDirectPathsWhere(g, service, nil, code)
}

// retireDirectPathsWhere is retireDirectPaths for the agents match takes
// (every agent when match is nil).
func (r *Relay) retireDirectPathsWhere(g *gateway, service string, match func(*agent) bool, code string) {
	r.sigMu.Lock()
	paths := r.sig.takePaths(g, service, match)
	r.updateSignalGauges()
	r.sigMu.Unlock()
	for _, dp := range paths {
		_ = dp.a.s.Post(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: code, SessionID: dp.agentID,
			Message: "start no new flows on the direct path to " + g.id.String()})
	}
}

// updateSignalGauges exports the state machine's size. Callers hold sigMu.
func (r *Relay) updateSignalGauges() {
	r.m.sigSessions.Set(float64(len(r.sig.byLeg)))
	r.m.directPaths.Set(float64(len(r.sig.paths)))
}

// validCandidates checks the addresses of an offer or answer: at most
// MaxCandidates, valid; a gateway's also need a port and a unicast
// address (an agent's may carry port 0: they are informational).
func validCandidates(cs []netip.AddrPort, gateway bool) bool {
	if len(cs) > tunnel.MaxCandidates {
		return false
	}
	for _, c := range cs {
		if !c.IsValid() || (gateway && !usableCandidate(c)) {
			return false
		}
	}
	return true
}

// usableCandidate reports whether an agent could dial c.
func usableCandidate(c netip.AddrPort) bool {
	a := c.Addr()
	return c.Port() != 0 && !a.IsUnspecified() && !a.IsMulticast()
}

// identity names a party for logs.
func (p party) identity() string {
	if p.a != nil {
		return p.a.id.String()
	}
	return p.g.id.String()
}

// mayWarn is the party's peer.mayWarn.
func (p party) mayWarn() bool {
	if p.a != nil {
		return p.a.mayWarn()
	}
	return p.g.mayWarn()
}

// session is the party's tunnel session.
func (p party) session() *tunnel.Session {
	if p.a != nil {
		return p.a.s
	}
	return p.g.s
}
