package relay

import (
	"bytes"
	"errors"
	"fmt"
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

// The legacy test runs the churn test's gateways and agents (churn_test.go)
// with ztna-v1 agents of the original system among them: legacy
// certificates (per-service DNS SANs, the wildcard) and URI identities of
// whole tenants, several sessions of one certificate with one inner
// address, registrations valid, denied and malformed, routed packets for
// services registered or not, raw IP both ways, stray types, spoofed
// sources, return packets with a wrong source or destination, sessions the
// relay must refuse. After every step or two the relay must agree with the
// churn's model and with its own: registration answers byte for byte,
// where every packet went (a return packet only ever reaches the session
// whose flow it answers), every drop counter by reason, registrations and
// refusals by result, QAD, /v1/sessions. ZTGATE_LEGACY_SEED=<seed>
// replays a run.
const (
	legacySeedEnv = "ZTGATE_LEGACY_SEED"
	legacySteps   = 500
)

// legacyTest is a churn with ztna-v1 agents and the model of what only
// they do.
type legacyTest struct {
	*churn
	regs     map[string]float64 // agent registrations by result
	refusals map[string]float64 // sessions refused by reason
	refused  []*client          // sessions the relay refused: must end
	// bad are certificates the relay must refuse on either version, with
	// the refusal reason for ztna-v1 and for ztna-v2.
	bad []legacyRefusal
}

type legacyRefusal struct {
	label  string
	creds  *tunnel.Credentials
	v1, v2 string
}

// TestLegacyRandom: see legacySeedEnv.
func TestLegacyRandom(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) }) // the last cleanup: after the relay and every session closed
	seed := testseed.Get(t, legacySeedEnv)
	c := newChurn(t, seed)
	c.moreTenants = []string{tunnel.DefaultTenant}
	l := &legacyTest{churn: c, regs: map[string]float64{}, refusals: map[string]float64{}}
	c.checkMore = l.check
	l.addPeers()
	c.run(legacySteps, []churnOp{
		{5, "gateway connects", c.gatewayConnect, false},
		{2, "gateway reconnects", c.gatewayReconnect, false},
		{2, "gateway leaves", c.gatewayLeave, false},
		{12, "gateway registers", c.gatewayRegister, false},
		{5, "gateway reports health", c.gatewayHealth, false},
		{3, "service moves", c.serviceMove, false},
		{2, "gateway drained or undrained", c.gatewayDrain, true},
		{8, "agent connects", c.agentConnect, false},
		{4, "agent leaves", c.agentLeave, false},
		{18, "v1 agent registers", l.register, true},
		{6, "v1 agent sends a bad registration", l.badRegistration, true},
		{10, "new flow", c.flowOpen, true},
		{10, "new flow of a v1 agent to a service it registered", l.registeredFlow, true},
		{12, "flow packet", c.flowPacket, true},
		{3, "flow closes", c.flowClose, true},
		{12, "return packets", c.returnPackets, true},
		{4, "return packet to another address", l.strayReturn, true},
		{3, "raw IP packet", l.rawIP, true},
		{4, "stray datagram from an agent", l.strayDatagram, true},
		{2, "spoofed packet", l.spoofed, true},
		{2, "refused session", l.refusedSession, true},
		{2, "clock advances", c.clockAdvance, true},
	})
}

