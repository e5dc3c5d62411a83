package relay

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/internal/testseed"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// The churn test drives one relay through a few hundred random steps of
// gateways and agents coming and going, registrations, health changes,
// services moving between gateways, flows and return packets, and checks
// the relay against a model after every step or two. It logs its seed;
// ZTGATE_CHURN_SEED=<seed> replays its steps.
const (
	churnSeedEnv = "ZTGATE_CHURN_SEED"
	churnSteps   = 300
	// churnSettle bounds the wait for the relay to catch up with a step
	// (a session's end, a health report, a directory push) and for a
	// datagram to arrive: generous, so that a loaded machine only makes
	// the test slower.
	churnSettle = testTimeout
	// churnResend is how long a datagram may take before it is sent again
	// (loopback QUIC may drop one).
	churnResend = time.Second
)

var (
	churnTenants  = []string{"acme", "globex", "initech"}
	churnServices = []string{"web", "db", "dns", "wiki", "mail", "git"}
	churnPorts    = []tunnel.PortInfo{{Protocol: "udp", Port: 7}, {Protocol: "udp", Port: 53}, {Protocol: "tcp", Port: 80}}
	// churnNoVIP is the destination of packets to a service the model
	// never saw a VIP for.
	churnNoVIP = netip.MustParseAddr("10.100.0.254")
	// churnPins are the relay's pins: their VIPs never change and stay
	// allocated with no gateway serving them.
	churnPins = map[string]netip.Addr{"mail": netip.MustParseAddr("10.100.0.200")}
)

// churnGateway is a gateway of the model: its identity, its live session
// and what the relay accepted from it.
type churnGateway struct {
	name  string
	creds *tunnel.Credentials
	c     *client                       // nil while disconnected
	reg   map[string]tunnel.ServiceInfo // accepted services, health as last reported
	// What this session received.
	opened map[uint32]*tunnel.TagOpen
	closed map[uint32]bool
}

// churnAgent is an agent of the model. Two may share an identity (one
// certificate on two devices): each has its own session.
type churnAgent struct {
	label        string // for the log
	name, tenant string // its identity
	creds        *tunnel.Credentials
	c            *client // nil while disconnected
	dir          *tunnel.Directory
	returns      map[string]bool // payloads of return packets routed to this session
	// rights are the services its certificate grants (a legacy one's),
	// nil for every service of its tenant (tunnel.Identity.Services).
	rights []string
	// A ztna-v1 agent (TestLegacyRandom): the services ACKed on this
	// session, whether a routed packet pinned its inner address, and the
	// registration answers it may receive (copies of a resent request
	// are answered again).
	v1         bool
	registered map[string]bool
	pinned     bool
	answers    map[string]bool
}

// permits reports whether a's certificate grants service.
func (a *churnAgent) permits(service string) bool {
	return a.rights == nil || slices.Contains(a.rights, service)
}

// inner is the inner address the relay shows for a's session: none for a
// ztna-v1 session before its first routed packet.
func (a *churnAgent) inner() string {
	if a.v1 && !a.pinned {
		return ""
	}
	return innerAddr.String()
}

// churnTag is a tag the model saw drawn.
type churnTag struct {
	id      uint32
	agent   *churnAgent
	as      *client // the agent's session
	gw      *churnGateway
	gs      *client // the gateway's session
	service string
	live    bool
	// closeDue: killed while its gateway's session lives, which must be
	// told with a tag_close.
	closeDue bool
}

// churnFlow is a flow of an agent session.
type churnFlow struct {
	agent    *churnAgent
	as       *client
	service  string
	src, dst netip.AddrPort
	tcp      bool
	tag      *churnTag // the tag of its entry in the relay's flow table; nil before it has one
	closed   bool
}

type churn struct {
	t        *testing.T
	seed     uint64
	rng      *rand.Rand
	p        *pki
	r        *Relay
	addr     string
	now      atomic.Int64 // the pool's clock, ns
	holdDown time.Duration

	gws    []*churnGateway
	agents []*churnAgent
	// vips is the last VIP of each name; released when its last gateway
	// left it (absent while served).
	vips     map[string]netip.Addr
	released map[string]time.Time
	// lastDef is the definition of each name's last gateway when it left
	// the name: the tenants the name was last admitted to.
	lastDef   map[string]tunnel.ServiceInfo
	order     map[string][]*churnGateway // gateways of each served name, in registration order
	drained   map[string]bool            // names of gateways drained
	tags      []*churnTag
	flows     []*churnFlow
	ever      map[string]map[string]bool // tenant → names it was ever admitted to
	old       []*client                  // replaced and closed sessions: must end
	delivered map[uint16]bool            // IP ids of packets a gateway received
	drops     map[dropReason]float64     // the drops expectDrop saw, by reason
	// moreTenants are offered to services besides churnTenants' (the
	// legacy test's tenant default).
	moreTenants []string
	v1Seen      []uint64 // relay ids of every ztna-v1 session so far (dialV1)
	// checkMore is a test's own check, after the churn's (check).
	checkMore func() error
	ipID      uint16
	port      uint16
	step      int
	log       []string       // the steps so far, for a failure
	stats     map[string]int // what the steps checked, for the log
}

// TestRegistryChurn runs churnSteps random steps against one relay over
// loopback QUIC: three gateways connect, reconnect, leave, register and
// withdraw services, report their health, move services between them and
// are drained; five agent sessions of three tenants (two of one identity)
// connect and leave, open flows, send on them and close them; gateways
// return packets under live, dead and other gateways' tags; the pool's
// clock moves past hold-downs. After every step or two the relay must
// agree with the model: sessions, services and their gateways, VIPs
// (stable while served, back within the hold-down, pins kept), the tag
// table (exactly the live tags, nothing of sessions that left, every
// tag_open and tag_close sent), flow counts, each agent's directory and
// /v1/services and /v1/sessions.
func TestRegistryChurn(t *testing.T) {
	seed := testseed.Get(t, churnSeedEnv)
	c := newChurn(t, seed)
	c.run(churnSteps, []churnOp{
		{6, "gateway connects", c.gatewayConnect, false},
		{3, "gateway reconnects", c.gatewayReconnect, false},
		{3, "gateway leaves", c.gatewayLeave, false},
		{14, "gateway registers", c.gatewayRegister, false},
		{10, "gateway reports health", c.gatewayHealth, false},
		{5, "service moves", c.serviceMove, false},
		{4, "gateway drained or undrained", c.gatewayDrain, true},
		{6, "agent connects", c.agentConnect, false},
		{3, "agent leaves", c.agentLeave, false},
		{18, "new flow", c.flowOpen, true},
		{14, "flow packet", c.flowPacket, true},
		{4, "flow closes", c.flowClose, true},
		{10, "return packets", c.returnPackets, true},
		{3, "clock advances", c.clockAdvance, true},
	})
}

// churnOp is a kind of step of a random test run on a churn.
type churnOp struct {
	weight int
	name   string
	do     func() bool // false: not applicable now
	// settled: the step's checks need the relay to have caught up with
	// the steps before (the others may follow each other without
	// waiting, so that their effects overlap at the relay).
	settled bool
}

