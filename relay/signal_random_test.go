package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/internal/testseed"
	"github.com/ztgate/ztgate/tunnel"
)

// The signaling test drives one relay with forward_ports through a few
// hundred random steps of the direct path's signaling: agents of three
// tenants and gateways serving overlapping services offer, answer, report
// and abort, from the right party and from every wrong one, with ids live,
// ended, another party's and made up, malformed and oversize; sessions
// expire and hit the caps, parties leave and reconnect mid-signaling,
// gateways are drained; forwarders are opened, used both ways, probed by
// strangers, left to idle out and run out of ports. After every step the
// relay must agree with a model: every message each party received,
// exactly (none unexpected: never another tenant's or agent's), the
// counters by reason, the state machine, /v1/sessions and /v1/forwarders.
// It logs its seed; ZTGATE_SIGNAL_SEED=<seed> replays its steps.
const (
	signalSeedEnv = "ZTGATE_SIGNAL_SEED"
	signalSteps   = 300
	// sigIdle is the forwarders' lock wait and idle time in the test;
	// sigMargin the time a step may take before the relay acts on it: a
	// forwarder last used less than sigIdle − sigMargin ago must be open,
	// one unused for sigIdle must close.
	sigIdle   = 2500 * time.Millisecond
	sigMargin = 1200 * time.Millisecond
	// Caps of the test's state machine, small so that steps reach them.
	sigAgentCap   = 4
	sigGatewayCap = 6
	sigPorts      = 4 // forward_ports
)

var (
	sigServices = []string{"web", "db", "wiki", "mail"}
	sigTenants  = []string{"acme", "globex", "initech"}
)

// sigParty is an agent or a gateway of the model.
type sigParty struct {
	label        string
	gateway      bool
	name, tenant string
	creds        *tunnel.Credentials
	c            *client // nil while disconnected
	// Gateways: their [tunnel] listen, and what their session registered.
	listener *net.UDPConn
	direct   bool              // registered candidates
	reg      map[string]sigDef // service → definition
}

type sigDef struct {
	tenants []string
	healthy bool
}

func (p *sigParty) identity() string {
	role := tunnel.RoleAgent
	if p.gateway {
		role = tunnel.RoleGateway
	}
	return p.tenant + "/" + role + "/" + p.name
}

// sigSess is a signaling session the relay holds.
type sigSess struct {
	agent    *sigParty
	ac       *client
	id       uint64
	gw       *sigParty
	gc       *client
	leg      uint64 // learnt from the offer the gateway got
	service  string
	answered bool
	fwd      *sigFwd
	// The relay took the offer between lo and hi.
	lo, hi time.Time
}

// sigPath is a direct path the relay remembers.
type sigPath struct {
	agent   *sigParty
	ac      *client
	id      uint64
	gw      *sigParty
	gc      *client
	service string
}

// sigFwd is a forwarder.
type sigFwd struct {
	port   uint16 // learnt from the answer
	agent  *sigParty
	gw     *sigParty
	target netip.AddrPort
	sock   *net.UDPConn // the agent's socket, once it sent
	open   bool
	ended  bool       // closed with its session, not for idleness
	rf     *forwarder // the relay's
	// It last carried a packet (or opened) between lo and hi.
	lo, hi time.Time
}

// certain reports whether f must be open at now.
func (f *sigFwd) certain(now time.Time) bool { return f.open && now.Sub(f.lo) < sigIdle-sigMargin }

// sigExp is a message a party must receive.
type sigExp struct {
	to    *client
	key   string
	learn func(m any)
}

type sigTest struct {
	t      *testing.T
	seed   uint64
	rng    *rand.Rand
	r      *Relay
	addr   string
	agents []*sigParty
	gws    []*sigParty
	order  map[string][]*sigParty // gateways of each service, in registration order
	drain  map[string]bool

	sessions []*sigSess
	paths    []*sigPath
	fwds     []*sigFwd
	ended    []uint64 // ids and legs of ended sessions
	exps     []*sigExp

	rejected map[string]float64
	outcomes map[string]float64
	refused  map[string]float64
	dropped  map[string]float64
	carried  [2]float64

	stranger *net.UDPConn
	step     int
	log      []string
	stats    map[string]int
}

// TestSignalRandom runs signalSteps random steps of the direct path's
// signaling and forwarders against one relay and checks it against the
// model after each.
func TestSignalRandom(t *testing.T) {
	seed := testseed.Get(t, signalSeedEnv)
	leaks := goleak.IgnoreCurrent()
	c := newSigTest(t, seed)
	ops := []struct {
		weight int
		name   string
		do     func() bool
	}{
		{4, "agent connects", c.agentConnect},
		{2, "agent leaves", c.agentLeave},
		{3, "gateway connects", c.gatewayConnect},
		{2, "gateway leaves", c.gatewayLeave},
		{1, "gateway reconnects", c.gatewayReconnect},
		{1, "gateway drained or undrained", c.gatewayDrain},
		{16, "offer", c.offer},
		{12, "answer", c.answer},
		{10, "result", c.result},
		{6, "error", c.abort},
		{4, "malformed or misdirected message", c.malformed},
		{3, "sessions expire", c.expire},
		{8, "forwarder used", c.forwarderUse},
		{1, "time passes", c.idle},
	}
	for c.step = 0; c.step < signalSteps; c.step++ {
		for {
			i := testseed.Weighted(c.rng, len(ops), func(i int) int { return ops[i].weight })
			c.logf("%s", ops[i].name)
			if ops[i].do() {
				break
			}
			c.log = c.log[:len(c.log)-1]
		}
		c.settle()
	}
	c.finish()
	goleak.VerifyNone(t, leaks)
}

