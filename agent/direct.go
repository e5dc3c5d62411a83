package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// The direct path (docs/direct-path.md). While the agent is connected to a
// relay, a new flow to a service without a direct path makes it offer one
// through the relay; the gateway the relay chose answers with where its
// [tunnel] listen is reachable, the agent dials it with the same mutual TLS
// (the gateway's certificate must carry the identity the relay vouches
// for) and, once connected, starts the service's new flows on that
// session, both directions. Flows keep the path they started on (router
// flow table), so a path coming or going breaks none of the others. A
// path whose pings go unanswered is dropped and the relay carries the
// service again; the agent offers again after a backoff.
const (
	// directDialTimeout bounds the QUIC handshake and hello with the
	// gateway; every candidate is dialled at once.
	directDialTimeout = time.Second
	// forwardDelay is how long the gateway's own candidates have before
	// the relay's forwarder is dialled too: a path straight to the gateway
	// is preferred, the forwarder costs the relay a little.
	forwardDelay = 250 * time.Millisecond
	// directPingEvery and directDeadAfter are the liveness check of a
	// direct path: a path without a pong for directDeadAfter, over
	// directDeadPings pings, is dead, which is noticed within
	// directDeadAfter + directPingEvery of its last answer.
	directPingEvery = 200 * time.Millisecond
	directDeadAfter = 600 * time.Millisecond
	// directDeadPings is how many pings in a row must go unanswered too.
	directDeadPings = 3
	// offerTimeout gives up an offer without answer (the relay expires its
	// session after 10 s and says so; this is for a lost relay session).
	offerTimeout = 12 * time.Second
	// pathLinger is how long a path no service starts flows on any more
	// is kept once packets of its flows stop passing, in either direction;
	// then it is closed.
	pathLinger = time.Minute
	// directTick is how often the manager checks timeouts.
	directTick = 250 * time.Millisecond
	// forgetAfter is how long after its backoff passed a service on the
	// relay, with no offer since, keeps its state: forgotten then, its next
	// offer comes at least forgetAfter after its last failure, as often as
	// the backoff's cap (tunnel.RedialMax) would allow anyway.
	forgetAfter = tunnel.RedialMax
)

// phase of a service's direct path.
type phase uint8

const (
	phaseIdle    phase = iota // on the relay; may offer once retryAt has passed
	phaseOffered              // offer sent, no answer yet
	phaseDialing              // answer taken, dialling the candidates
	phaseDirect               // new flows start on path
)

// svcDirect is the direct-path state of one service. Owned by the
// manager's goroutine.
type svcDirect struct {
	phase    phase
	id       uint64 // the signaling session of the offer (and of the path once direct)
	path     *path
	deadline time.Time // phaseOffered: when to give up
	retryAt  time.Time // phaseIdle: no offer before
	backoff  tunnel.Backoff
	// failure is why the last attempt failed, in a few words, while no
	// path came up since: Status shows it (ServiceStatus.DirectFailure);
	// the log has the details. The same refusal again (no_gateway on
	// every new flow to a service whose gateways have no [tunnel] listen)
	// is logged at debug, not each time at info.
	failure string
}

// direct is the agent's direct-path manager: one goroutine (run) owns its
// state and takes events from the relay's control stream, the dials and
// the paths; the router reads routes.
type direct struct {
	a      *Agent
	log    *slog.Logger
	ctx    context.Context
	wants  chan string // services with a new flow and no direct path (from the router)
	events chan any    // *tunnel.Answer, *tunnel.ErrorMessage, dialed, pathDown, servicesGone
	// netChanged: the host's network changed (networkChanged).
	netChanged chan struct{}
	routes     atomic.Pointer[map[string]*path]
	shown      atomic.Pointer[[]PathStatus] // the paths for Status
	// failures are the services' last failures for Status (showFailures).
	failures atomic.Pointer[map[string]string]
	wg       sync.WaitGroup // dials and the goroutines of paths
	// relayAddr is the relay's address as the agent's session reaches it
	// (invalid without a session), which decides the candidates the agent
	// dials (candidate.go). Tests replace it.
	relayAddr func() netip.Addr

	// Owned by run.
	svcs   map[string]*svcDirect
	paths  map[string]*path  // by gateway identity
	offers map[uint64]string // signaling session → service, while offered or dialling
}