// run takes steps random steps of ops, each by its weight, settling
// before a step that needs it and after every other step on average, and
// finishes.
func (c *churn) run(steps int, ops []churnOp) {
	c.t.Helper()
	settled := true
	for c.step = 0; c.step < steps; c.step++ {
		for {
			i := testseed.Weighted(c.rng, len(ops), func(i int) int { return ops[i].weight })
			if ops[i].settled && !settled {
				c.settle()
				settled = true
			}
			c.logf("%s", ops[i].name)
			if ops[i].do() {
				break
			}
			c.log = c.log[:len(c.log)-1]
		}
		settled = false
		if c.rng.IntN(2) == 0 {
			c.settle()
			settled = true
		}
	}
	c.finish(steps)
}

func newChurn(t *testing.T, seed uint64) *churn {
	p := newPKI(t)
	cfg := p.relayConfig(t.TempDir())
	for name, vip := range churnPins {
		cfg.Pins = append(cfg.Pins, conf.Pin{Service: name, VIP: vip})
	}
	c := &churn{
		t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), p: p, holdDown: cfg.VIPHoldDown,
		vips: map[string]netip.Addr{}, released: map[string]time.Time{}, lastDef: map[string]tunnel.ServiceInfo{},
		order:   map[string][]*churnGateway{},
		drained: map[string]bool{}, ever: map[string]map[string]bool{}, delivered: map[uint16]bool{},
		drops: map[dropReason]float64{},
		port:  10000, stats: map[string]int{},
	}
	c.now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	for name, vip := range churnPins {
		c.vips[name] = vip
	}
	// The gateways of the test end their sessions by closing them; a
	// loaded machine that keeps the relay from reading their pongs for 2 s
	// must not make it take one for dead (TestFailover and TestSilence
	// test that).
	c.r = startRelayWith(t, cfg, Options{Now: c.clock, DeadAfter: time.Minute})
	c.addr = c.r.Addr().String()
	for i := range 3 {
		name := fmt.Sprintf("gw%d", i+1)
		c.gws = append(c.gws, &churnGateway{name: name, creds: p.identity("ops", tunnel.RoleGateway, name)})
	}
	for i, tenant := range []string{"acme", "acme", "globex", "initech"} {
		name := fmt.Sprintf("%s-%d", tenant, i)
		c.agents = append(c.agents, &churnAgent{label: name, name: name, tenant: tenant,
			creds: p.identity(tenant, tunnel.RoleAgent, name)})
	}
	twin := *c.agents[0]
	twin.label += "'"
	c.agents = append(c.agents, &twin)
	return c
}

func (c *churn) clock() time.Time { return time.Unix(0, c.now.Load()).UTC() }

// logf records a step for the failure report.
func (c *churn) logf(format string, args ...any) {
	c.log = append(c.log, fmt.Sprintf("%3d: ", c.step)+fmt.Sprintf(format, args...))
}

// fatalf fails the test with the seed and the last steps.
func (c *churn) fatalf(format string, args ...any) {
	c.t.Helper()
	first := max(0, len(c.log)-40)
	var counts []string
	for reason := range numDropReasons {
		if n := dropped(c.r, reason); n > 0 {
			counts = append(counts, fmt.Sprintf("%s %v", reason, n))
		}
	}
	c.t.Fatalf("step %d: %s\nseed %d; to gateways %v, to agents %v, dropped: %s; gateways closed for silence %v; last steps:\n%s",
		c.step, fmt.Sprintf(format, args...), c.seed, testutil.ToFloat64(c.r.m.toGateway), testutil.ToFloat64(c.r.m.toAgent),
		strings.Join(counts, ", "), testutil.ToFloat64(c.r.m.gatewaysLost), strings.Join(c.log[first:], "\n"))
}

// sid is the relay's id of a client's session: its welcome's, or the id a
// test found for a ztna-v1 session.
func sid(c *client) uint64 { return cmp.Or(c.s.Welcome().Session, c.id) }

func (g *churnGateway) connected() bool { return g.c != nil }
func (a *churnAgent) connected() bool   { return a.c != nil }

// --- gateways ---

func (c *churn) gatewayConnect() bool {
	g := testseed.Pick(c.rng, c.gws, func(g *churnGateway) bool { return g.c == nil })
	if g == nil {
		return false
	}
	c.logf("  %s connects", g.name)
	c.dialGateway(g)
	return true
}

func (c *churn) dialGateway(g *churnGateway) {
	g.c = mustDial(c.t, c.addr, g.creds, gatewayHello(g.name))
	g.reg = map[string]tunnel.ServiceInfo{}
	g.opened, g.closed = map[uint32]*tunnel.TagOpen{}, map[uint32]bool{}
}

// gatewayReconnect: a new session of a connected gateway, which replaces
// its old one.
func (c *churn) gatewayReconnect() bool {
	g := testseed.Pick(c.rng, c.gws, (*churnGateway).connected)
	if g == nil {
		return false
	}
	c.logf("  %s reconnects", g.name)
	old := g.c
	c.gatewayGone(g)
	c.old = append(c.old, old)
	c.dialGateway(g)
	return true
}

func (c *churn) gatewayLeave() bool {
	g := testseed.Pick(c.rng, c.gws, (*churnGateway).connected)
	if g == nil {
		return false
	}
	c.logf("  %s leaves", g.name)
	g.c.close()
	c.gatewayGone(g)
	return true
}

// gatewayGone updates the model for the end of g's session: its tags
// die (the gateway is not told), its services lose it.
func (c *churn) gatewayGone(g *churnGateway) {
	for _, tg := range c.tags {
		if tg.live && tg.gs == g.c {
			tg.live = false
			c.stats["tags dead with their gateway"]++
		}
	}
	for name := range g.reg {
		c.unserve(g, name)
	}
	g.c, g.reg = nil, nil
}

// unserve takes g off a name it served; the name's VIP is held from now
// when g was its last gateway.
func (c *churn) unserve(g *churnGateway, name string) {
	c.order[name] = slices.DeleteFunc(c.order[name], func(x *churnGateway) bool { return x == g })
	if len(c.order[name]) == 0 {
		delete(c.order, name)
		c.released[name] = c.clock()
		c.lastDef[name] = g.reg[name]
	}
}

// randomService is a valid definition of name: one to three tenants (or
// "*"), one or more ports, sometimes ICMP, mostly healthy, sometimes a pin.
func (c *churn) randomService(name string) tunnel.ServiceInfo {
	info := tunnel.ServiceInfo{Name: name, Healthy: c.rng.IntN(4) != 0, ICMP: c.rng.IntN(3) == 0}
	if c.rng.IntN(6) == 0 {
		info.Tenants = []string{"*"}
	} else {
		for _, tn := range append(append(slices.Clone(churnTenants[:2]), "umbrella"), c.moreTenants...) {
			if c.rng.IntN(2) == 0 {
				info.Tenants = append(info.Tenants, tn)
			}
		}
		if len(info.Tenants) == 0 {
			info.Tenants = []string{churnTenants[c.rng.IntN(len(churnTenants))]}
		}
	}
	for _, p := range churnPorts {
		if c.rng.IntN(2) == 0 {
			info.Ports = append(info.Ports, p)
		}
	}
	if len(info.Ports) == 0 {
		info.Ports = []tunnel.PortInfo{churnPorts[c.rng.IntN(len(churnPorts))]}
	}
	if c.rng.IntN(8) == 0 {
		info.VIP = netip.AddrFrom4([4]byte{10, 100, 0, byte(2 + c.rng.IntN(12))})
	}
	return info
}