// addPeers adds the ztna-v1 agents (and a ztna-v2 agent of a legacy
// certificate) to the churn's, and the certificates the relay refuses.
func (l *legacyTest) addPeers() {
	p := l.p
	legacy := func(cn string, services ...string) *tunnel.Credentials {
		var sans []string
		for _, s := range services {
			sans = append(sans, "agent."+s+".ztna")
		}
		return p.creds(p.ca, tunnel.IssueRequest{Name: cn, NoIdentity: true, LegacySANs: sans})
	}
	web := &churnAgent{label: "mac-web", name: "mac-web", tenant: tunnel.DefaultTenant, v1: true,
		creds: legacy("mac-web", "web", "db"), rights: []string{"db", "web"}}
	twin := *web // one certificate on two Macs, both with the inner address 100.64.0.1
	twin.label += "'"
	agents := []*churnAgent{
		web, &twin,
		{label: "mac-all", name: "mac-all", tenant: tunnel.DefaultTenant, v1: true, creds: legacy("mac-all", "*")},
		{label: "pc-default", name: "pc-default", tenant: tunnel.DefaultTenant, v1: true,
			creds: p.identity(tunnel.DefaultTenant, tunnel.RoleAgent, "pc-default")},
		{label: "acme-v1", name: "acme-v1", tenant: "acme", v1: true,
			creds: p.identity("acme", tunnel.RoleAgent, "acme-v1")},
		// A certificate of the original system on a ztgate agent (ztna-v2).
		{label: "linux-dns", name: "linux-dns", tenant: tunnel.DefaultTenant,
			creds: legacy("linux-dns", "dns"), rights: []string{"dns"}},
	}
	l.agents = append(l.agents, agents...)
	connector := p.creds(p.ca, tunnel.IssueRequest{Name: "conn-web", NoIdentity: true, LegacySANs: []string{"connector.web.ztna"}})
	l.bad = []legacyRefusal{
		{"a connector of the original system", connector, refuseVersion, refuseWrongRole},
		{"a gateway", p.identity("ops", tunnel.RoleGateway, "gw9"), refuseVersion, refuseWrongRole},
		{"a relay", p.identity("ops", tunnel.RoleRelay, "relay9"), refuseWrongRole, refuseWrongRole},
	}
}

// dialV1 connects a ztna-v1 agent and finds its session at the relay (a
// ztna-v1 session has no welcome that tells its id).
func (c *churn) dialV1(a *churnAgent) {
	c.t.Helper()
	a.c = mustDial(c.t, c.addr, a.creds, tunnel.Hello{}, tunnel.ALPNV1)
	if a.c.s.Version() != tunnel.V1 {
		c.fatalf("%s: version %v", a.label, a.c.s.Version())
	}
	known := map[uint64]bool{}
	for _, o := range c.agents {
		if o.c != nil && o != a {
			known[sid(o.c)] = true
		}
	}
	deadline := time.Now().Add(churnSettle)
	for a.c.id == 0 {
		known[0] = true
		c.r.mu.RLock()
		for ra := range c.r.agents {
			// A session of the model's is known; one that left may linger.
			if id := ra.s.ID(); ra.s.Version() == tunnel.V1 && !known[id] && ra.s.Err() == nil && !c.everV1(id) {
				a.c.id = id
			}
		}
		c.r.mu.RUnlock()
		if time.Now().After(deadline) {
			c.fatalf("%s's ztna-v1 session is not at the relay", a.label)
		}
		time.Sleep(time.Millisecond)
	}
	c.v1Seen = append(c.v1Seen, a.c.id)
}

// everV1 reports whether id was a v1 session of the model's before.
func (c *churn) everV1(id uint64) bool { return slices.Contains(c.v1Seen, id) }

// permitted reports whether the relay ACKs a's registration of name: its
// certificate grants the service, and a certificate of a whole tenant gets
// ACK only for a name the relay knows: served to its tenant, or served to
// none but pinned or held, and its tenant admitted by the last definition
// of its last gateway (when it had one since the relay started).
func (l *legacyTest) permitted(a *churnAgent, name string) bool {
	if !a.permits(name) {
		return false
	}
	if a.rights != nil {
		return true
	}
	if gws, served := l.order[name]; served { // its tenant's service, or another's
		return slices.ContainsFunc(gws, func(g *churnGateway) bool { return newDefinition(g.reg[name]).admits(a.tenant) })
	}
	if last, ok := l.lastDef[name]; ok && !newDefinition(last).admits(a.tenant) {
		return false
	}
	_, pinned := churnPins[name]
	released, ok := l.released[name]
	return pinned || (ok && l.clock().Sub(released) < l.holdDown)
}

// registrationNames are the names v1 agents register: the churn's
// services, one never served, one of the upper case, and the longest.
var registrationNames = append(slices.Clone(churnServices), "nope", "WEB", strings.Repeat("x", 255))

// register: a v1 agent registers a service; the answer is ACK or NACK
// denied, byte for byte.
func (l *legacyTest) register() bool {
	a := testseed.Pick(l.rng, l.agents, func(a *churnAgent) bool { return a.v1 && a.c != nil })
	if a == nil {
		return false
	}
	name := registrationNames[l.rng.IntN(len(registrationNames))]
	req, err := tunnel.AppendRegistration(nil, tunnel.TypeAgentRegistration, name)
	if err != nil {
		l.fatalf("registration of %q: %v", name, err)
	}
	if l.permitted(a, name) {
		want, _ := tunnel.AppendAck(nil, name)
		l.logf("  %s registers %.20s: ACK", a.label, name)
		l.answer(a, req, want, regOK)
		a.registered[name] = true
		return true
	}
	want, _ := tunnel.AppendNack(nil, tunnel.StatusDenied, name)
	l.logf("  %s registers %.20s: NACK denied", a.label, name)
	l.answer(a, req, want, regDenied)
	return true
}