// newDirect prepares the manager; run starts it.
func newDirect(a *Agent) *direct {
	d := &direct{
		a: a, log: a.log.With("part", "direct"), ctx: a.ctx,
		wants: make(chan string, 64), events: make(chan any, 64), netChanged: make(chan struct{}, 1),
		svcs: make(map[string]*svcDirect), paths: make(map[string]*path), offers: make(map[uint64]string),
	}
	d.relayAddr = func() netip.Addr {
		if s := a.sess.Load(); s != nil {
			return s.RemoteAddr().Addr()
		}
		return netip.Addr{}
	}
	d.routes.Store(&map[string]*path{})
	return d
}

// route returns the live direct path new flows of service start on, or
// nil for the relay. The router calls it; it allocates nothing.
func (d *direct) route(service string) *path {
	if p := (*d.routes.Load())[service]; p != nil && !p.dead.Load() {
		return p
	}
	return nil
}

// want asks for a direct path to service, without blocking the router.
func (d *direct) want(service string) {
	select {
	case d.wants <- service:
	default:
	}
}

// event hands the manager an event; false when the agent is closing.
func (d *direct) event(ev any) bool {
	select {
	case d.events <- ev:
		return true
	case <-d.ctx.Done():
		return false
	}
}

// dialed is the outcome of dialling an answer's candidates.
type dialed struct {
	service, gateway string
	id               uint64
	s                *tunnel.Session // nil on failure
	addr             netip.AddrPort
	forwarded        bool // addr is the relay's forwarder
	err              error
}

// pathDown reports a path that died.
type pathDown struct {
	p   *path
	why string
}

// servicesGone names the services a pushed directory no longer holds.
type servicesGone []string

// run is the manager's loop; it closes every path when ctx is done.
func (d *direct) run() {
	t := time.NewTicker(directTick)
	defer t.Stop()
	defer d.shutdown()
	for {
		select {
		case <-d.ctx.Done():
			return
		case svc := <-d.wants:
			d.offer(svc, time.Now())
		case ev := <-d.events:
			d.handle(ev, time.Now())
		case <-d.netChanged:
			d.onNetworkChanged(time.Now())
		case now := <-t.C:
			d.tick(now)
		}
	}
}

// shutdown closes the paths and waits for every goroutine, then closes
// the sessions of dials whose outcome run did not take: one that succeeded
// as the agent closed may be queued in events (event's send and ctx.Done
// were both ready), and nothing else would close it.
func (d *direct) shutdown() {
	for _, p := range d.paths {
		_ = p.s.Close("agent shutting down")
	}
	d.wg.Wait()
	for {
		select {
		case ev := <-d.events:
			if r, ok := ev.(dialed); ok && r.s != nil {
				_ = r.s.Close("agent shutting down")
			}
		default:
			return
		}
	}
}

// handle dispatches one event.
func (d *direct) handle(ev any, now time.Time) {
	switch e := ev.(type) {
	case *tunnel.Answer:
		d.onAnswer(e, now)
	case *tunnel.ErrorMessage:
		d.onError(e, now)
	case dialed:
		d.onDialed(e, now)
	case pathDown:
		d.onPathDown(e, now)
	case servicesGone:
		d.onGone(e, now)
	}
}

// state returns a service's state, creating it idle.
func (d *direct) state(service string) *svcDirect {
	st := d.svcs[service]
	if st == nil {
		st = &svcDirect{}
		d.svcs[service] = st
	}
	return st
}