func (c *churn) gatewayRegister() bool {
	g := testseed.Pick(c.rng, c.gws, (*churnGateway).connected)
	if g == nil {
		return false
	}
	var services []tunnel.ServiceInfo
	for _, name := range churnServices {
		old, had := g.reg[name]
		switch n := c.rng.IntN(10); {
		case had && n < 5: // kept as it is (a health report may come along)
			old.Healthy = old.Healthy != (n == 0)
			services = append(services, old)
		case had && n < 8: // redefined
			services = append(services, c.randomService(name))
		case !had && n < 3: // added
			services = append(services, c.randomService(name))
		}
	}
	c.rng.Shuffle(len(services), func(i, j int) { services[i], services[j] = services[j], services[i] })
	c.register(g, services)
	return true
}

// serviceMove: a gateway drops a service, another one takes it.
func (c *churn) serviceMove() bool {
	from := testseed.Pick(c.rng, c.gws, func(g *churnGateway) bool { return g.c != nil && len(g.reg) > 0 })
	if from == nil {
		return false
	}
	names := servicesNames(from)
	name := names[c.rng.IntN(len(names))]
	to := testseed.Pick(c.rng, c.gws, func(g *churnGateway) bool {
		_, serves := g.reg[name]
		return g.c != nil && !serves
	})
	if to == nil {
		return false
	}
	info := from.reg[name]
	c.logf("  %s moves from %s to %s", name, from.name, to.name)
	rest := servicesOf(from)
	rest = slices.DeleteFunc(rest, func(s tunnel.ServiceInfo) bool { return s.Name == name })
	if c.rng.IntN(2) == 0 { // the new gateway first: no gap
		c.register(to, append(servicesOf(to), info))
		c.register(from, rest)
	} else {
		c.register(from, rest)
		c.register(to, append(servicesOf(to), info))
	}
	return true
}

// servicesOf is what g has registered.
func servicesOf(g *churnGateway) []tunnel.ServiceInfo {
	var out []tunnel.ServiceInfo
	for _, name := range churnServices {
		if info, ok := g.reg[name]; ok && info.Name != "" {
			out = append(out, info)
		}
	}
	return out
}

// register sends g's whole service set, waits for the assign and checks
// its VIPs against the model: a name served elsewhere, or held for it,
// keeps its VIP; no VIP of another name that is served or held is handed
// out.
func (c *churn) register(g *churnGateway, services []tunnel.ServiceInfo) {
	c.t.Helper()
	var names []string
	for _, s := range services {
		names = append(names, fmt.Sprintf("%s%v/%d/%t", s.Name, s.Tenants, len(s.Ports), s.Healthy))
	}
	c.logf("  %s registers %v", g.name, names)
	if services == nil {
		services = []tunnel.ServiceInfo{}
	}
	if err := g.c.s.Send(&tunnel.Register{Type: tunnel.MessageRegister, Services: services}); err != nil {
		c.fatalf("register: %v", err)
	}
	var assign *tunnel.Assign
	c.pumpGateway(g, func(m any) bool {
		assign, _ = m.(*tunnel.Assign)
		return assign != nil
	})
	if len(assign.Rejected) != 0 || len(assign.VIPs) != len(services) {
		c.fatalf("%s's assign: %d VIPs for %d services, rejected %+v", g.name, len(assign.VIPs), len(services), assign.Rejected)
	}
	now := c.clock()
	for _, v := range assign.VIPs {
		name := v.Service
		last, known := c.vips[name]
		_, served := c.order[name]
		held := known && !served && now.Sub(c.released[name]) < c.holdDown
		pin, pinned := churnPins[name]
		switch {
		case !c.r.cfg.Pool.Contains(v.VIP):
			c.fatalf("%s got VIP %v outside the pool", name, v.VIP)
		case pinned && v.VIP != pin:
			c.fatalf("%s is pinned to %v at the relay; the assign gives %v", name, pin, v.VIP)
		case served && v.VIP != last:
			c.fatalf("%s is served and had VIP %v; the assign gives %v", name, last, v.VIP)
		case held && v.VIP != last:
			c.fatalf("%s returned %v after its release (hold-down %v) and got VIP %v, not its %v",
				name, now.Sub(c.released[name]), c.holdDown, v.VIP, last)
		}
		for other, vip := range c.vips {
			if other == name || vip != v.VIP {
				continue
			}
			_, otherServed := c.order[other]
			_, otherPinned := churnPins[other]
			if otherServed || otherPinned || now.Sub(c.released[other]) < c.holdDown {
				c.fatalf("%s got VIP %v, which %s holds (served %t)", name, v.VIP, other, otherServed)
			}
		}
		switch {
		case served:
			c.stats["VIP of a served name"]++
		case held:
			c.stats["VIP back within the hold-down"]++
		case known:
			c.stats["VIP after the hold-down"]++
		}
		c.vips[name] = v.VIP
	}

	// The model: dropped names lose g and its tags; a kept name's tags of
	// tenants its new definition does not admit die.
	accepted := map[string]tunnel.ServiceInfo{}
	for _, s := range services {
		accepted[s.Name] = s
	}
	for name := range g.reg {
		if _, keep := accepted[name]; !keep {
			c.killTags(func(tg *churnTag) bool { return tg.gs == g.c && tg.service == name }, true)
			c.unserve(g, name)
			delete(g.reg, name)
		}
	}
	for name, info := range accepted {
		if _, had := g.reg[name]; had {
			def := newDefinition(info)
			c.killTags(func(tg *churnTag) bool {
				return tg.gs == g.c && tg.service == name && !def.admits(tg.agent.tenant)
			}, true)
		} else {
			c.order[name] = append(c.order[name], g)
		}
		delete(c.released, name)
		g.reg[name] = info
		for _, tn := range append(slices.Clone(churnTenants), c.moreTenants...) {
			if newDefinition(info).admits(tn) {
				if c.ever[tn] == nil {
					c.ever[tn] = map[string]bool{}
				}
				c.ever[tn][name] = true
			}
		}
	}
}

// killTags marks the live tags that match dead; told says whether their
// gateways hear of it.
func (c *churn) killTags(match func(*churnTag) bool, told bool) {
	for _, tg := range c.tags {
		if tg.live && match(tg) {
			tg.live = false
			tg.closeDue = told
			c.stats["tags closed by a registration"]++
		}
	}
}