func newSigTest(t *testing.T, seed uint64) *sigTest {
	p := newPKI(t)
	cfg := p.relayConfig(t.TempDir())
	cfg.ForwardPorts = freePorts(t, sigPorts)
	c := &sigTest{
		t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		order: map[string][]*sigParty{}, drain: map[string]bool{},
		rejected: map[string]float64{}, outcomes: map[string]float64{}, refused: map[string]float64{},
		dropped: map[string]float64{}, stats: map[string]int{},
	}
	c.r = startRelayWith(t, cfg, Options{DeadAfter: time.Minute})
	c.addr = c.r.Addr().String()
	// Sessions expire only when a step says so (expireSignaling with a
	// time the model chose); the janitor's real clock never reaches an
	// hour. Set under the locks their readers take.
	c.r.sigMu.Lock()
	c.r.sig.ttl, c.r.sig.agentCap, c.r.sig.gatewayCap = time.Hour, sigAgentCap, sigGatewayCap
	c.r.sigMu.Unlock()
	c.r.fwd.mu.Lock()
	c.r.fwd.lockWait, c.r.fwd.idle = sigIdle, sigIdle
	c.r.fwd.mu.Unlock()
	for i := range 3 {
		name := fmt.Sprintf("gw%d", i+1)
		c.gws = append(c.gws, &sigParty{label: name, gateway: true, name: name, tenant: "ops",
			creds: p.identity("ops", tunnel.RoleGateway, name), listener: udpAt(t, "127.0.0.1:0")})
	}
	for i, tenant := range []string{"acme", "acme", "globex", "initech"} {
		name := fmt.Sprintf("%s-%d", tenant, i)
		c.agents = append(c.agents, &sigParty{label: name, name: name, tenant: tenant,
			creds: p.identity(tenant, tunnel.RoleAgent, name)})
	}
	twin := *c.agents[0] // a second session of one identity
	twin.label += "'"
	c.agents = append(c.agents, &twin)
	c.stranger = udpAt(t, "127.0.0.2:0")
	for _, g := range c.gws {
		c.dialGateway(g)
	}
	for _, a := range c.agents[:3] {
		a.c = mustDial(t, c.addr, a.creds, agentHello(a.name))
	}
	c.settle()
	return c
}

func (c *sigTest) logf(format string, args ...any) {
	c.log = append(c.log, fmt.Sprintf("%3d: ", c.step)+fmt.Sprintf(format, args...))
}

func (c *sigTest) fatalf(format string, args ...any) {
	c.t.Helper()
	first := max(0, len(c.log)-40)
	c.t.Fatalf("step %d: %s\nseed %d (%s=%d replays it); last steps:\n%s", c.step, fmt.Sprintf(format, args...),
		c.seed, signalSeedEnv, c.seed, strings.Join(c.log[first:], "\n"))
}

func sigSID(cl *client) uint64 { return cl.s.Welcome().Session }

// --- parties ---

func (c *sigTest) agentConnect() bool {
	a := testseed.Pick(c.rng, c.agents, func(a *sigParty) bool { return a.c == nil })
	if a == nil {
		return false
	}
	c.logf("  %s connects", a.label)
	a.c = mustDial(c.t, c.addr, a.creds, agentHello(a.name))
	return true
}

func (c *sigTest) agentLeave() bool {
	a := testseed.Pick(c.rng, c.agents, func(a *sigParty) bool { return a.c != nil })
	if a == nil {
		return false
	}
	c.logf("  %s leaves with %d sessions", a.label, c.count(func(s *sigSess) bool { return s.ac == a.c }))
	a.c.close()
	c.partyGone(a)
	return true
}

// partyGone updates the model for the end of p's session: the other party
// of each of its signaling sessions hears peer_gone, its paths are
// forgotten.
func (c *sigTest) partyGone(p *sigParty) {
	gone := p.c
	for _, s := range slices.Clone(c.sessions) {
		if s.ac != gone && s.gc != gone {
			continue
		}
		if s.ac == gone {
			c.expectError(s.gc, s.leg, tunnel.CodePeerGone, "the other party's session ended")
		} else {
			c.expectError(s.ac, s.id, tunnel.CodePeerGone, "the other party's session ended")
		}
		c.endSession(s, outcomePeerGone)
	}
	c.paths = slices.DeleteFunc(c.paths, func(dp *sigPath) bool { return dp.ac == gone || dp.gc == gone })
	c.exps = slices.DeleteFunc(c.exps, func(e *sigExp) bool { return e.to == gone })
	if p.gateway {
		for name := range p.reg {
			c.order[name] = slices.DeleteFunc(c.order[name], func(x *sigParty) bool { return x == p })
		}
		p.reg = nil
	}
	p.c = nil
}

func (c *sigTest) gatewayConnect() bool {
	g := testseed.Pick(c.rng, c.gws, func(g *sigParty) bool { return g.c == nil })
	if g == nil {
		return false
	}
	c.logf("  %s connects", g.name)
	c.dialGateway(g)
	return true
}

func (c *sigTest) gatewayLeave() bool {
	g := testseed.Pick(c.rng, c.gws, func(g *sigParty) bool { return g.c != nil })
	if g == nil {
		return false
	}
	c.logf("  %s leaves with %d sessions", g.name, c.count(func(s *sigSess) bool { return s.gc == g.c }))
	g.c.close()
	c.partyGone(g)
	return true
}

// gatewayReconnect: a new session of a connected gateway replaces its old
// one, whose signaling sessions end as if it left.
func (c *sigTest) gatewayReconnect() bool {
	g := testseed.Pick(c.rng, c.gws, func(g *sigParty) bool { return g.c != nil })
	if g == nil {
		return false
	}
	c.logf("  %s reconnects", g.name)
	old := g.c
	c.partyGone(g)
	c.dialGateway(g)
	waitFor(c.t, "the old session closed", func() bool { return old.s.Err() != nil })
	return true
}