// offer sends an offer for service when it is idle, its backoff has
// passed and the agent is connected to a relay (not to a gateway: that
// is a direct connection already).
func (d *direct) offer(service string, now time.Time) {
	st := d.state(service)
	if st.phase != phaseIdle || now.Before(st.retryAt) {
		return
	}
	s := d.a.sess.Load()
	if s == nil || s.Version() != tunnel.V2 || s.Peer().Role != tunnel.RoleRelay {
		return
	}
	id := tunnel.RandomID()
	err := s.Send(&tunnel.Offer{Type: tunnel.MessageOffer, SessionID: id, Service: service, Candidates: candidates(s)})
	if err != nil {
		d.fail(st, now, "the offer was not sent")
		return
	}
	st.phase, st.id, st.deadline = phaseOffered, id, now.Add(offerTimeout)
	d.offers[id] = service
	d.log.Debug("direct path offered", "service", service)
}

// candidates are the agent's addresses for an offer: the one the relay
// observed, then the host's (port 0: the agent dials from a new socket
// each time). The gateway does not dial them; they are informational.
func candidates(s *tunnel.Session) []netip.AddrPort {
	var out []netip.AddrPort
	if obs := s.Welcome().Observed; obs.IsValid() {
		out = append(out, obs)
	}
	for _, a := range tunnel.HostAddrs() {
		if len(out) < tunnel.MaxCandidates {
			out = append(out, netip.AddrPortFrom(a, 0))
		}
	}
	return out
}

// onAnswer dials the candidates of the gateway the relay chose that the
// agent may dial (candidateSkip), or uses the live path to that gateway if
// there is one; a service no longer in the directory takes neither.
func (d *direct) onAnswer(m *tunnel.Answer, now time.Time) {
	service, ok := d.offers[m.SessionID]
	st := d.svcs[service]
	if !ok || st.phase != phaseOffered || st.id != m.SessionID {
		d.log.Debug("answer to no offer of ours", "session_id", m.SessionID)
		return
	}
	if d.a.dir.Load().byName[service] == nil {
		// The service left the directory since it offered (onGone left
		// it alone, not yet on a path): it takes no path, not even a live
		// one to that gateway, which would carry its new flows when it
		// comes back; the relay chooses its gateway again then.
		d.log.Info("direct path not taken: the service left the directory since it offered", "service", service, "gateway", m.Gateway)
		delete(d.offers, m.SessionID)
		d.result(m.SessionID, false, netip.AddrPort{})
		st.phase, st.retryAt = phaseIdle, now
		return
	}
	if p := d.paths[m.Gateway]; p != nil && !p.dead.Load() {
		delete(d.offers, m.SessionID)
		d.use(service, st, p, m.SessionID)
		d.result(m.SessionID, true, p.addr)
		return
	}
	var forwarded netip.AddrPort // the relay's forwarder to the gateway, if it offers one
	if s := d.a.sess.Load(); s != nil && m.ForwardPort != 0 {
		forwarded = netip.AddrPortFrom(s.RemoteAddr().Addr(), m.ForwardPort)
	}
	cands := d.dialable(m, service)
	if m.Gateway == "" || len(cands) == 0 && !forwarded.IsValid() {
		delete(d.offers, m.SessionID)
		d.result(m.SessionID, false, netip.AddrPort{})
		d.fail(st, now, "no candidate of the gateway to dial")
		return
	}
	st.phase = phaseDialing
	d.dial(dialed{service: service, gateway: m.Gateway, id: m.SessionID}, cands, forwarded)
}

