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
// gateway.
func (r *Relay) onOffer(a *agent, m *tunnel.Offer) {
	from := party{a: a}
	if checkLabel(m.Service) != nil || !validCandidates(m.Candidates, false) {
		r.rejectSignal(from, m.SessionID, sigBadMessage, m.Type)
		return
	}
	r.mu.RLock()
	svc := r.services[m.Service]
	var g *gateway
	reason := sigNotAuthorized
	if svc != nil && a.may(svc) {
		if g = r.chooseGatewayLocked(svc, nil, true); g == nil {
			reason = sigNoGateway
		}
	}
	r.mu.RUnlock()
	if g == nil {
		r.rejectSignal(from, m.SessionID, reason, m.Type)
		return
	}
	r.sigMu.Lock()
	s, reason := r.sig.offer(from, m.SessionID, g, svc.name, time.Now())
	r.updateSignalGauges()
	r.sigMu.Unlock()
	if s == nil {
		r.rejectSignal(from, m.SessionID, reason, m.Type)
		return
	}
	err := g.s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: s.legID, Service: s.service,
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
	r.sigMu.Unlock()
	if s == nil {
		r.rejectSignal(from, m.SessionID, reason, m.Type)
		return
	}
	err := s.a.s.Send(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: s.agentID, Service: s.service,
		Candidates: m.Candidates, Gateway: g.id.String()})
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
	r.m.sigOutcomes.WithLabelValues(outcome).Inc()
	_ = s.g.s.Send(&tunnel.Result{Type: tunnel.MessageResult, SessionID: s.legID, Success: m.Success, Address: m.Address})
	r.log.Info("direct path attempt", "agent", a.id.String(), "service", s.service, "gateway", s.g.id.String(),
		"success", m.Success, "address", m.Address.String())
}

// onSignalError handles an error from a party: one about a session of
// its own ends it at both; one from anybody else is rejected (and never
// answered: two peers must not trade errors forever).
func (r *Relay) onSignalError(from party, m *tunnel.ErrorMessage) {
	if m.SessionID == 0 {
		r.log.Warn("peer error", "identity", from.identity(), "code", m.Code, "message", m.Message)
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
	r.m.sigOutcomes.WithLabelValues(outcomeAborted).Inc()
	other := party{g: s.g}
	if from.g != nil {
		other = party{a: s.a}
	}
	r.notifySignal(s, other, m.Code, m.Message)
}

// rejectSignal logs, counts and (for id ≠ 0) answers a rejected message.
// A message about another party's session is answered as unknown: the
// sender learns nothing about sessions that are not its own.
func (r *Relay) rejectSignal(from party, id uint64, reason, typ string) {
	r.m.sigRejected.WithLabelValues(reason).Inc()
	r.log.Warn("signaling message rejected", "identity", from.identity(), "type", typ,
		"session_id", id, "reason", reason)
	if id == 0 {
		return
	}
	code := reason
	if reason == sigNotOwner {
		code = sigUnknown
	}
	_ = from.session().Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: code, SessionID: id})
}

// endSignal removes a session that cannot go on because the party gone
// did not take a message, and tells the other party.
func (r *Relay) endSignal(s *sigSession, outcome string, gone party, code, message string) {
	r.sigMu.Lock()
	if r.sig.byLeg[s.legID] == s {
		r.sig.remove(s)
	}
	r.updateSignalGauges()
	r.sigMu.Unlock()
	r.m.sigOutcomes.WithLabelValues(outcome).Inc()
	to := party{a: s.a}
	if gone.a != nil {
		to = party{g: s.g}
	}
	r.notifySignal(s, to, code, message)
}

// notifySignal sends one party of a session an error under its own id.
func (r *Relay) notifySignal(s *sigSession, to party, code, message string) {
	id := s.agentID
	if to.g != nil {
		id = s.legID
	}
	_ = to.session().Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: code, Message: message, SessionID: id})
}

// expireSignaling ends the sessions whose time is up and tells both
// parties.
func (r *Relay) expireSignaling(now time.Time) {
	r.sigMu.Lock()
	expired := r.sig.expire(now)
	r.updateSignalGauges()
	r.sigMu.Unlock()
	for _, s := range expired {
		r.m.sigOutcomes.WithLabelValues(outcomeExpired).Inc()
		r.log.Info("signaling session expired", "agent", s.a.id.String(), "gateway", s.g.id.String(), "service", s.service)
		r.notifySignal(s, party{a: s.a}, tunnel.CodeExpired, "not completed in time")
		r.notifySignal(s, party{g: s.g}, tunnel.CodeExpired, "not completed in time")
	}
}

// dropSignaling ends the sessions of a party whose session ended and tells
// the other parties.
func (r *Relay) dropSignaling(gone party) {
	r.sigMu.Lock()
	ended := r.sig.dropParty(gone)
	r.updateSignalGauges()
	r.sigMu.Unlock()
	for _, s := range ended {
		r.m.sigOutcomes.WithLabelValues(outcomePeerGone).Inc()
		to := party{a: s.a}
		if gone.a != nil {
			to = party{g: s.g}
		}
		r.notifySignal(s, to, tunnel.CodePeerGone, "the other party's session ended")
	}
}

// retireDirectPaths tells the agents with a direct path through g (for
// service, or every service when "") to start no new flows on it: g was
// drained, or reports the service down, or stopped serving it.
func (r *Relay) retireDirectPaths(g *gateway, service, code string) {
	r.sigMu.Lock()
	paths := r.sig.takePaths(g, service)
	r.updateSignalGauges()
	r.sigMu.Unlock()
	for _, dp := range paths {
		_ = dp.a.s.Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: code, SessionID: dp.agentID,
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

// session is the party's tunnel session.
func (p party) session() *tunnel.Session {
	if p.a != nil {
		return p.a.s
	}
	return p.g.s
}