// dialGateway connects g and registers a random set of services: each
// with a random set of tenants, mostly healthy, candidates mostly.
func (c *sigTest) dialGateway(g *sigParty) {
	g.c = mustDial(c.t, c.addr, g.creds, gatewayHello(g.name))
	g.reg = map[string]sigDef{}
	var infos []tunnel.ServiceInfo
	for _, name := range sigServices {
		if c.rng.IntN(4) == 0 {
			continue
		}
		def := sigDef{healthy: c.rng.IntN(4) != 0}
		if c.rng.IntN(6) == 0 {
			def.tenants = []string{"*"}
		} else {
			for _, tn := range sigTenants {
				if c.rng.IntN(3) != 0 {
					def.tenants = append(def.tenants, tn)
				}
			}
			if len(def.tenants) == 0 {
				def.tenants = []string{sigTenants[c.rng.IntN(len(sigTenants))]}
			}
		}
		g.reg[name] = def
		c.order[name] = append(c.order[name], g)
		info := svc(name, def.tenants...)
		info.Healthy = def.healthy
		infos = append(infos, info)
	}
	g.direct = c.rng.IntN(5) != 0
	var cands []netip.AddrPort
	if g.direct {
		cands = c.candidatesOf(g)
	}
	c.logf("  %s registers %v, candidates %v", g.name, g.reg, cands)
	if infos == nil {
		infos = []tunnel.ServiceInfo{}
	}
	g.c.registerDirect(cands, infos...)
}

// candidatesOf is where g's listener is: a documentation address with its
// port (the forwarder sends to the address of g's relay session).
func (c *sigTest) candidatesOf(g *sigParty) []netip.AddrPort {
	return []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), addrOf(g.listener).Port())}
}

// gatewayDrain drains or undrains a gateway's name through the API:
// its direct paths are retired, and offers no longer go to it.
func (c *sigTest) gatewayDrain() bool {
	g := testseed.Pick(c.rng, c.gws, func(g *sigParty) bool { return g.c != nil || c.drain[g.name] })
	if g == nil {
		return false
	}
	drained := !c.drain[g.name]
	c.logf("  %s drained %t", g.name, drained)
	verb := map[bool]string{true: "drain", false: "undrain"}[drained]
	rec := httptest.NewRecorder()
	c.r.v1Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/gateways/"+g.name+"/"+verb, nil))
	if rec.Code != http.StatusOK {
		c.fatalf("%s %s: status %d", verb, g.name, rec.Code)
	}
	c.drain[g.name] = drained
	if drained && g.c != nil {
		for _, dp := range slices.Clone(c.paths) {
			if dp.gc == g.c {
				c.retire(dp, tunnel.CodeDrained)
			}
		}
	}
	return true
}

// retire expects the agent of dp to be told to start no new flows on it.
func (c *sigTest) retire(dp *sigPath, code string) {
	c.expectError(dp.ac, dp.id, code, "start no new flows on the direct path to "+dp.gw.identity())
	c.paths = slices.DeleteFunc(c.paths, func(x *sigPath) bool { return x == dp })
	c.stats["paths retired "+code]++
}

// --- the model's view of the relay's rules ---

// eligible is the gateways the relay may bind an offer of a's for service
// to, in its order of preference: those serving it that admit a's tenant,
// are not drained and have candidates; healthy ones first; the first
// registered among equals (the test sends no flows, so every gateway has
// as few as the others). The offer goes to the first with room. The
// reason is set when there is none.
func (c *sigTest) eligible(a *sigParty, service string) ([]*sigParty, string) {
	var admitted bool
	var healthy, down []*sigParty
	for _, g := range c.order[service] {
		def := g.reg[service]
		if !slices.Contains(def.tenants, a.tenant) && !slices.Contains(def.tenants, "*") {
			continue
		}
		admitted = true
		switch {
		case c.drain[g.name] || !g.direct:
		case def.healthy:
			healthy = append(healthy, g)
		default:
			down = append(down, g)
		}
	}
	switch {
	case !admitted:
		return nil, sigNotAuthorized
	case len(healthy)+len(down) == 0:
		return nil, sigNoGateway
	}
	return append(healthy, down...), ""
}

// ofAgent finds the session an agent's message names, as the relay does.
func (c *sigTest) ofAgent(ac *client, id uint64) (*sigSess, string) {
	for _, s := range c.sessions {
		if s.ac == ac && s.id == id {
			return s, ""
		}
	}
	for _, s := range c.sessions {
		if s.id == id {
			return nil, sigNotOwner
		}
	}
	return nil, sigUnknown
}

// ofGateway finds the session a gateway's message names.
func (c *sigTest) ofGateway(gc *client, leg uint64) (*sigSess, string) {
	for _, s := range c.sessions {
		if s.leg == leg {
			if s.gc != gc {
				return nil, sigNotOwner
			}
			return s, ""
		}
	}
	return nil, sigUnknown
}

// reject counts a rejection and expects its answer (none for id 0).
func (c *sigTest) reject(to *client, id uint64, reason string) {
	c.rejected[reason]++
	c.stats["rejected "+reason]++
	if id == 0 {
		return
	}
	code, message := reason, ""
	switch reason {
	case sigNotOwner:
		code = sigUnknown
	case sigNoGateway:
		message = noGatewayMessage
	}
	c.expectError(to, id, code, message)
}

func (c *sigTest) expectError(to *client, id uint64, code, message string) {
	c.expect(to, errorKey(id, code, message), nil)
}

func (c *sigTest) expect(to *client, key string, learn func(any)) {
	c.exps = append(c.exps, &sigExp{to: to, key: key, learn: learn})
}

// endSession removes s from the model, counted with outcome; its
// forwarder closes unless the attempt succeeded.
func (c *sigTest) endSession(s *sigSess, outcome string) {
	c.sessions = slices.DeleteFunc(c.sessions, func(x *sigSess) bool { return x == s })
	c.ended = append(c.ended, s.id, s.leg)
	c.outcomes[outcome]++
	c.stats["outcome "+outcome]++
	if s.fwd != nil && outcome != outcomeSuccess && s.fwd.open {
		s.fwd.open, s.fwd.ended = false, true
	}
}

func (c *sigTest) count(match func(*sigSess) bool) int {
	n := 0
	for _, s := range c.sessions {
		if match(s) {
			n++
		}
	}
	return n
}

// --- ids the steps use ---

func (c *sigTest) freshID() uint64 { return 1 + c.rng.Uint64N(1<<53-1) }

// agentID is an id an agent names a session by: one of its own, another
// agent's, an ended one, 0 or a made-up one.
func (c *sigTest) agentID(a *sigParty) uint64 {
	return c.pickID(10, func(s *sigSess) (uint64, bool) { return s.id, s.ac == a.c })
}