// registeredFlow: a v1 agent opens a flow to a service it registered,
// mostly one its tenant may reach.
func (l *legacyTest) registeredFlow() bool {
	a := testseed.Pick(l.rng, l.agents, func(a *churnAgent) bool { return a.v1 && a.c != nil && len(a.registered) > 0 })
	if a == nil {
		return false
	}
	var names, reachable []string
	for name := range a.registered {
		names = append(names, name)
		if slices.ContainsFunc(l.wantDirectory(a.tenant), func(s tunnel.DirectoryService) bool { return s.Name == name }) {
			reachable = append(reachable, name)
		}
	}
	slices.Sort(names)
	slices.Sort(reachable)
	if len(reachable) > 0 && l.rng.IntN(4) != 0 {
		names = reachable
	}
	l.openFlow(a, names[l.rng.IntN(len(names))])
	return true
}

// badRegistration: a v1 agent sends a connector registration (NACK
// denied), one whose id is empty or not UTF-8 (NACK invalid, empty id), or
// one whose length is wrong (dropped as malformed, unanswered).
func (l *legacyTest) badRegistration() bool {
	a := testseed.Pick(l.rng, l.agents, func(a *churnAgent) bool { return a.v1 && a.c != nil })
	if a == nil {
		return false
	}
	name := churnServices[l.rng.IntN(len(churnServices))]
	invalid := []byte("\x13\x01\x00")
	cases := []struct {
		what    string
		req     []byte
		want    []byte // nil: dropped as malformed
		result  string
		enabled bool
	}{
		{"a connector registration", append([]byte{0x11, byte(len(name))}, name...),
			append([]byte{0x13, 0x02, byte(len(name))}, name...), regDenied, true},
		{"an empty id", []byte("\x10\x00"), invalid, regBadID, true},
		{"an empty connector id", []byte("\x11\x00"), invalid, regBadID, true},
		{"a non-UTF-8 id", []byte("\x10\x02\xff\xfe"), invalid, regBadID, true},
		{"a non-UTF-8 connector id", []byte("\x11\x03we\xc3"), invalid, regBadID, true},
		{"a truncated id", []byte("\x10\x05web"), nil, "", true},
		{"bytes after the id", []byte("\x10\x03webx"), nil, "", true},
		{"no length", []byte("\x10"), nil, "", true},
		{"a connector registration longer than its datagram", append([]byte{0x11, 0xff}, strings.Repeat("y", 200)...), nil, "", true},
	}
	tc := cases[l.rng.IntN(len(cases))]
	l.logf("  %s sends %s: % .12x", a.label, tc.what, tc.req)
	send := func() { _ = a.c.s.SendDatagram(tc.req) }
	if tc.want == nil {
		l.expectDrop(dropMalformed, true, send)
		return true
	}
	l.answer(a, tc.req, tc.want, tc.result)
	return true
}

// answer sends a registration until its answer arrives, checks that the
// relay counted every copy it sent under result, and that the answer is
// want, byte for byte (agentDatagrams fails on any other).
func (l *legacyTest) answer(a *churnAgent, req, want []byte, result string) {
	l.t.Helper()
	a.answers[string(want)] = true
	counter := l.r.m.registrations.WithLabelValues(roleAgent, result)
	before, copies := testutil.ToFloat64(counter), 1
	send := func() {
		if err := a.c.s.SendDatagram(req); err != nil {
			l.fatalf("%s: %v", a.label, err)
		}
	}
	send()
	deadline, resend := time.Now().Add(churnSettle), time.Now().Add(churnResend)
	for got := false; !got; {
		for _, text := range l.agentDatagrams(a) {
			got = got || text == string(want)
		}
		if !got && time.Now().After(deadline) {
			l.fatalf("%s: no answer % .16x to % .16x after %d copies", a.label, want, req, copies)
		}
		if !got && time.Now().After(resend) {
			send()
			copies++
			resend = time.Now().Add(churnResend)
		}
		time.Sleep(time.Millisecond)
	}
	for testutil.ToFloat64(counter) < before+float64(copies) {
		if time.Now().After(deadline) {
			l.fatalf("%s: the relay counted %v of %d registrations as %s", a.label, testutil.ToFloat64(counter)-before, copies, result)
		}
		time.Sleep(time.Millisecond)
	}
	l.regs[result] += float64(copies)
	l.stats["registrations "+result]++
}

