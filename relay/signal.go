package relay

import (
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// Limits of the signaling of the direct path (docs/direct-path.md).
const (
	// signalTTL is how long after its offer a session may take to
	// complete; then it expires and both parties are told.
	signalTTL = 10 * time.Second
	// agentSignalCap bounds an agent session's concurrent signaling
	// sessions; more offers are refused as busy.
	agentSignalCap = 16
	// gatewaySignalCap bounds a gateway session's: it answers for many
	// agents, each of which is bounded by agentSignalCap. The agents of
	// one tenant hold at most half of it (tenantShare): one identity alone
	// may have tunnel.MaxIdentitySessions × agentSignalCap, all of it.
	gatewaySignalCap = 256
	// maxLegDraws bounds the search for a free id of a gateway leg.
	maxLegDraws = 16
	// maxSignalText bounds the code and the message of a party's error
	// that the relay forwards to the other party: the sender's may fill a
	// control message, and the forwarded one, under the other party's id
	// (a leg id is longer than an agent's id may be), must still fit.
	maxSignalText = 256
)

// Reasons a signaling message is rejected (the labels of
// ztgate_relay_signaling_rejected_total).
const (
	sigUnknown       = "unknown_session" // no session of that id at all
	sigNotOwner      = "not_owner"       // a session of that id exists, bound to other parties
	sigWrongRole     = "wrong_role"      // an agent answering, a gateway offering or reporting a result
	sigWrongState    = "wrong_state"     // an answer twice, a result before the answer
	sigDuplicate     = "duplicate"       // an offer with an id the agent uses already
	sigBusy          = "busy"            // the agent's cap is reached, or every eligible gateway's (or the tenant's share of it)
	sigNotAuthorized = "not_authorized"  // the agent may not reach the service (or it does not exist)
	sigNoGateway     = "no_gateway"      // no eligible gateway of the service has direct candidates
	sigBadMessage    = "bad_message"     // id 0, bad candidates or service name
)

// sigReasons lists every rejection reason.
func sigReasons() []string {
	return []string{sigUnknown, sigNotOwner, sigWrongRole, sigWrongState, sigDuplicate, sigBusy,
		sigNotAuthorized, sigNoGateway, sigBadMessage}
}

// Outcomes of a signaling session (ztgate_relay_signaling_sessions_total).
const (
	outcomeSuccess  = "success"   // the agent reached the gateway directly
	outcomeFailed   = "failed"    // the agent could not
	outcomeAborted  = "aborted"   // a party sent an error
	outcomeExpired  = "expired"   // not completed within signalTTL
	outcomePeerGone = "peer_gone" // a party's session ended
)

// party is the sender of a signaling message: an agent or a gateway
// session.
type party struct {
	a *agent
	g *gateway
}

// sigPhase is where a signaling session stands.
type sigPhase uint8

const (
	sigOffered  sigPhase = iota // forwarded to the gateway, waiting for its answer
	sigAnswered                 // answer forwarded to the agent, waiting for its result
)

// sigSession is one signaling session, bound at offer time to the offering
// agent session, the gateway session the relay chose and the service.
// Agents name it by the id they chose (scoped to their session); the
// gateway by the relay's leg id.
type sigSession struct {
	a       *agent
	agentID uint64
	g       *gateway
	legID   uint64
	service string
	phase   sigPhase
	expires time.Time
	fwd     *forwarder // the forwarder offered with the answer, if any
}

// agentSig names a session as its agent does.
type agentSig struct {
	a  *agent
	id uint64
}

// directPath is a direct path an agent reported established: kept so
// that the agent can be told to stop starting flows on it when its
// gateway is drained or reports the service down.
type directPath struct {
	a       *agent
	agentID uint64
	g       *gateway
	service string
}

// signaling is the state machine of the signaling sessions. It does no
// I/O: callers send what its results tell them to. Not safe for concurrent
// use (the relay holds sigMu).
type signaling struct {
	ttl        time.Duration
	agentCap   int
	gatewayCap int
	newID      func() uint64 // draws a leg id; crypto/rand in production

	byAgent  map[agentSig]*sigSession
	byLeg    map[uint64]*sigSession
	idUsers  map[uint64]int // how many agents use an id: a third party's message is told from an unknown one
	perAgent map[*agent]int
	perGW    map[*gateway]int
	perShare map[tenantShare]int
	paths    map[agentSig]directPath
}

// tenantShare is the sessions of one tenant's agents at one gateway,
// bounded by half the gateway's cap, so that one tenant (or one of its
// identities) offering without end leaves the others room.
type tenantShare struct {
	g      *gateway
	tenant string
}

// shareOf returns the share s counts towards.
func shareOf(s *sigSession) tenantShare { return tenantShare{s.g, s.a.id.Tenant} }

// newSignaling returns an empty state machine with the production limits.
func newSignaling() *signaling {
	return &signaling{
		ttl: signalTTL, agentCap: agentSignalCap, gatewayCap: gatewaySignalCap, newID: tunnel.RandomID,
		byAgent: make(map[agentSig]*sigSession), byLeg: make(map[uint64]*sigSession),
		idUsers: make(map[uint64]int), perAgent: make(map[*agent]int), perGW: make(map[*gateway]int),
		perShare: make(map[tenantShare]int), paths: make(map[agentSig]directPath),
	}
}

// offer binds a new session of the agent's id to the first of gws (the
// gateways the relay found eligible, after checking that the agent may
// reach service, which needs the registry; in its order of preference)
// that has room for it: below its cap, and the agent's tenant below its
// share there. A gateway that left meanwhile is still taken: the offer
// posted to it fails, which ends the session as peer_gone. Busy when the
// agent is at its cap, or every one of gws is full.
func (sg *signaling) offer(from party, id uint64, gws []*gateway, service string, now time.Time) (*sigSession, string) {
	switch {
	case from.a == nil:
		return nil, sigWrongRole
	case id == 0:
		return nil, sigBadMessage
	case sg.byAgent[agentSig{from.a, id}] != nil:
		return nil, sigDuplicate
	case sg.perAgent[from.a] >= sg.agentCap:
		return nil, sigBusy
	}
	var g *gateway
	for _, x := range gws {
		if sg.perGW[x] < sg.gatewayCap && sg.perShare[tenantShare{x, from.a.id.Tenant}] < max(1, sg.gatewayCap/2) {
			g = x
			break
		}
	}
	if g == nil {
		return nil, sigBusy
	}
	leg := uint64(0)
	for range maxLegDraws {
		if n := sg.newID(); n != 0 && sg.byLeg[n] == nil {
			leg = n
			break
		}
	}
	if leg == 0 {
		return nil, sigBusy
	}
	s := &sigSession{a: from.a, agentID: id, g: g, legID: leg, service: service, phase: sigOffered, expires: now.Add(sg.ttl)}
	sg.byAgent[agentSig{from.a, id}] = s
	sg.byLeg[leg] = s
	sg.idUsers[id]++
	sg.perAgent[from.a]++
	sg.perGW[g]++
	sg.perShare[shareOf(s)]++
	return s, ""
}

// answer takes the bound gateway's answer to an offered session.
func (sg *signaling) answer(from party, leg uint64) (*sigSession, string) {
	s, reason := sg.inPhase(from, leg, true, sigOffered)
	if s != nil {
		s.phase = sigAnswered
	}
	return s, reason
}

// result takes the bound agent's result of an answered session, which
// ends it.
func (sg *signaling) result(from party, id uint64) (*sigSession, string) {
	s, reason := sg.inPhase(from, id, false, sigAnswered)
	if s != nil {
		sg.remove(s)
	}
	return s, reason
}

// abort ends a session at the error of one of its two parties.
func (sg *signaling) abort(from party, id uint64) (*sigSession, string) {
	s, reason := sg.find(from, id)
	if s != nil {
		sg.remove(s)
	}
	return s, reason
}

// inPhase finds the session a message of from names, checking that such a
// message comes from a gateway (fromGateway) or an agent, and that the
// session is in phase want.
func (sg *signaling) inPhase(from party, id uint64, fromGateway bool, want sigPhase) (*sigSession, string) {
	if (from.g != nil) != fromGateway {
		return nil, sigWrongRole
	}
	s, reason := sg.find(from, id)
	switch {
	case s == nil:
		return nil, reason
	case s.phase != want:
		return nil, sigWrongState
	}
	return s, ""
}

// find returns from's session of id: by the agent's id or the leg id.
func (sg *signaling) find(from party, id uint64) (*sigSession, string) {
	if from.a != nil {
		return sg.ofAgent(from.a, id)
	}
	return sg.ofGateway(from.g, id)
}

// ofAgent finds an agent's session by its id.
func (sg *signaling) ofAgent(a *agent, id uint64) (*sigSession, string) {
	if s := sg.byAgent[agentSig{a, id}]; s != nil {
		return s, ""
	}
	if sg.idUsers[id] > 0 {
		return nil, sigNotOwner
	}
	return nil, sigUnknown
}

// ofGateway finds a gateway's session by its leg id.
func (sg *signaling) ofGateway(g *gateway, leg uint64) (*sigSession, string) {
	s := sg.byLeg[leg]
	switch {
	case s == nil:
		return nil, sigUnknown
	case s.g != g:
		return nil, sigNotOwner
	}
	return s, ""
}

// remove forgets a session.
func (sg *signaling) remove(s *sigSession) {
	delete(sg.byAgent, agentSig{s.a, s.agentID})
	delete(sg.byLeg, s.legID)
	decrement(sg.idUsers, s.agentID)
	decrement(sg.perAgent, s.a)
	decrement(sg.perGW, s.g)
	decrement(sg.perShare, shareOf(s))
}

// decrement lowers a count and deletes it at zero, so that the maps do not
// keep ended parties.
func decrement[K comparable](m map[K]int, k K) {
	if m[k]--; m[k] <= 0 {
		delete(m, k)
	}
}

// expire ends and returns the sessions whose time is up at now.
func (sg *signaling) expire(now time.Time) []*sigSession {
	return sg.removeWhere(func(s *sigSession) bool { return !now.Before(s.expires) })
}

// dropParty ends and returns the sessions of an agent or gateway session
// that ended, and forgets its direct paths.
func (sg *signaling) dropParty(p party) []*sigSession {
	for k, dp := range sg.paths {
		if p.is(dp.a, dp.g) {
			delete(sg.paths, k)
		}
	}
	return sg.removeWhere(func(s *sigSession) bool { return p.is(s.a, s.g) })
}

// removeWhere ends and returns the sessions that match.
func (sg *signaling) removeWhere(match func(*sigSession) bool) []*sigSession {
	var out []*sigSession
	for _, s := range sg.byLeg {
		if match(s) {
			out = append(out, s)
		}
	}
	for _, s := range out {
		sg.remove(s)
	}
	return out
}

// is reports whether p is a (when p is an agent) or g (a gateway).
func (p party) is(a *agent, g *gateway) bool {
	return (p.a != nil && p.a == a) || (p.g != nil && p.g == g)
}

// other returns the party of s that p is not.
func (s *sigSession) other(p party) party {
	if p.a != nil {
		return party{g: s.g}
	}
	return party{a: s.a}
}

// idFor returns the id by which p knows s.
func (s *sigSession) idFor(p party) uint64 {
	if p.g != nil {
		return s.legID
	}
	return s.agentID
}

// addPath records the direct path of a successful session; it replaces an
// older one of the same agent and service.
func (sg *signaling) addPath(s *sigSession) {
	for k, dp := range sg.paths {
		if dp.a == s.a && dp.service == s.service {
			delete(sg.paths, k)
		}
	}
	sg.paths[agentSig{s.a, s.agentID}] = directPath{a: s.a, agentID: s.agentID, g: s.g, service: s.service}
}

// takePaths removes and returns the direct paths through g, for service
// or, when service is "", for every service; of the agents match takes
// (every agent when match is nil).
func (sg *signaling) takePaths(g *gateway, service string, match func(*agent) bool) []directPath {
	var out []directPath
	for k, dp := range sg.paths {
		if dp.g == g && (service == "" || dp.service == service) && (match == nil || match(dp.a)) {
			out = append(out, dp)
			delete(sg.paths, k)
		}
	}
	return out
}