// legID is an id a gateway names a session by.
func (c *sigTest) legID(g *sigParty) uint64 {
	return c.pickID(11, func(s *sigSess) (uint64, bool) { return s.leg, s.gc == g.c })
}

// pickID draws a party's id of a session: in ownShare of 20 draws one of
// its own sessions' (id says a session's id for the party and whether it
// is the party's), else another party's, an ended one, 0 or a made-up one.
func (c *sigTest) pickID(ownShare int, id func(*sigSess) (uint64, bool)) uint64 {
	var own, others []uint64
	for _, s := range c.sessions {
		if v, mine := id(s); mine {
			own = append(own, v)
		} else {
			others = append(others, v)
		}
	}
	switch n := c.rng.IntN(20); {
	case n < ownShare && len(own) > 0:
		return own[c.rng.IntN(len(own))]
	case n < 14 && len(others) > 0:
		return others[c.rng.IntN(len(others))]
	case n < 17 && len(c.ended) > 0:
		return c.ended[c.rng.IntN(len(c.ended))]
	case n < 18:
		return 0
	}
	return c.freshID()
}

func (c *sigTest) anyParty() *sigParty {
	return testseed.Pick(c.rng, append(slices.Clone(c.agents), c.gws...), func(p *sigParty) bool { return p.c != nil })
}

func (c *sigTest) send(p *sigParty, msg any) {
	if err := p.c.s.Send(msg); err != nil {
		c.fatalf("%s sends: %v", p.label, err)
	}
}

// --- signaling steps ---

func (c *sigTest) offer() bool {
	a := testseed.Pick(c.rng, c.agents, func(a *sigParty) bool { return a.c != nil })
	if a == nil {
		return false
	}
	service := sigServices[c.rng.IntN(len(sigServices))]
	switch c.rng.IntN(12) {
	case 0:
		service = "nope" // no such service
	case 1:
		service = []string{"Web", "-x", "", strings.Repeat("a", 64), strings.Repeat("b", 200_000)}[c.rng.IntN(5)]
	}
	id := c.freshID()
	switch n := c.rng.IntN(10); {
	case n < 3:
		id = c.agentID(a)
	case n < 5: // the relay takes any id from an agent, short ones too
		id = 1 + c.rng.Uint64N(99)
	}
	var cands []netip.AddrPort
	for range c.rng.IntN(3) {
		cands = append(cands, netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(c.rng.IntN(250))}), uint16(c.rng.IntN(3)*20000)))
	}
	badCands := false
	switch c.rng.IntN(15) {
	case 0:
		cands, badCands = make([]netip.AddrPort, tunnel.MaxCandidates+1), true
		for i := range cands {
			cands[i] = netip.MustParseAddrPort("203.0.113.9:1")
		}
	case 1:
		cands, badCands = append(cands, netip.AddrPort{}), true
	}
	c.logf("  %s offers %d for %.20q, candidates %v", a.label, id, service, cands)

	s := &sigSess{agent: a, ac: a.c, id: id, service: service, lo: time.Now()}
	gws, reason := c.eligible(a, service)
	roomy := func(g *sigParty) bool {
		return c.count(func(x *sigSess) bool { return x.gc == g.c }) < sigGatewayCap &&
			c.count(func(x *sigSess) bool { return x.gc == g.c && x.agent.tenant == a.tenant }) < sigGatewayCap/2
	}
	var g *sigParty
	if i := slices.IndexFunc(gws, roomy); i >= 0 {
		g = gws[i]
	}
	switch {
	case checkLabel(service) != nil || badCands:
		reason = sigBadMessage
	case reason != "":
	case id == 0:
		reason = sigBadMessage
	case c.count(func(x *sigSess) bool { return x.ac == a.c && x.id == id }) > 0:
		reason = sigDuplicate
	case c.count(func(x *sigSess) bool { return x.ac == a.c }) >= sigAgentCap, g == nil:
		reason = sigBusy
	}
	c.send(a, &tunnel.Offer{Type: tunnel.MessageOffer, SessionID: id, Service: service, Candidates: cands})
	if reason != "" {
		c.reject(a.c, id, reason)
		return true
	}
	s.gw, s.gc = g, g.c
	c.sessions = append(c.sessions, s)
	c.expect(g.c, offerKey(service, a.identity(), cands), func(m any) {
		o := m.(*tunnel.Offer)
		if o.SessionID == 0 || o.SessionID == id {
			c.fatalf("the gateway got the offer under id %d (the agent's is %d)", o.SessionID, id)
		}
		for _, x := range c.sessions {
			if x.leg == o.SessionID {
				c.fatalf("leg id %d drawn twice", x.leg)
			}
		}
		s.leg, s.hi = o.SessionID, time.Now()
	})
	c.stats["offers bound"]++
	return true
}