// rawIP: an agent's raw IP packet is dropped (the relay cannot tell whose
// service it is), and so is a gateway's (it cannot tell whose agent).
func (l *legacyTest) rawIP() bool {
	pkt := udpPacket(netip.AddrPortFrom(innerAddr, 4000), netip.AddrPortFrom(netip.MustParseAddr("10.100.0.1"), 7), "raw")
	if g := testseed.Pick(l.rng, l.gws, (*churnGateway).connected); g != nil && l.rng.IntN(2) == 0 {
		l.logf("  %s sends a raw IP packet", g.name)
		reply := udpPacket(netip.AddrPortFrom(netip.MustParseAddr("10.100.0.1"), 7), netip.AddrPortFrom(innerAddr, 4000), "raw")
		l.expectDrop(dropUnexpected, false, func() { _ = g.c.s.SendDatagram(reply) })
		return true
	}
	a := testseed.Pick(l.rng, l.agents, (*churnAgent).connected)
	if a == nil {
		return false
	}
	l.logf("  %s sends a raw IP packet", a.label)
	l.expectDrop(dropRawFromAgent, true, func() { _ = a.c.s.SendDatagram(pkt) })
	return true
}

// strayDatagram: an agent sends what only the relay or a gateway sends,
// a type that does not exist, a registration on ztna-v2, or a 0x2F that is
// not a service and an IP packet.
func (l *legacyTest) strayDatagram() bool {
	a := testseed.Pick(l.rng, l.agents, (*churnAgent).connected)
	if a == nil {
		return false
	}
	pkt := udpPacket(netip.AddrPortFrom(innerAddr, 4000), netip.AddrPortFrom(netip.MustParseAddr("10.100.0.1"), 7), "stray")
	cases := []struct {
		what   string
		b      []byte
		reason dropReason
	}{
		{"a QAD", []byte("\x01\xcb\x00\x71\x05\xd4\x31"), dropUnexpected},
		{"an ACK", []byte("\x12\x00\x03web"), dropUnexpected},
		{"a NACK", []byte("\x13\x02\x03web"), dropUnexpected},
		{"a 0x30", must(tunnel.AppendTagged(nil, 7, "web", pkt)), dropUnexpected},
		{"a 0x31", tunnel.AppendTagReturn(nil, 7, pkt), dropUnexpected},
		{"type 0x20", []byte("\x20abc"), dropUnexpected},
		{"an empty datagram", []byte{}, dropUnexpected},
		{"a 0x2F of an empty id", append([]byte("\x2f\x00"), pkt...), dropMalformed},
		{"a 0x2F of a non-UTF-8 id", append([]byte("\x2f\x02\xff\xfe"), pkt...), dropMalformed},
		{"a truncated 0x2F", []byte("\x2f\x09web"), dropMalformed},
		{"a 0x2F without a packet", []byte("\x2f\x03web"), dropMalformed},
		{"a 0x2F of a short packet", append([]byte("\x2f\x03web"), pkt[:12]...), dropMalformed},
		{"a 0x2F of no IP packet", append([]byte("\x2f\x03web\x99"), pkt[1:]...), dropMalformed},
	}
	if !a.v1 {
		cases = append(cases,
			struct {
				what   string
				b      []byte
				reason dropReason
			}{"a registration", []byte("\x10\x03web"), dropUnexpected},
			struct {
				what   string
				b      []byte
				reason dropReason
			}{"a connector registration", []byte("\x11\x03web"), dropUnexpected})
	}
	tc := cases[l.rng.IntN(len(cases))]
	if len(tc.b) == 0 && !a.v1 {
		return false // a ztna-v2 peer's empty datagram is padding's concern, not the relay's
	}
	l.logf("  %s sends %s", a.label, tc.what)
	l.expectDrop(tc.reason, true, func() { _ = a.c.s.SendDatagram(tc.b) })
	return true
}