// onDialed takes a dial's outcome: a new path (or the existing one to the
// same gateway), or a failure and a backoff; the relay is told either way.
func (d *direct) onDialed(r dialed, now time.Time) {
	delete(d.offers, r.id)
	st := d.state(r.service)
	if r.s == nil && errors.Is(r.err, tunnel.ErrOwnIdentityChanged) {
		// The agent's own identity changed during the dial (its session
		// to the relay ends too): nothing failed, and the next offer,
		// from the new identity, need not wait out a backoff.
		d.log.Info("direct path not taken: the agent's own identity changed while it was dialled", "service", r.service, "gateway", r.gateway, "err", r.err)
		d.result(r.id, false, netip.AddrPort{})
		st.phase, st.path, st.retryAt = phaseIdle, nil, now
		return
	}
	if r.s == nil {
		d.log.Info("direct path failed; the relay carries the service", "service", r.service, "gateway", r.gateway, "err", r.err)
		d.result(r.id, false, netip.AddrPort{})
		d.fail(st, now, "no candidate of "+r.gateway+" answered")
		return
	}
	if d.a.dir.Load().byName[r.service] == nil {
		// The service left the directory while it was dialled (onGone
		// left it alone, not yet on a path): when it comes back, the
		// relay chooses its gateway again.
		d.log.Info("direct path not taken: the service left the directory while it was dialled", "service", r.service, "gateway", r.gateway)
		_ = r.s.Close("the service left the directory")
		d.result(r.id, false, netip.AddrPort{})
		st.phase, st.path, st.retryAt = phaseIdle, nil, now
		return
	}
	p := d.paths[r.gateway]
	if p == nil || p.dead.Load() {
		p = d.startPath(r.gateway, r.addr, r.forwarded, r.s, now)
		d.paths[r.gateway] = p
	} else {
		_ = r.s.Close("a path to this gateway exists")
	}
	d.use(r.service, st, p, r.id)
	d.result(r.id, true, p.addr)
}

// use makes p the path of service's new flows.
func (d *direct) use(service string, st *svcDirect, p *path, id uint64) {
	st.phase, st.path, st.id = phaseDirect, p, id
	st.backoff.Reset()
	st.failure = ""
	d.showFailures()
	p.services[service] = id
	p.serve(service)
	d.publish()
	d.a.m.directUp.Inc()
	d.log.Info("direct path up: new flows of the service go straight to the gateway",
		"service", service, "gateway", p.gateway, "address", p.addr.String(), "via", viaName(p.forwarded))
}

// onError handles the relay's error about a signaling session: an offer
// refused or expired (backoff), or a path to retire (the gateway was
// drained, reports the service down or no longer admits the agent's
// tenant: new flows go back to the relay, those on the path stay). Other
// codes naming a path's session (unknown_session after a relay restart, as
// an answer to the path's result) say nothing of the path: it stays.
func (d *direct) onError(m *tunnel.ErrorMessage, now time.Time) {
	if service, ok := d.offers[m.SessionID]; ok {
		if st := d.svcs[service]; st.phase == phaseOffered {
			delete(d.offers, m.SessionID)
			why, level := "refused: "+m.Code, slog.LevelInfo
			if why == st.failure {
				level = slog.LevelDebug
			}
			d.log.Log(d.ctx, level, "direct path refused", "service", service, "code", m.Code, "message", m.Message)
			d.fail(st, now, why)
		}
		return // dialling: the dial's outcome decides
	}
	switch m.Code {
	case tunnel.CodeDrained, tunnel.CodeServiceDown, tunnel.CodeNotAuthorized: // what the relay retires paths with
	default:
		return
	}
	for service, st := range d.svcs {
		if st.phase == phaseDirect && st.id == m.SessionID {
			d.log.Info("direct path retired for new flows", "service", service, "gateway", st.path.gateway, "code", m.Code)
			delete(st.path.services, service)
			st.phase, st.path = phaseIdle, nil
			st.retryAt = now.Add(st.backoff.Next())
			d.publish()
		}
	}
}

// onGone retires the direct paths of services the directory no longer
// holds, as the relay's error would: a relay that restarted since a path
// came up cannot send one, and a service that comes back (on another
// gateway, say) must start its new flows on the relay and offer again,
// not on the old path. The path's flows stay on it; the service may offer
// at once when it is back.
func (d *direct) onGone(gone servicesGone, now time.Time) {
	changed := false
	for _, service := range gone {
		st := d.svcs[service]
		if st == nil || st.phase != phaseDirect {
			continue
		}
		d.log.Info("direct path retired for new flows: the service left the directory", "service", service, "gateway", st.path.gateway)
		delete(st.path.services, service)
		st.phase, st.path, st.retryAt = phaseIdle, nil, now
		changed = true
	}
	if changed {
		d.publish()
	}
}