func (c *sigTest) answer() bool {
	from := c.anyParty()
	var leg uint64
	if s := testseed.Pick(c.rng, c.sessions, func(s *sigSess) bool { return !s.answered }); s != nil && c.rng.IntN(3) != 0 {
		from, leg = s.gw, s.leg
	}
	if from == nil {
		return false
	}
	if !from.gateway {
		if c.rng.IntN(3) != 0 {
			return false
		}
		id := c.agentID(from)
		c.logf("  %s answers %d", from.label, id)
		c.send(from, &tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: id})
		c.reject(from.c, id, sigWrongRole)
		return true
	}
	c.reap()
	if leg == 0 {
		leg = c.legID(from)
	}
	cands := c.candidatesOf(from)
	bad := false
	switch c.rng.IntN(10) {
	case 0:
		cands = nil
	case 1:
		cands, bad = []netip.AddrPort{[]netip.AddrPort{
			netip.MustParseAddrPort("192.0.2.1:0"), netip.MustParseAddrPort("0.0.0.0:4434"),
			netip.MustParseAddrPort("[ff02::1]:4434"), {}}[c.rng.IntN(4)]}, true
	}
	c.logf("  %s answers %d with %v", from.label, leg, cands)
	c.send(from, &tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: leg, Candidates: cands,
		Gateway: "acme/gateway/liar", ForwardPort: 9})
	s, reason := c.ofGateway(from.c, leg)
	switch {
	case bad:
		reason = sigBadMessage
	case s != nil && s.answered:
		reason = sigWrongState
	}
	if reason != "" {
		c.reject(from.c, leg, reason)
		return true
	}
	s.answered = true
	var f *sigFwd
	switch {
	case len(cands) == 0:
		c.refused[fwdRefuseTarget]++
	case c.openForwarders() == sigPorts:
		c.refused[fwdRefuseNoPort]++
		c.stats["forward ports exhausted"]++
	default:
		f = &sigFwd{agent: s.agent, gw: from, target: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), cands[0].Port()),
			open: true, lo: time.Now()}
		s.fwd = f
		c.fwds = append(c.fwds, f)
	}
	c.expect(s.ac, answerKey(s.id, s.service, from.identity(), cands, f != nil), func(m any) {
		if f == nil {
			return
		}
		p := m.(*tunnel.Answer).ForwardPort
		for _, x := range c.fwds {
			if x.open && x.port == p {
				c.fatalf("forward port %d handed out twice", p)
			}
		}
		f.port, f.hi = p, time.Now()
		c.r.fwd.mu.Lock()
		f.rf = c.r.fwd.byPort[p]
		c.r.fwd.mu.Unlock()
		if f.rf == nil || f.rf.agent != f.agent.identity() {
			c.fatalf("the answer names forwarder %d, which is not %s's", p, f.agent.label)
		}
	})
	return true
}

// openForwarders counts the forwarders open in the model; reap has made
// it certain.
func (c *sigTest) openForwarders() int {
	n := 0
	for _, f := range c.fwds {
		if f.open {
			n++
		}
	}
	return n
}

func (c *sigTest) result() bool {
	from := c.anyParty()
	var id uint64
	if s := testseed.Pick(c.rng, c.sessions, func(s *sigSess) bool { return s.answered }); s != nil && c.rng.IntN(3) != 0 {
		from, id = s.agent, s.id
	}
	if from == nil {
		return false
	}
	success := c.rng.IntN(2) == 0
	addr := netip.AddrPort{}
	if success {
		addr = netip.MustParseAddrPort("192.0.2.1:4434")
	}
	if from.gateway {
		if c.rng.IntN(3) != 0 {
			return false
		}
		leg := c.legID(from)
		c.logf("  %s reports a result for %d", from.label, leg)
		c.send(from, &tunnel.Result{Type: tunnel.MessageResult, SessionID: leg, Success: success})
		c.reject(from.c, leg, sigWrongRole)
		return true
	}
	if id == 0 {
		id = c.agentID(from)
	}
	c.logf("  %s reports %d: success %t", from.label, id, success)
	c.send(from, &tunnel.Result{Type: tunnel.MessageResult, SessionID: id, Success: success, Address: addr})
	s, reason := c.ofAgent(from.c, id)
	if s != nil && !s.answered {
		s, reason = nil, sigWrongState
	}
	if s == nil {
		c.reject(from.c, id, reason)
		return true
	}
	c.expect(s.gc, resultKey(s.leg, success, addr), nil)
	if !success {
		c.endSession(s, outcomeFailed)
		return true
	}
	c.endSession(s, outcomeSuccess)
	c.paths = slices.DeleteFunc(c.paths, func(dp *sigPath) bool { return dp.ac == s.ac && dp.service == s.service })
	dp := &sigPath{agent: s.agent, ac: s.ac, id: s.id, gw: s.gw, gc: s.gc, service: s.service}
	c.paths = append(c.paths, dp)
	switch {
	case c.drain[s.gw.name]:
		c.retire(dp, tunnel.CodeDrained)
	case !s.gw.reg[s.service].healthy:
		c.retire(dp, tunnel.CodeServiceDown)
	}
	return true
}

// abort: a party sends an error about a session. Its own ends at both;
// anybody else's is counted and never answered.
func (c *sigTest) abort() bool {
	from := c.anyParty()
	var id uint64
	if s := testseed.Pick(c.rng, c.sessions, func(*sigSess) bool { return true }); s != nil && c.rng.IntN(2) == 0 {
		from, id = s.agent, s.id
		if c.rng.IntN(2) == 0 {
			from, id = s.gw, s.leg
		}
	}
	if from == nil {
		return false
	}
	switch {
	case id != 0:
	case from.gateway:
		id = c.legID(from)
	default:
		id = c.agentID(from)
	}
	code := []string{tunnel.CodeNoListener, "gave_up", tunnel.CodeExpired}[c.rng.IntN(3)]
	e := &tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: code, Message: fmt.Sprintf("by %s at step %d", from.label, c.step), SessionID: id}
	if c.rng.IntN(6) == 0 { // as large as a message may be
		e.Message = ""
		b, _ := json.Marshal(e)
		e.Message = strings.Repeat("x", tunnel.MaxMessageSize-len(b)-len(`,"message":""`))
	}
	c.logf("  %s sends error %q (%d bytes) about %d", from.label, code, len(e.Message), id)
	c.send(from, e)
	if id == 0 {
		return true
	}
	var s *sigSess
	var reason string
	if from.gateway {
		s, reason = c.ofGateway(from.c, id)
	} else {
		s, reason = c.ofAgent(from.c, id)
	}
	if s == nil {
		c.reject(from.c, 0, reason)
		return true
	}
	// Forwarded with its code and message cut to maxSignalText.
	if from.gateway {
		c.expectError(s.ac, s.id, code, clip(e.Message, maxSignalText))
	} else {
		c.expectError(s.gc, s.leg, code, clip(e.Message, maxSignalText))
	}
	c.endSession(s, outcomeAborted)
	return true
}