func (c *churn) gatewayHealth() bool {
	g := testseed.Pick(c.rng, c.gws, func(g *churnGateway) bool { return g.c != nil && len(g.reg) > 0 })
	if g == nil {
		return false
	}
	report := map[string]bool{}
	for name, info := range g.reg {
		if c.rng.IntN(2) == 0 {
			info.Healthy = !info.Healthy
			g.reg[name] = info
			report[name] = info.Healthy
		}
	}
	if c.rng.IntN(3) == 0 {
		report["not-registered"] = true // ignored
	}
	c.logf("  %s reports %v", g.name, report)
	if err := g.c.s.Send(&tunnel.Health{Type: tunnel.MessageHealth, Services: report}); err != nil {
		c.fatalf("health: %v", err)
	}
	return true
}

// gatewayDrain drains or undrains a gateway's name through the API (a
// drained one more often, so that most stay undrained): a name neither
// connected nor drained is 404.
func (c *churn) gatewayDrain() bool {
	g := c.gws[c.rng.IntN(len(c.gws))]
	drain := !c.drained[g.name]
	if drain && c.rng.IntN(3) != 0 {
		return false
	}
	path := "/v1/gateways/" + g.name + "/drain"
	if !drain {
		path = "/v1/gateways/" + g.name + "/undrain"
	}
	c.logf("  POST %s", path)
	rec := httptest.NewRecorder()
	c.r.v1Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, nil))
	want := http.StatusOK
	if g.c == nil && !c.drained[g.name] {
		want = http.StatusNotFound
	}
	if rec.Code != want {
		c.fatalf("POST %s: %d, want %d: %s", path, rec.Code, want, rec.Body)
	}
	if want == http.StatusOK {
		c.drained[g.name] = drain
	}
	return true
}

// pumpGateway reads g's control messages into the model until until
// returns true (nil: until none is waiting).
func (c *churn) pumpGateway(g *churnGateway, until func(any) bool) {
	c.t.Helper()
	deadline := time.After(churnSettle)
	for {
		var m any
		if until == nil {
			select {
			case m = <-g.c.msgs:
			default:
				return
			}
		} else {
			select {
			case m = <-g.c.msgs:
			case <-deadline:
				c.fatalf("%s: no answer from the relay", g.name)
			}
		}
		switch v := m.(type) {
		case *tunnel.TagOpen:
			if g.opened[v.Tag] != nil {
				c.fatalf("%s got a second tag_open of tag %d", g.name, v.Tag)
			}
			g.opened[v.Tag] = v
		case *tunnel.TagClose:
			for _, id := range v.Tags {
				g.closed[id] = true
			}
		}
		if until != nil && until(m) {
			return
		}
	}
}

// --- agents ---

func (c *churn) agentConnect() bool {
	a := testseed.Pick(c.rng, c.agents, func(a *churnAgent) bool { return a.c == nil })
	if a == nil {
		return false
	}
	c.logf("  %s connects", a.label)
	if a.v1 {
		c.dialV1(a)
	} else {
		a.c = mustDial(c.t, c.addr, a.creds, agentHello(a.name))
	}
	a.dir, a.returns = nil, map[string]bool{}
	a.registered, a.pinned, a.answers = map[string]bool{}, false, map[string]bool{}
	return true
}

func (c *churn) agentLeave() bool {
	a := testseed.Pick(c.rng, c.agents, (*churnAgent).connected)
	if a == nil {
		return false
	}
	c.leave(a)
	return true
}

// leave ends an agent's session.
func (c *churn) leave(a *churnAgent) {
	c.logf("  %s leaves", a.label)
	a.c.close()
	for _, tg := range c.tags {
		if tg.live && tg.as == a.c {
			tg.live = false
			tg.closeDue = tg.gs == tg.gw.c
			c.stats["tags dead with their agent"]++
		}
	}
	c.flows = slices.DeleteFunc(c.flows, func(f *churnFlow) bool { return f.as == a.c })
	a.c = nil
}

// --- flows ---

// eligible returns the gateways a new flow of a's to name with wants may
// go to (those of the best rank: serving the port, then healthy), or the
// reason the relay drops it.
func (c *churn) eligible(a *churnAgent, name string, f *churnFlow) ([]*churnGateway, dropReason) {
	if a.v1 && !a.registered[name] {
		return nil, dropNotRegistered
	}
	gws, served := c.order[name]
	switch {
	case !served:
		return nil, dropUnknownService
	case !a.permits(name):
		return nil, dropNotAuthorized
	}
	best, bestRank := []*churnGateway(nil), -1
	admitted := false
	for _, g := range gws {
		info := g.reg[name]
		def := newDefinition(info)
		if !def.admits(a.tenant) {
			continue
		}
		admitted = true
		if c.drained[g.name] {
			continue
		}
		rank := 0
		proto := "udp"
		if f.tcp {
			proto = "tcp"
		}
		if def.hasPort(proto, f.dst.Port()) {
			rank += 2
		}
		if info.Healthy {
			rank++
		}
		switch {
		case rank > bestRank:
			best, bestRank = []*churnGateway{g}, rank
		case rank == bestRank:
			best = append(best, g)
		}
	}
	switch {
	case !admitted:
		return nil, dropNotAuthorized
	case best == nil: // every gateway that admits the tenant is drained
		return nil, dropNoEligible
	}
	return best, 0
}

func (c *churn) flowOpen() bool {
	a := testseed.Pick(c.rng, c.agents, (*churnAgent).connected)
	if a == nil {
		return false
	}
	name := churnServices[c.rng.IntN(len(churnServices))]
	if visible := c.wantDirectory(a.tenant); len(visible) > 0 && c.rng.IntN(6) != 0 {
		name = visible[c.rng.IntN(len(visible))].Name
	}
	c.openFlow(a, name)
	return true
}

// openFlow opens a flow of a's to name and routes its first packet.
func (c *churn) openFlow(a *churnAgent, name string) {
	vip, ok := c.vips[name]
	if !ok {
		vip = churnNoVIP
	}
	c.port++
	f := &churnFlow{agent: a, as: a.c, service: name, src: netip.AddrPortFrom(innerAddr, c.port), tcp: c.rng.IntN(3) == 0}
	if f.tcp {
		f.dst = netip.AddrPortFrom(vip, 80)
	} else {
		f.dst = netip.AddrPortFrom(vip, []uint16{7, 53}[c.rng.IntN(2)])
	}
	c.logf("  %s opens a %s flow to %s (%v)", a.label, protoName(f.tcp), name, f.dst)
	c.route(f, tcpSYN)
	c.flows = append(c.flows, f)
}

func protoName(tcp bool) string {
	if tcp {
		return "tcp"
	}
	return "udp"
}

func (c *churn) flowPacket() bool {
	f := testseed.Pick(c.rng, c.flows, func(f *churnFlow) bool { return !f.closed })
	if f == nil {
		return false
	}
	c.logf("  %s sends on its %s flow %v→%s", f.agent.label, protoName(f.tcp), f.src, f.service)
	if f.tcp && f.tag == nil { // its SYN was dropped: the SYN again
		c.route(f, tcpSYN)
		return true
	}
	c.route(f, tcpACK)
	return true
}