// spoofed: an agent whose inner address is known sends from another.
func (l *legacyTest) spoofed() bool {
	a := testseed.Pick(l.rng, l.agents, func(a *churnAgent) bool { return a.c != nil && (!a.v1 || a.pinned) })
	if a == nil {
		return false
	}
	name := churnServices[l.rng.IntN(len(churnServices))]
	pkt := udpPacket(netip.MustParseAddrPort("100.64.0.2:4000"), netip.AddrPortFrom(netip.MustParseAddr("10.100.0.1"), 7), "spoof")
	l.logf("  %s sends from 100.64.0.2 to %s", a.label, name)
	l.expectDrop(dropSpoofed, true, func() { a.c.send(name, pkt) })
	return true
}

// strayReturn: a gateway returns a packet under its live tag to another
// inner address than the agent's, or from another address than the
// service's VIP: neither may reach any agent.
func (l *legacyTest) strayReturn() bool {
	tg := testseed.Pick(l.rng, l.tags, func(tg *churnTag) bool { return tg.live && tg.gw.c != nil })
	if tg == nil {
		return false
	}
	vip := l.vips[tg.service]
	src, dst, reason := vip, netip.MustParseAddr("100.64.0.9"), dropWrongDestination
	if l.rng.IntN(2) == 0 {
		src, dst, reason = netip.MustParseAddr("10.100.0.250"), innerAddr, dropWrongSource
	}
	l.logf("  %s returns a packet %v → %v under tag %d (%s)", tg.gw.name, src, dst, tg.id, tg.agent.label)
	dg := tunnel.AppendTagReturn(nil, tg.id, udpPacket(netip.AddrPortFrom(src, 7), netip.AddrPortFrom(dst, 9), "stray"))
	l.expectDrop(reason, false, func() { _ = tg.gw.c.s.SendDatagram(dg) })
	return true
}

// refusedSession: a certificate of a connector, a gateway or a relay on
// ztna-v1 (or as an agent on ztna-v2) is refused after the handshake.
func (l *legacyTest) refusedSession() bool {
	b := l.bad[l.rng.IntN(len(l.bad))]
	v1 := l.rng.IntN(2) == 0
	reason := b.v2
	alpn, hello := tunnel.ALPNV2, agentHello("intruder")
	if v1 {
		reason, alpn, hello = b.v1, tunnel.ALPNV1, tunnel.Hello{}
	}
	l.logf("  %s dials with %s: refused %s", b.label, alpn, reason)
	c, err := dial(l.t, l.addr, b.creds, hello, alpn)
	l.refusals[reason]++
	if err == nil {
		l.refused = append(l.refused, c)
	}
	return true
}

// check compares what only the legacy test models: every drop counter,
// registrations and refusals by result, refused sessions ended, every
// agent's QAD.
func (l *legacyTest) check() error {
	var errs []error
	for reason := range numDropReasons {
		if got, want := dropped(l.r, reason), l.drops[reason]; got != want {
			errs = append(errs, fmt.Errorf("dropped as %s: %v, the model %v", reason, got, want))
		}
	}
	for _, result := range []string{regOK, regDenied, regBadID} {
		if got, want := testutil.ToFloat64(l.r.m.registrations.WithLabelValues(roleAgent, result)), l.regs[result]; got != want {
			errs = append(errs, fmt.Errorf("agent registrations %s: %v, the model %v", result, got, want))
		}
	}
	for _, reason := range []string{refuseWrongRole, refuseBadHello, refuseNoIdentity, refuseVersion, refuseTooManySessions} {
		if got, want := testutil.ToFloat64(l.r.m.refusals.WithLabelValues(reason)), l.refusals[reason]; got != want {
			errs = append(errs, fmt.Errorf("sessions refused as %s: %v, the model %v", reason, got, want))
		}
	}
	for _, c := range l.refused {
		if c.s.Err() == nil {
			errs = append(errs, errors.New("a refused session is still open"))
		}
	}
	remote := map[uint64]netip.AddrPort{}
	l.r.mu.RLock()
	for ra := range l.r.agents {
		remote[ra.s.ID()] = ra.s.RemoteAddr()
	}
	l.r.mu.RUnlock()
	for _, a := range l.agents {
		if a.c == nil {
			continue
		}
		want, _ := tunnel.AppendQAD(nil, remote[sid(a.c)])
		if got := a.c.qad.Load(); got == nil || !bytes.Equal(*got, want) {
			errs = append(errs, fmt.Errorf("%s's QAD is %x, want %x", a.label, got, want))
		}
	}
	return errors.Join(errs...)
}

// must returns b, failing on err (for encodings that cannot fail).
func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