// malformed sends what the relay must answer without a session id: an
// unknown or reserved type, a type the relay does not take from that
// peer, undecodable fields; or a message of the other role.
func (c *sigTest) malformed() bool {
	from := c.anyParty()
	if from == nil {
		return false
	}
	raw := []struct {
		body string
		code string // "": none
	}{
		{`{"type":"start","session_id":5}`, tunnel.CodeUnknownType},
		{`{"type":"` + strings.Repeat("z", tunnel.MaxMessageSize-len(`{"type":""}`)) + `"}`, tunnel.CodeUnknownType},
		{`{"type":"tag_open","tag":1}`, tunnel.CodeUnknownType},
		{`{"type":"offer","session_id":"seven","service":"web"}`, tunnel.CodeBadMessage},
		{`{"type":"answer","session_id":1,"candidates":[1]}`, tunnel.CodeBadMessage},
		{`{"type":"result","session_id":-1}`, tunnel.CodeBadMessage},
		{`{"type":"error","session_id":{}}`, tunnel.CodeBadMessage},
		{`{"type":"pong","seq":1}`, ""},
	}
	pong := len(raw) - 1
	if !from.gateway {
		raw[pong].code = tunnel.CodeUnknownType // the relay pings gateways only
	}
	if c.rng.IntN(3) == 0 {
		id := c.freshID()
		if from.gateway {
			c.logf("  %s offers %d", from.label, id)
			c.send(from, &tunnel.Offer{Type: tunnel.MessageOffer, SessionID: id, Service: "web"})
		} else {
			c.logf("  %s answers %d", from.label, id)
			c.send(from, &tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: id})
		}
		c.reject(from.c, id, sigWrongRole)
		return true
	}
	m := raw[c.rng.IntN(len(raw))]
	c.logf("  %s sends %.60s", from.label, m.body)
	c.send(from, json.RawMessage(m.body))
	if m.code != "" {
		c.expect(from.c, errorKey(0, m.code, ""), nil)
	}
	c.stats["malformed"]++
	return true
}

// expire ends the sessions offered up to a random one: the relay's clock
// is set to that one's expiry.
func (c *sigTest) expire() bool {
	if len(c.sessions) == 0 {
		return false
	}
	k := c.rng.IntN(len(c.sessions))
	last := c.sessions[k]
	c.logf("  the first %d of %d sessions expire", k+1, len(c.sessions))
	c.r.expireSignaling(last.hi.Add(time.Hour))
	for _, s := range slices.Clone(c.sessions[:k+1]) {
		c.expectError(s.ac, s.id, tunnel.CodeExpired, "not completed in time")
		c.expectError(s.gc, s.leg, tunnel.CodeExpired, "not completed in time")
		c.endSession(s, outcomeExpired)
	}
	return true
}

// --- forwarders ---

// reap waits out the forwarders that may be closing for idleness, so
// that the model knows which are open.
func (c *sigTest) reap() {
	now := time.Now()
	var until time.Time
	for _, f := range c.fwds {
		if f.open && !f.certain(now) {
			until = maxTime(until, f.hi.Add(sigIdle))
			f.open = false
			c.stats["forwarders idled out"]++
		}
	}
	if d := time.Until(until); d > 0 {
		time.Sleep(d)
	}
	if !until.IsZero() {
		c.settle() // they closed
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// idle waits for every forwarder to idle out.
func (c *sigTest) idle() bool {
	if c.openForwarders() == 0 {
		return false
	}
	var until time.Time
	for _, f := range c.fwds {
		if f.open {
			until = maxTime(until, f.lo.Add(sigIdle-sigMargin))
		}
	}
	c.logf("  %v pass", time.Until(until).Round(time.Millisecond))
	time.Sleep(time.Until(until))
	c.reap()
	return true
}

func (c *sigTest) forwarderUse() bool {
	c.reap()
	f := testseed.Pick(c.rng, c.fwds, func(f *sigFwd) bool { return f.open })
	if f == nil {
		return false
	}
	fwdAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), f.port)
	n := c.rng.IntN(10)
	if f.sock == nil && n < 3 {
		n = 6 // a stranger before the agent: it must not take the forwarder
	}
	switch {
	case n < 6: // the agent's round trip
		if f.sock == nil {
			f.sock = udpAt(c.t, "127.0.0.1:0")
		}
		payload := fmt.Sprintf("up %d", c.step)
		c.logf("  %s sends through forwarder %d to %s", f.agent.label, f.port, f.gw.name)
		f.lo = time.Now()
		send(c.t, f.sock, fwdAddr, false, []byte(payload))
		got, from := recv(c.t, f.gw.listener, 1)
		if string(got[0]) != payload {
			c.fatalf("%s's listener got %q, want %q", f.gw.name, got[0], payload)
		}
		send(c.t, f.gw.listener, from, false, []byte("down "+payload))
		got, src := recv(c.t, f.sock, 1)
		if string(got[0]) != "down "+payload || src != fwdAddr {
			c.fatalf("%s got %q from %v through forwarder %d", f.agent.label, got[0], src, f.port)
		}
		f.hi = time.Now()
		c.carried[fwdUp]++
		c.carried[fwdDown]++
		c.stats["forwarded round trips"]++
	case n < 8: // a stranger, or another socket of the agent's address once it is locked
		sock := c.stranger
		who := "a stranger"
		if f.sock != nil && n == 7 {
			sock, who = udpAt(c.t, "127.0.0.1:0"), "another socket"
		}
		c.logf("  %s sends to forwarder %d", who, f.port)
		send(c.t, sock, fwdAddr, false, []byte("intruder"))
		c.dropped[fwdDropSource]++
	default: // the gateway's listener before the agent sent
		if f.sock != nil {
			return false
		}
		c.r.fwd.mu.Lock()
		rf := c.r.fwd.byPort[f.port]
		c.r.fwd.mu.Unlock()
		if rf == nil {
			c.fatalf("forwarder %d is not open", f.port)
		}
		c.logf("  %s sends to forwarder %d before its agent", f.gw.name, f.port)
		send(c.t, f.gw.listener, addrOf(rf.gconn), false, []byte("early"))
		c.dropped[fwdDropNoAgent]++
	}
	c.quietSockets()
	return true
}