func (c *churn) flowClose() bool {
	f := testseed.Pick(c.rng, c.flows, func(f *churnFlow) bool { return !f.closed })
	if f == nil {
		return false
	}
	c.logf("  %s closes its %s flow %v→%s", f.agent.label, protoName(f.tcp), f.src, f.service)
	if f.tcp && f.tag != nil {
		c.route(f, tcpFIN)
	}
	f.closed = true
	return true
}

// packet builds a packet of f (flags for TCP) with a fresh IP id.
func (c *churn) packet(f *churnFlow, flags byte) []byte {
	var p []byte
	if f.tcp {
		p = tcpPacket(f.src, f.dst, flags)
	} else {
		p = udpPacket(f.src, f.dst, "churn")
	}
	c.ipID++
	binary.BigEndian.PutUint16(p[4:], c.ipID)
	return p
}

// route sends a packet of f and checks where it goes: a flow with a live
// tag keeps it; a new flow, or a UDP flow whose tag died, gets a gateway
// of the best rank and the agent's tag for it (a new one with a tag_open
// when none lives); a TCP flow whose tag died is lost; a service the
// agent may not reach drops it.
func (c *churn) route(f *churnFlow, flags byte) {
	c.t.Helper()
	pkt := c.packet(f, flags)
	var want []*churnGateway
	var reason dropReason
	switch {
	case f.tag != nil && f.tag.live:
		want = []*churnGateway{f.tag.gw}
	case f.tag != nil && f.tcp:
		reason = dropFlowLost
	default:
		want, reason = c.eligible(f.agent, f.service, f)
	}
	if want == nil {
		c.stats["packets dropped as "+reason.String()]++
		c.expectDrop(reason, true, func() { f.agent.c.send(f.service, pkt) })
		return
	}
	g, id := c.expectDelivery(pkt, func() { f.agent.c.send(f.service, pkt) })
	c.stats["packets routed"]++
	if !slices.Contains(want, g) {
		c.fatalf("packet of %s's flow to %s went to %s, want one of %v", f.agent.label, f.service, g.name, gwNames(want))
	}
	if f.tag != nil && f.tag.live {
		if id != f.tag.id {
			c.fatalf("a packet of a flow with live tag %d went under tag %d", f.tag.id, id)
		}
		return
	}
	// A new flow's tag: the agent session's live tag for (service,
	// gateway), else a new one.
	var tg *churnTag
	for _, x := range c.tags {
		if x.live && x.as == f.as && x.service == f.service && x.gs == g.c {
			tg = x
		}
	}
	if tg != nil && id != tg.id {
		c.fatalf("%s's new flow to %s on %s went under tag %d; its live tag there is %d", f.agent.label, f.service, g.name, id, tg.id)
	}
	if tg == nil {
		for _, x := range c.tags {
			if x.live && x.id == id {
				c.fatalf("new tag %d of %s is live already (%s, %s on %s)", id, f.agent.label, x.agent.label, x.service, x.gw.name)
			}
		}
		tg = &churnTag{id: id, agent: f.agent, as: f.as, gw: g, gs: g.c, service: f.service, live: true}
		f.agent.pinned = f.agent.pinned || f.agent.v1
		c.stats["tags drawn"]++
		c.tags = append(c.tags, tg)
		c.logf("  tag %d: %s, %s on %s", id, f.agent.label, f.service, g.name)
	}
	f.tag = tg
}

func gwNames(gs []*churnGateway) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.name)
	}
	return out
}

// transmit sends a datagram, an agent's (up) or a gateway's, until
// arrived reports it where it should be, again after churnResend (loopback
// QUIC may lose one); then it waits until the relay took every copy
// (forwarded or dropped), so that none is left to meet the relay in the
// state of a later step. It returns the copies sent.
func (c *churn) transmit(up bool, what string, send func(), arrived func() bool) int {
	c.t.Helper()
	handled := func() float64 { // the direction's datagrams the relay took
		if up {
			return testutil.ToFloat64(c.r.m.toGateway) + testutil.ToFloat64(c.r.m.fromAgentX)
		}
		return testutil.ToFloat64(c.r.m.toAgent) + testutil.ToFloat64(c.r.m.fromGateX)
	}
	before, copies := handled(), 1
	send()
	deadline := time.Now().Add(churnSettle)
	resend := time.Now().Add(churnResend)
	for !arrived() {
		if time.Now().After(deadline) {
			c.fatalf("%s: nothing after %d copies", what, copies)
		}
		if time.Now().After(resend) {
			send()
			copies++
			resend = time.Now().Add(churnResend)
		}
		time.Sleep(time.Millisecond)
	}
	for handled() < before+float64(copies) {
		if time.Now().After(deadline) {
			c.fatalf("%s: the relay took %v of %d copies", what, handled()-before, copies)
		}
		time.Sleep(time.Millisecond)
	}
	return copies
}

// expectDelivery sends an agent's packet until a gateway receives it; it
// returns that gateway and the tag.
func (c *churn) expectDelivery(pkt []byte, send func()) (g *churnGateway, tag uint32) {
	c.t.Helper()
	id := binary.BigEndian.Uint16(pkt[4:])
	c.transmit(true, fmt.Sprintf("packet %d to a gateway", id), send, func() bool {
		if g, tag = c.gatewayDatagrams(id); g != nil {
			c.delivered[id] = true
		}
		return g != nil
	})
	return g, tag
}

// gatewayDatagrams reads what the gateways received: the packet of IP id
// want (its gateway and tag), duplicates of delivered ones (resent), and
// nothing else.
func (c *churn) gatewayDatagrams(want uint16) (*churnGateway, uint32) {
	c.t.Helper()
	for _, g := range c.gws {
		if g.c == nil {
			continue
		}
	read:
		for {
			select {
			case b := <-g.c.dgs:
				tag, service, pkt, err := tunnel.ParseTagged(b)
				if err != nil || len(pkt) < 20 {
					c.fatalf("%s received %x", g.name, b)
				}
				id := binary.BigEndian.Uint16(pkt[4:])
				if id == want && want != 0 {
					return g, tag
				}
				if !c.delivered[id] {
					c.fatalf("%s received packet %d (tag %d, %s), which the relay should have dropped", g.name, id, tag, service)
				}
			default:
				break read
			}
		}
	}
	return nil, 0
}

// expectDrop sends a datagram, an agent's (up) or a gateway's, until the
// relay counts its drop for reason, and checks that it dropped every copy
// for that reason; no gateway may receive it.
func (c *churn) expectDrop(reason dropReason, up bool, send func()) {
	c.t.Helper()
	before := dropped(c.r, reason)
	copies := c.transmit(up, reason.String()+" drop", send, func() bool {
		c.gatewayDatagrams(0)
		return dropped(c.r, reason) > before
	})
	if n := dropped(c.r, reason) - before; n != float64(copies) {
		c.fatalf("%v of %d copies dropped as %s", n, copies, reason)
	}
	c.drops[reason] += float64(copies)
}