// onPathDown puts a dead path's services back on the relay.
func (d *direct) onPathDown(e pathDown, now time.Time) {
	p := e.p
	if d.paths[p.gateway] == p {
		delete(d.paths, p.gateway)
	}
	if len(p.services) > 0 {
		d.log.Warn("direct path lost; the relay carries its services again", "gateway", p.gateway, "why", e.why)
	}
	for service := range p.services {
		if st := d.svcs[service]; st != nil && st.path == p {
			st.phase, st.path = phaseIdle, nil
			st.retryAt = now.Add(st.backoff.Next())
		}
	}
	clear(p.services)
	d.publish()
	d.a.m.directDown.Inc()
}

// tick gives up offers without answer, closes paths that no service
// uses and no packet crossed, either way, for pathLinger, and forgets the
// services that hold nothing any more.
func (d *direct) tick(now time.Time) {
	for id, service := range d.offers {
		if st := d.svcs[service]; st.phase == phaseOffered && now.After(st.deadline) {
			delete(d.offers, id)
			d.fail(st, now, "no answer to the offer")
		}
	}
	for _, p := range d.paths {
		if used := p.used.Load(); used != p.usedSeen || len(p.services) > 0 {
			p.usedSeen, p.quietSince = used, now
		} else if now.Sub(p.quietSince) >= pathLinger {
			_ = p.s.Close("direct path no longer used")
		}
	}
	d.forget(now)
}

// forget deletes the state of services on the relay whose backoff passed
// forgetAfter ago (or that never offered: not connected to a relay), so
// that the table holds the services with a path, an attempt in progress or
// a recent failure, not every service the agent ever had traffic for.
func (d *direct) forget(now time.Time) {
	forgot := false
	for service, st := range d.svcs {
		if st.phase == phaseIdle && !now.Before(st.retryAt.Add(forgetAfter)) {
			delete(d.svcs, service)
			forgot = forgot || st.failure != ""
		}
	}
	if forgot {
		d.showFailures()
	}
}

// networkChanged tells the manager that the host's network changed; it
// never blocks (netstack.NetworkWake calls it).
func (d *direct) networkChanged() {
	select {
	case d.netChanged <- struct{}{}:
	default:
	}
}

// onNetworkChanged lets the services waiting out a backoff offer again at
// their next flow, the backoff from its start: what failed on the network
// before (no candidate answered: the gateway out of reach from there) may
// work on this one, and the offer carries the host's new addresses.
func (d *direct) onNetworkChanged(now time.Time) {
	n := 0
	for _, st := range d.svcs {
		if st.phase == phaseIdle && now.Before(st.retryAt) {
			st.retryAt = now
			st.backoff.Reset()
			n++
		}
	}
	if n > 0 {
		d.log.Debug("network changed: direct paths may be offered again at once", "services", n)
	}
}

// fail puts a service back to idle until its backoff has passed; why is
// the failure in a few words, for Status.
func (d *direct) fail(st *svcDirect, now time.Time, why string) {
	st.phase, st.path = phaseIdle, nil
	st.retryAt = now.Add(st.backoff.Next())
	st.failure = why
	d.a.m.directFailed.Inc()
	d.showFailures()
}

// publish gives the router the services' current paths.
func (d *direct) publish() {
	m := make(map[string]*path)
	for service, st := range d.svcs {
		if st.phase == phaseDirect {
			m[service] = st.path
		}
	}
	d.routes.Store(&m)
	forwarded := 0
	for _, p := range d.paths {
		if p.forwarded {
			forwarded++
		}
	}
	d.a.m.directPaths.Set(float64(len(d.paths)))
	d.a.m.forwardedPaths.Set(float64(forwarded))
	d.showPaths()
}

// result tells the relay how an attempt went.
func (d *direct) result(id uint64, ok bool, addr netip.AddrPort) {
	if s := d.a.sess.Load(); s != nil {
		_ = s.Send(&tunnel.Result{Type: tunnel.MessageResult, SessionID: id, Success: ok, Address: addr})
	}
}