// quietSockets checks that no socket of the test received what it should
// not: everything expected was read.
func (c *sigTest) quietSockets() {
	time.Sleep(10 * time.Millisecond)
	socks := map[*net.UDPConn]string{c.stranger: "the stranger"}
	for _, g := range c.gws {
		socks[g.listener] = g.name + "'s listener"
	}
	for _, f := range c.fwds {
		if f.sock != nil {
			socks[f.sock] = fmt.Sprintf("%s's socket of forwarder %d", f.agent.label, f.port)
		}
	}
	buf := make([]byte, 2048)
	for sock, name := range socks {
		_ = sock.SetReadDeadline(time.Now().Add(time.Millisecond))
		if n, src, err := sock.ReadFromUDPAddrPort(buf); err == nil {
			c.fatalf("%s got %q from %v", name, buf[:n], src)
		}
	}
}

// --- checks ---

// strictForwarders: the relay closes a session's forwarder before it
// sends the message that ends the session, so once those messages came,
// a forwarder that ended with its session is closed, and not by idling
// out, which settle's patience would otherwise wait for.
func (c *sigTest) strictForwarders() {
	now := time.Now()
	c.r.fwd.mu.Lock()
	defer c.r.fwd.mu.Unlock()
	for _, f := range c.fwds {
		if f.ended && f.rf != nil && c.r.fwd.byPort[f.port] == f.rf && now.Sub(f.lo) < sigIdle-sigMargin {
			c.fatalf("forwarder %d of %s is open after its session ended", f.port, f.agent.label)
		}
	}
}

func offerKey(service, agent string, cands []netip.AddrPort) string {
	return fmt.Sprintf("offer %s agent=%s cands=%v", service, agent, cands)
}

func answerKey(id uint64, service, gw string, cands []netip.AddrPort, fwd bool) string {
	return fmt.Sprintf("answer %d %s gateway=%s cands=%v forwarder=%t", id, service, gw, cands, fwd)
}

func resultKey(leg uint64, success bool, addr netip.AddrPort) string {
	return fmt.Sprintf("result %d success=%t addr=%v", leg, success, addr)
}

func errorKey(id uint64, code, message string) string {
	if id == 0 {
		return "error code=" + code // the relay's own words
	}
	return fmt.Sprintf("error %d code=%s message=%s", id, code, message)
}

// keyOf is a received message's key; false for messages other than
// signaling (directories, assigns, pongs).
func keyOf(m any) (string, bool) {
	switch m := m.(type) {
	case *tunnel.Offer:
		return offerKey(m.Service, m.Agent, m.Candidates), true
	case *tunnel.Answer:
		return answerKey(m.SessionID, m.Service, m.Gateway, m.Candidates, m.ForwardPort != 0), true
	case *tunnel.Result:
		return resultKey(m.SessionID, m.Success, m.Address), true
	case *tunnel.ErrorMessage:
		return errorKey(m.SessionID, m.Code, m.Message), true
	}
	return "", false
}

// pump reads what every connected party received and matches it with the
// expected messages; anything else fails the test.
func (c *sigTest) pump() {
	for _, p := range append(slices.Clone(c.agents), c.gws...) {
		if p.c == nil {
			continue
		}
		for more := true; more; {
			select {
			case m := <-p.c.msgs:
				key, ok := keyOf(m)
				if !ok {
					continue
				}
				i := slices.IndexFunc(c.exps, func(e *sigExp) bool { return e.to == p.c && e.key == key })
				if i < 0 {
					c.fatalf("%s got an unexpected %.300s", p.label, key)
				}
				e := c.exps[i]
				c.exps = slices.Delete(c.exps, i, i+1)
				if e.learn != nil {
					e.learn(m)
				}
			default:
				more = false
			}
		}
	}
}