// returnPackets checks a random tag's return path: from its gateway it
// reaches its agent session while it lives, and is dropped (unknown tag)
// after; from another gateway it is dropped (foreign tag) while it lives.
func (c *churn) returnPackets() bool {
	tg := testseed.Pick(c.rng, c.tags, func(tg *churnTag) bool { return tg.live && tg.gw.c != nil })
	dead := testseed.Pick(c.rng, c.tags, func(tg *churnTag) bool { return !tg.live && c.anyGateway() != nil })
	if dead != nil && (tg == nil || c.rng.IntN(3) == 0) {
		tg = dead
	}
	if tg == nil {
		return false
	}
	vip := c.vips[tg.service]
	c.ipID++
	text := fmt.Sprintf("return-%d", c.ipID)
	pkt := udpPacket(netip.AddrPortFrom(vip, 7), netip.AddrPortFrom(innerAddr, 9), text)
	dg := tunnel.AppendTagReturn(nil, tg.id, pkt)
	if !tg.live {
		g := c.anyGateway()
		c.logf("  %s returns a packet under dead tag %d", g.name, tg.id)
		c.stats["returns under a dead tag"]++
		c.expectDrop(dropUnknownTag, false, func() { _ = g.c.s.SendDatagram(dg) })
		return true
	}
	c.logf("  %s returns a packet under tag %d (%s)", tg.gw.name, tg.id, tg.agent.label)
	c.stats["returns routed"]++
	tg.agent.returns[text] = true
	got := false
	c.transmit(false, fmt.Sprintf("the return packet of tag %d to %s", tg.id, tg.agent.label),
		func() { _ = tg.gw.c.s.SendDatagram(dg) },
		func() bool {
			for _, a := range c.agents {
				if a.c == nil {
					continue
				}
				for _, text := range c.agentDatagrams(a) {
					got = got || (a == tg.agent && text == payload(pkt))
				}
			}
			return got
		})
	if other := testseed.Pick(c.rng, c.gws, func(g *churnGateway) bool { return g.c != nil && g != tg.gw }); other != nil {
		c.logf("  %s returns a packet under %s's tag %d", other.name, tg.gw.name, tg.id)
		c.stats["returns under another gateway's tag"]++
		c.expectDrop(dropForeignTag, false, func() { _ = other.c.s.SendDatagram(dg) })
	}
	return true
}

// anyGateway returns a connected gateway, or nil.
func (c *churn) anyGateway() *churnGateway {
	for _, g := range c.gws {
		if g.c != nil {
			return g
		}
	}
	return nil
}

// agentDatagrams reads what an agent session received: only return
// packets routed to it.
func (c *churn) agentDatagrams(a *churnAgent) []string {
	c.t.Helper()
	var out []string
	for {
		select {
		case b := <-a.c.dgs:
			if k := tunnel.Kind(b); a.v1 && (k == tunnel.TypeAck || k == tunnel.TypeNack) {
				if !a.answers[string(b)] {
					c.fatalf("%s received the registration answer % x", a.label, b)
				}
				out = append(out, string(b))
				continue
			}
			text := payload(b)
			if src, dst, ok := ipAddrs(b); !ok || dst != innerAddr || !a.returns[text] {
				c.fatalf("%s received %q from %v", a.label, text, src)
			}
			out = append(out, text)
		default:
			return out
		}
	}
}

func (c *churn) clockAdvance() bool {
	d := time.Duration(1+c.rng.IntN(40)) * time.Second
	c.logf("  the clock advances %v", d)
	c.now.Add(int64(d))
	return true
}

// --- checks ---

// settle waits until the relay agrees with the model.
func (c *churn) settle() {
	c.t.Helper()
	deadline := time.Now().Add(churnSettle)
	for {
		err := c.check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.fatalf("the relay does not agree with the model: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// check compares the relay with the model once.
func (c *churn) check() error {
	for _, g := range c.gws {
		if g.c != nil {
			c.pumpGateway(g, nil)
		}
	}
	for _, a := range c.agents {
		if a.c != nil {
			c.agentDatagrams(a)
			c.pumpAgent(a)
		}
	}
	for _, s := range c.old {
		if s.s.Err() == nil {
			return fmt.Errorf("a replaced gateway session is still open")
		}
	}
	errs := errors.Join(c.checkRegistry(), c.checkTags(), c.checkDirectories(), c.checkAPI())
	if c.checkMore != nil {
		errs = errors.Join(errs, c.checkMore())
	}
	return errs
}

// pumpAgent reads an agent's directories: each lists only names its
// tenant was admitted to at some time, at their VIPs.
func (c *churn) pumpAgent(a *churnAgent) {
	for {
		select {
		case m := <-a.c.msgs:
			d, ok := m.(*tunnel.Directory)
			if !ok {
				continue
			}
			for _, s := range d.Services {
				if !c.ever[a.tenant][s.Name] {
					c.fatalf("%s's directory lists %s, which no gateway ever served to %s", a.name, s.Name, a.tenant)
				}
			}
			a.dir = d
		default:
			return
		}
	}
}

// checkRegistry compares the relay's sessions, services and pool with the
// model.
func (c *churn) checkRegistry() error {
	var errs []error
	c.r.mu.RLock()
	defer c.r.mu.RUnlock()
	agents := map[uint64]*agent{}
	for a := range c.r.agents {
		agents[a.s.ID()] = a
	}
	for _, a := range c.agents {
		if a.c == nil {
			continue
		}
		if ra := agents[sid(a.c)]; ra == nil || ra.id.Name != a.name || ra.id.Tenant != a.tenant {
			errs = append(errs, fmt.Errorf("%s's session is not at the relay", a.label))
		}
		delete(agents, sid(a.c))
	}
	for _, ra := range agents {
		errs = append(errs, fmt.Errorf("%s's session %d is at the relay, closed in the model", ra.id, ra.s.ID()))
	}
	gws := map[string]*gateway{}
	for g := range c.r.gateways {
		if gws[g.name] != nil {
			errs = append(errs, fmt.Errorf("%s has two sessions at the relay", g.name))
		}
		gws[g.name] = g
	}
	for _, g := range c.gws {
		rg := gws[g.name]
		if (rg != nil) != (g.c != nil) || (rg != nil && rg.s.ID() != sid(g.c)) {
			errs = append(errs, fmt.Errorf("%s at the relay: %t, in the model %t (or another session)", g.name, rg != nil, g.c != nil))
		}
	}
	var served []string
	for name, order := range c.order {
		served = append(served, name)
		svc := c.r.services[name]
		if svc == nil {
			errs = append(errs, fmt.Errorf("%s is not a service at the relay", name))
			continue
		}
		if svc.vip != c.vips[name] {
			errs = append(errs, fmt.Errorf("%s: VIP %v at the relay, %v in the model", name, svc.vip, c.vips[name]))
		}
		var got []string
		for _, g := range svc.gateways {
			got = append(got, g.name)
		}
		if want := gwNames(order); !slices.Equal(got, want) {
			errs = append(errs, fmt.Errorf("%s's gateways %v at the relay, %v in the model", name, got, want))
		}
	}
	for name := range c.r.services {
		if _, ok := c.order[name]; !ok {
			errs = append(errs, fmt.Errorf("%s is a service at the relay, served by none in the model", name))
		}
	}
	wantAllocated := slices.Clone(served)
	for name := range churnPins {
		if !slices.Contains(wantAllocated, name) {
			wantAllocated = append(wantAllocated, name)
		}
	}
	slices.Sort(wantAllocated)
	var allocated []string
	for _, a := range c.r.pool.Allocations() {
		allocated = append(allocated, a.Service)
		if pin, ok := churnPins[a.Service]; ok && a.VIP != pin {
			errs = append(errs, fmt.Errorf("pinned %s allocated %v", a.Service, a.VIP))
		}
	}
	if !slices.Equal(allocated, wantAllocated) {
		errs = append(errs, fmt.Errorf("the pool allocates %v; served and pinned are %v", allocated, wantAllocated))
	}
	for _, g := range c.gws {
		rg := gws[g.name]
		if rg == nil || g.c == nil {
			continue
		}
		for name, info := range g.reg {
			if h, ok := rg.services[name]; !ok || h != info.Healthy {
				errs = append(errs, fmt.Errorf("%s on %s at the relay: registered %t healthy %t, want healthy %t", name, g.name, ok, h, info.Healthy))
			}
		}
		if len(rg.services) != len(g.reg) {
			errs = append(errs, fmt.Errorf("%s has %d services at the relay, %d in the model", g.name, len(rg.services), len(g.reg)))
		}
	}
	return errors.Join(errs...)
}

// checkTags compares the relay's tag table with the model's live tags,
// checks that the table holds nothing of sessions that left and that
// every tag is in its agent's and gateway's sets, that the gateways heard
// of the tags opened and closed, and the flow counts.
func (c *churn) checkTags() error {
	var errs []error
	c.r.mu.RLock()
	defer c.r.mu.RUnlock()
	live := map[uint32]*churnTag{}
	for _, tg := range c.tags {
		if tg.live {
			live[tg.id] = tg
		}
	}
	perAgent, perGateway := 0, 0
	for a := range c.r.agents {
		perAgent += len(a.tags)
	}
	for g := range c.r.gateways {
		perGateway += len(g.tags)
	}
	if perAgent != len(c.r.tags) || perGateway != len(c.r.tags) {
		errs = append(errs, fmt.Errorf("%d tags in the table, %d in the agents' sets, %d in the gateways'", len(c.r.tags), perAgent, perGateway))
	}
	for id, t := range c.r.tags {
		want := live[id]
		_, agentLive := c.r.agents[t.agent]
		_, gwLive := c.r.gateways[t.gw]
		switch {
		case want == nil:
			errs = append(errs, fmt.Errorf("tag %d (%s, %s on %s) is in the table, dead in the model (agent connected %t, gateway %t)",
				id, t.agent.id.Name, t.service, t.gw.name, agentLive, gwLive))
		case !agentLive || !gwLive:
			errs = append(errs, fmt.Errorf("tag %d of a session that left", id))
		case t.agent.s.ID() != sid(want.as) || t.gw.s.ID() != sid(want.gs) || t.service != want.service:
			errs = append(errs, fmt.Errorf("tag %d is session %d, %s on %s at the relay, %s, %s on %s in the model",
				id, t.agent.s.ID(), t.service, t.gw.name, want.agent.label, want.service, want.gw.name))
		case t.gw.tags[id] != t || t.agent.tags[id] != t || t.dead.Load():
			errs = append(errs, fmt.Errorf("tag %d is not in its agent's and gateway's sets", id))
		case !t.gw.admits(t.service, t.agent.id.Tenant):
			errs = append(errs, fmt.Errorf("tag %d: %s does not admit %s", id, t.gw.name, t.agent.id.Tenant))
		}
	}
	for id, tg := range live {
		if c.r.tags[id] == nil {
			errs = append(errs, fmt.Errorf("tag %d (%s, %s on %s) is live in the model, not in the table", id, tg.agent.label, tg.service, tg.gw.name))
		}
	}
	for _, tg := range c.tags {
		if tg.gs != tg.gw.c {
			continue // that gateway session is over
		}
		o := tg.gw.opened[tg.id]
		switch {
		case o == nil:
			errs = append(errs, fmt.Errorf("%s got no tag_open of tag %d", tg.gw.name, tg.id))
		case o.Service != tg.service || o.Tenant != tg.agent.tenant || o.Identity != tg.agent.tenant+"/agent/"+tg.agent.name || o.InnerAddr != innerAddr:
			errs = append(errs, fmt.Errorf("%s's tag_open of tag %d: %+v", tg.gw.name, tg.id, o))
		case tg.live && tg.gw.closed[tg.id]:
			errs = append(errs, fmt.Errorf("%s got a tag_close of live tag %d (%s, %s)", tg.gw.name, tg.id, tg.agent.label, tg.service))
		case tg.closeDue && !tg.gw.closed[tg.id]:
			errs = append(errs, fmt.Errorf("%s got no tag_close of tag %d (%s, %s)", tg.gw.name, tg.id, tg.agent.label, tg.service))
		}
	}

	// Flow table entries: every flow routed once has one, counted by the
	// gateway of its tag while the tag lives.
	flows := map[uint64]int{}
	byGateway := map[uint64]int64{}
	for _, f := range c.flows {
		if f.tag != nil {
			flows[sid(f.as)]++
			if f.tag.live {
				byGateway[sid(f.tag.gs)]++
			}
		}
	}
	for a := range c.r.agents {
		if n := a.flows.len(); n != flows[a.s.ID()] {
			errs = append(errs, fmt.Errorf("%s's session %d has %d flows at the relay, %d in the model", a.id, a.s.ID(), n, flows[a.s.ID()]))
		}
	}
	for g := range c.r.gateways {
		if n := g.flows.Load(); n != byGateway[g.s.ID()] {
			errs = append(errs, fmt.Errorf("%s counts %d flows, the model %d", g.name, n, byGateway[g.s.ID()]))
		}
	}
	return errors.Join(errs...)
}

// wantDirectory is the directory a tenant's agent should have: the served
// names a gateway admits the tenant to, at their VIPs, with the ports and
// ICMP of those gateways, healthy when one of them that is not drained
// reports so.
func (c *churn) wantDirectory(tenant string) []tunnel.DirectoryService {
	out := []tunnel.DirectoryService{}
	for _, name := range churnServices {
		var e *tunnel.DirectoryService
		for _, g := range c.order[name] {
			info := g.reg[name]
			if !newDefinition(info).admits(tenant) {
				continue
			}
			if e == nil {
				e = &tunnel.DirectoryService{Name: name, VIP: c.vips[name], Ports: []tunnel.PortInfo{}}
			}
			for _, p := range info.Ports {
				if !slices.Contains(e.Ports, p) {
					e.Ports = append(e.Ports, p)
				}
			}
			e.ICMP = e.ICMP || info.ICMP
			e.Healthy = e.Healthy || (info.Healthy && !c.drained[g.name])
		}
		if e != nil {
			out = append(out, *e)
		}
	}
	slices.SortFunc(out, func(a, b tunnel.DirectoryService) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// sortedPorts orders ports for comparison: the relay lists them in the
// order its gateways registered.
func sortedPorts(ps []tunnel.PortInfo) []tunnel.PortInfo {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b tunnel.PortInfo) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	return ps
}

func (c *churn) checkDirectories() error {
	var errs []error
	for _, a := range c.agents {
		if a.c == nil || a.v1 {
			continue
		}
		if a.dir == nil {
			errs = append(errs, fmt.Errorf("%s has no directory", a.label))
			continue
		}
		want := slices.DeleteFunc(c.wantDirectory(a.tenant), func(s tunnel.DirectoryService) bool { return !a.permits(s.Name) })
		got := a.dir.Services
		same := len(got) == len(want)
		for i := 0; same && i < len(got); i++ {
			w, g := want[i], got[i]
			same = w.Name == g.Name && w.VIP == g.VIP && w.Healthy == g.Healthy && w.ICMP == g.ICMP &&
				slices.Equal(sortedPorts(w.Ports), sortedPorts(g.Ports))
		}
		if !same {
			errs = append(errs, fmt.Errorf("%s's directory %s, want %s", a.label, dirString(got), dirString(want)))
		}
	}
	return errors.Join(errs...)
}

func dirString(ss []tunnel.DirectoryService) string {
	var parts []string
	for _, s := range ss {
		parts = append(parts, fmt.Sprintf("%s@%v healthy=%t icmp=%t ports=%v", s.Name, s.VIP, s.Healthy, s.ICMP, portList(sortedPorts(s.Ports))))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// apiGet serves a GET of the relay's /v1/ API in process.
func (c *churn) apiGet(path string, into any) error {
	rec := httptest.NewRecorder()
	c.r.v1Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != http.StatusOK {
		return fmt.Errorf("%s: status %d", path, rec.Code)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// checkAPI compares /v1/services and /v1/sessions with the model.
func (c *churn) checkAPI() error {
	var errs []error
	var services struct{ Services []apiService }
	if err := c.apiGet("/v1/services", &services); err != nil {
		return err
	}
	var names []string
	for _, s := range services.Services {
		names = append(names, s.Name)
		order := c.order[s.Name]
		if s.VIP != c.vips[s.Name].String() {
			errs = append(errs, fmt.Errorf("/v1/services: %s at %s, want %v", s.Name, s.VIP, c.vips[s.Name]))
		}
		var got []string
		healthy := false
		for i, g := range s.Gateways {
			got = append(got, g.Name)
			if i >= len(order) {
				continue
			}
			info := order[i].reg[s.Name]
			healthy = healthy || info.Healthy
			state := map[bool]string{true: "healthy", false: "down"}[info.Healthy]
			if c.drained[g.Name] {
				state = "draining"
			}
			if g.Healthy != info.Healthy || g.State != state || !slices.Equal(g.Tenants, info.Tenants) ||
				!slices.Equal(sortedPorts(g.Ports), sortedPorts(info.Ports)) || g.ICMP != info.ICMP {
				errs = append(errs, fmt.Errorf("/v1/services: %s on %s: %+v, registered %+v", s.Name, g.Name, g, info))
			}
		}
		if !slices.Equal(got, gwNames(order)) || s.Healthy != healthy {
			errs = append(errs, fmt.Errorf("/v1/services: %s on %v healthy %t, want on %v healthy %t", s.Name, got, s.Healthy, gwNames(order), healthy))
		}
	}
	var served []string
	for name := range c.order {
		served = append(served, name)
	}
	slices.Sort(served)
	if !slices.Equal(names, served) {
		errs = append(errs, fmt.Errorf("/v1/services lists %v, want %v", names, served))
	}

	var sessions struct{ Sessions []apiSession }
	if err := c.apiGet("/v1/sessions", &sessions); err != nil {
		return err
	}
	want := map[uint64]apiSession{}
	for _, a := range c.agents {
		if a.c == nil {
			continue
		}
		s := apiSession{Session: adminapi.Session{ID: sid(a.c), Role: roleAgent, Identity: a.tenant + "/agent/" + a.name, Tenant: a.tenant,
			Inner: a.inner(), Version: map[bool]string{true: tunnel.ALPNV1, false: tunnel.ALPNV2}[a.v1]}}
		for _, tg := range c.tags {
			if tg.live && tg.as == a.c {
				s.Tags++
			}
		}
		for _, f := range c.flows {
			if f.as == a.c && f.tag != nil {
				s.Flows++
			}
		}
		want[s.ID] = s
	}
	for _, g := range c.gws {
		if g.c == nil {
			continue
		}
		s := apiSession{Session: adminapi.Session{ID: sid(g.c), Role: roleGateway, Identity: "ops/gateway/" + g.name, Tenant: "ops",
			Version: tunnel.ALPNV2}, Services: servicesNames(g)}
		for _, tg := range c.tags {
			if tg.live && tg.gs == g.c {
				s.Tags++
			}
		}
		want[s.ID] = s
	}
	got := map[uint64]apiSession{}
	for _, s := range sessions.Sessions {
		if _, dup := got[s.ID]; dup {
			errs = append(errs, fmt.Errorf("/v1/sessions lists session %d twice", s.ID))
		}
		got[s.ID] = s
	}
	for id, w := range want {
		g, ok := got[id]
		if !ok || g.Role != w.Role || g.Identity != w.Identity || g.Tenant != w.Tenant || g.Inner != w.Inner || g.Version != w.Version ||
			g.Tags != w.Tags || g.Flows != w.Flows || !slices.Equal(g.Services, w.Services) {
			errs = append(errs, fmt.Errorf("/v1/sessions: session %d is %+v, want %+v", id, g, w))
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok {
			errs = append(errs, fmt.Errorf("/v1/sessions lists session %d of %s, which left", id, g.Identity))
		}
	}
	return errors.Join(errs...)
}

// servicesNames is the sorted names g registered, nil for none (as the
// API omits an empty list).
func servicesNames(g *churnGateway) []string {
	var out []string
	for name := range g.reg {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// finish ends every session and checks that the relay keeps nothing of
// them: no session, no tag, no service, no VIP allocated but the pins.
func (c *churn) finish(steps int) {
	c.t.Helper()
	c.logf("finish")
	for _, a := range c.agents {
		if a.c != nil {
			c.leave(a)
		}
	}
	for _, g := range c.gws {
		if g.c != nil {
			g.c.close()
			c.gatewayGone(g)
		}
	}
	c.settle()
	c.r.mu.RLock()
	defer c.r.mu.RUnlock()
	if len(c.r.tags) != 0 || len(c.r.services) != 0 || len(c.r.agents) != 0 || len(c.r.gateways) != 0 || len(c.r.byIdentity) != 0 {
		c.fatalf("the relay keeps %d tags, %d services, %d agents, %d gateways, %d identities",
			len(c.r.tags), len(c.r.services), len(c.r.agents), len(c.r.gateways), len(c.r.byIdentity))
	}
	if used, _, _ := c.r.pool.Usage(); used != len(churnPins) {
		c.fatalf("the pool allocates %d VIPs with no service but %d pinned", used, len(churnPins))
	}
	var stats []string
	for k, n := range c.stats {
		stats = append(stats, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(stats)
	c.t.Logf("%d steps, %d tags: %s", steps, len(c.tags), strings.Join(stats, ", "))
}