// settle waits until every expected message arrived and the relay agrees
// with the model.
func (c *sigTest) settle() {
	c.t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		c.pump()
		err := c.check()
		if len(c.exps) > 0 {
			var keys []string
			for _, e := range c.exps {
				keys = append(keys, fmt.Sprintf("%.200s", e.key))
			}
			err = errors.Join(err, fmt.Errorf("still expected: %s", strings.Join(keys, "; ")))
		}
		if err == nil {
			return
		}
		if len(c.exps) == 0 {
			c.strictForwarders()
		}
		if time.Now().After(deadline) {
			c.fatalf("the relay does not agree with the model: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (c *sigTest) check() error {
	return errors.Join(c.checkCounters(), c.checkState(), c.checkSessions(), c.checkForwarders())
}

func (c *sigTest) checkCounters() error {
	var errs []error
	cmp := func(what string, got, want float64) {
		if got != want {
			errs = append(errs, fmt.Errorf("%s: %v, want %v", what, got, want))
		}
	}
	m, fm := c.r.m, c.r.fwd.m
	for _, reason := range sigReasons() {
		cmp("rejected "+reason, testutil.ToFloat64(m.sigRejected.WithLabelValues(reason)), c.rejected[reason])
	}
	for _, o := range []string{outcomeSuccess, outcomeFailed, outcomeAborted, outcomeExpired, outcomePeerGone} {
		cmp("outcome "+o, testutil.ToFloat64(m.sigOutcomes.WithLabelValues(o)), c.outcomes[o])
	}
	cmp("ztgate_relay_signaling_sessions", testutil.ToFloat64(m.sigSessions), float64(len(c.sessions)))
	cmp("ztgate_relay_direct_paths", testutil.ToFloat64(m.directPaths), float64(len(c.paths)))
	for _, reason := range []string{fwdRefuseNoPort, fwdRefuseAgentCap, fwdRefuseTarget} {
		cmp("forwarders refused "+reason, testutil.ToFloat64(fm.refused.WithLabelValues(reason)), c.refused[reason])
	}
	for _, reason := range []string{fwdDropSource, fwdDropNoAgent, fwdDropSend} {
		cmp("forward dropped "+reason, testutil.ToFloat64(fm.dropped.WithLabelValues(reason)), c.dropped[reason])
	}
	for d, name := range directionLabels {
		cmp("forwarded "+name, testutil.ToFloat64(fm.datagrams[d]), c.carried[d])
	}
	return errors.Join(errs...)
}

// checkState compares the state machine with the model's sessions and
// paths.
func (c *sigTest) checkState() error {
	var errs []error
	c.r.sigMu.Lock()
	defer c.r.sigMu.Unlock()
	sg := c.r.sig
	if len(sg.byLeg) != len(c.sessions) || len(sg.byAgent) != len(c.sessions) {
		errs = append(errs, fmt.Errorf("the relay holds %d sessions (%d by agent), the model %d", len(sg.byLeg), len(sg.byAgent), len(c.sessions)))
	}
	for _, s := range c.sessions {
		if s.leg == 0 {
			continue // the offer is on its way
		}
		rs := sg.byLeg[s.leg]
		switch {
		case rs == nil:
			errs = append(errs, fmt.Errorf("session %d (leg %d) of %s is not at the relay", s.id, s.leg, s.agent.label))
		case rs.a.s.ID() != sigSID(s.ac) || rs.agentID != s.id || rs.g.s.ID() != sigSID(s.gc) || rs.service != s.service ||
			(rs.phase == sigAnswered) != s.answered:
			errs = append(errs, fmt.Errorf("session leg %d: %+v at the relay, %s/%d on %s for %s answered %t in the model",
				s.leg, rs, s.agent.label, s.id, s.gw.name, s.service, s.answered))
		}
	}
	if len(sg.paths) != len(c.paths) {
		errs = append(errs, fmt.Errorf("%d direct paths at the relay, %d in the model", len(sg.paths), len(c.paths)))
	}
	for _, dp := range c.paths {
		found := false
		for k, rp := range sg.paths {
			found = found || (k.a.s.ID() == sigSID(dp.ac) && k.id == dp.id && rp.g.s.ID() == sigSID(dp.gc) && rp.service == dp.service)
		}
		if !found {
			errs = append(errs, fmt.Errorf("the path of %s (%d, %s on %s) is not at the relay", dp.agent.label, dp.id, dp.service, dp.gw.name))
		}
	}
	return errors.Join(errs...)
}

// apiGet serves a GET of the /v1/ API in process.
func (c *sigTest) apiGet(path string, into any) error {
	rec := httptest.NewRecorder()
	c.r.v1Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != http.StatusOK {
		return fmt.Errorf("%s: status %d", path, rec.Code)
	}
	return json.Unmarshal(rec.Body.Bytes(), into)
}

// checkSessions compares /v1/sessions with the connected parties.
func (c *sigTest) checkSessions() error {
	var got struct{ Sessions []apiSession }
	if err := c.apiGet("/v1/sessions", &got); err != nil {
		return err
	}
	want := map[uint64]string{}
	for _, p := range append(slices.Clone(c.agents), c.gws...) {
		if p.c != nil {
			want[sigSID(p.c)] = p.identity()
		}
	}
	var errs []error
	for _, s := range got.Sessions {
		if want[s.ID] != s.Identity || s.Tags != 0 {
			errs = append(errs, fmt.Errorf("/v1/sessions lists %d of %s with %d tags", s.ID, s.Identity, s.Tags))
		}
		delete(want, s.ID)
	}
	for id, who := range want {
		errs = append(errs, fmt.Errorf("/v1/sessions lacks %d of %s", id, who))
	}
	return errors.Join(errs...)
}

// checkForwarders compares /v1/forwarders and the gauge with the model:
// certain ones listed as they are, closed ones not at all.
func (c *sigTest) checkForwarders() error {
	var got struct{ Forwarders []apiForwarder }
	if err := c.apiGet("/v1/forwarders", &got); err != nil {
		return err
	}
	now := time.Now()
	listed := map[uint16]apiForwarder{}
	for _, f := range got.Forwarders {
		listed[f.Port] = f
	}
	var errs []error
	certain, open := 0, 0
	for _, f := range c.fwds {
		if !f.open || f.port == 0 {
			continue
		}
		open++
		a, ok := listed[f.port]
		delete(listed, f.port)
		if !ok {
			if f.certain(now) {
				certain++
				errs = append(errs, fmt.Errorf("forwarder %d of %s to %s is not listed", f.port, f.agent.label, f.gw.name))
			}
			continue
		}
		if f.certain(now) {
			certain++
		}
		from := ""
		if f.sock != nil {
			from = addrOf(f.sock).String()
		}
		if a.Agent != f.agent.identity() || a.Gateway != f.gw.identity() || a.Target != f.target.String() || a.From != from {
			errs = append(errs, fmt.Errorf("forwarder %d: %+v, want %s to %s at %v from %q", f.port, a, f.agent.identity(), f.gw.identity(), f.target, from))
		}
	}
	for port, a := range listed {
		errs = append(errs, fmt.Errorf("forwarder %d of %s to %s is listed, closed in the model", port, a.Agent, a.Gateway))
	}
	if live := testutil.ToFloat64(c.r.fwd.m.live); live < float64(certain) || live > float64(open) {
		errs = append(errs, fmt.Errorf("ztgate_relay_forwarders %v, want %d to %d", live, certain, open))
	}
	return errors.Join(errs...)
}

// finish ends every session: the relay keeps no signaling state, and
// closes its forwarders when it stops.
func (c *sigTest) finish() {
	c.t.Helper()
	c.logf("finish")
	for _, a := range c.agents {
		if a.c != nil {
			a.c.close()
			c.partyGone(a)
		}
	}
	c.settle()
	for _, g := range c.gws {
		if g.c != nil {
			g.c.close()
			c.partyGone(g)
		}
	}
	c.settle()
	c.r.sigMu.Lock()
	sg := c.r.sig
	left := len(sg.byLeg) + len(sg.byAgent) + len(sg.idUsers) + len(sg.perAgent) + len(sg.perGW) + len(sg.perShare) + len(sg.paths)
	c.r.sigMu.Unlock()
	if left != 0 {
		c.fatalf("the relay keeps signaling state of sessions that ended")
	}
	c.r.Close()
	if live := testutil.ToFloat64(c.r.fwd.m.live); live != 0 {
		c.fatalf("%v forwarders live after the relay closed", live)
	}
	var stats []string
	for k, n := range c.stats {
		stats = append(stats, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(stats)
	c.t.Logf("%d steps: %s", signalSteps, strings.Join(stats, ", "))
}
