package gateway

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testseed"

	"go.uber.org/goleak"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// The services of TestTunnelSideRandom and the VIPs the fake relay assigns
// them: echo (acme; UDP 7 to an echo, TCP 8 to a line echo, ICMP) and web
// (globex; UDP 7 to another echo, icmp = false: ICMP is on by default).
var (
	trEchoVIP = netip.MustParseAddr("10.200.0.10")
	trWebVIP  = netip.MustParseAddr("10.200.0.11")
	trPool    = netip.MustParsePrefix("10.200.0.0/16")
)

// trTag is the model of one tag the fake relay opened.
type trTag struct {
	gen      int // the relay session it belongs to
	id       uint32
	service  string // as its tag_open named it
	tenant   string
	identity string
	inner    netip.Addr
	synth    netip.Addr // its ingress, once open
	live     bool
	// kind: "ok" (the gateway serves service to tenant), "ghost" (a
	// service the gateway does not serve), "denied" (a tenant the service
	// does not admit).
	kind string
}

// trKey names a tag in a relay session.
type trKey struct {
	gen int
	id  uint32
}

// trReply is a 0x31 the fake relay received.
type trReply struct {
	gen int
	tag uint32
	pkt []byte
}

// trExpect is a reply the model waits for: under tag, to dst, count times.
type trExpect struct {
	key   trKey
	dst   netip.AddrPort
	want  int
	got   int
	order int // its place among the tag's held packets (-1: none)
}

// trModel is TestTunnelSideRandom's state.
type trModel struct {
	t       *testing.T
	g       *Gateway
	rng     *rand.Rand
	gen     int
	session *tunnel.Session
	cancel  context.CancelFunc // ends the session's readers
	replies chan trReply
	tags    map[trKey]*trTag
	// expected replies by token (UDP and ping payloads) and by TCP key.
	expect    map[string]*trExpect
	forbidden map[string]bool // tokens whose packets must reach no one
	heldOrder map[trKey][]int // the order of the held packets' echoes received
	// drops: the exact ztgate_packets_dropped_total of the checked reasons;
	// unknownSure the unknown_tag drops certain by now, held the packets
	// held for unannounced tags (counted once they are given up).
	drops       map[string]float64
	refused     map[[2]string]float64
	unknownSure float64
	held        map[trKey][]string // tokens held, in order
	heldSince   map[trKey]time.Time
	seq         int
}

var trDropReasons = []string{"spoofed_source", "wrong_service", "malformed", "not_ipv4", "malformed_datagram", "unexpected_datagram"}

var trRefusals = [][2]string{
	{"udp", refuseTenant}, {"udp", refusePort}, {"tcp", refusePort}, {"tcp", refuseTenant},
	{"icmp", refuseICMP}, {"icmp", refuseTenant},
}

// TestTunnelSideRandom drives a gateway attached to a fake relay with a
// seeded random sequence of tag_opens (valid, for a service the gateway
// does not serve, for a tenant the service does not admit), tag_closes
// (live, dead and unknown tags, in batches), tagged packets (UDP, TCP, ICMP
// to the VIPs, allowed and not; under live, closed and unknown tags; ones
// that overtake their tag_open; spoofed sources; duplicates; malformed
// ones) and relay session losses, and checks after every step, against a
// model, which packets reach a backend, which are dropped and counted and
// how, that every reply goes back under the tag that sent the packet it
// answers and to that tag's inner address, and the API's flows.
// ZTGATE_TUNNELSIDE_SEED replays a seed.
func TestTunnelSideRandom(t *testing.T) {
	seed := testseed.Get(t, "ZTGATE_TUNNELSIDE_SEED")
	dir := t.TempDir()
	_, ca := writePKI(t, dir)
	relayCtx, relayCancel := context.WithCancel(context.Background())
	addr, sessions, stopRelay := trRelay(t, relayCtx, dir, ca)
	udp1, udp2, line := startUDPEcho(t), startUDPEcho(t), startLineEcho(t, "echo")
	before := goleak.IgnoreCurrent() // the backends end after the test
	cfg, err := conf.ParseGateway("test.toml", []byte(strings.ReplaceAll(quietGateway, "STATE", dir)+twoTenants+fmt.Sprintf(`
[[service]]
name = "echo"
tenants = ["acme"]
backends = ["127.0.0.1"]
icmp = true
  [[service.port]]
  protocol = "udp"
  port = 7
  target = %d
  [[service.port]]
  protocol = "tcp"
  port = 8
  target = %d
  [service.health]
  type = "none"
[[service]]
name = "web"
tenants = ["globex"]
backends = ["127.0.0.1"]
icmp = false
  [[service.port]]
  protocol = "udp"
  port = 7
  target = %d
  [service.health]
  type = "none"
[tunnel]
relay = %q
cert = %q
key = %q
ca = %q
`, udp1, line, udp2, addr, filepath.Join(dir, "gw.crt"), filepath.Join(dir, "gw.key"), filepath.Join(dir, "ca.crt"))))
	if err != nil {
		t.Fatal(err)
	}
	gw, err := New(cfg, Options{Pinger: fakePinger{up: map[netip.Addr]bool{netip.MustParseAddr("127.0.0.1"): true}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	m := &trModel{t: t, g: gw, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), replies: make(chan trReply, 4096),
		tags: map[trKey]*trTag{}, expect: map[string]*trExpect{}, forbidden: map[string]bool{},
		heldOrder: map[trKey][]int{}, drops: map[string]float64{}, refused: map[[2]string]float64{},
		held: map[trKey][]string{}, heldSince: map[trKey]time.Time{}}
	for _, r := range trDropReasons {
		m.drops[r] = m.dropped(r)
	}
	for _, r := range trRefusals {
		m.refused[r] = m.refusedN(r)
	}
	m.unknownSure = m.dropped("unknown_tag")
	closed := false
	defer func() {
		if !closed {
			if m.cancel != nil {
				m.cancel()
			}
			gw.Close()
			stopRelay()
		}
	}()
	m.connect(sessions)

	const steps = 300
	for step := range steps {
		m.step(step, sessions)
		if t.Failed() {
			t.Fatalf("seed %d: failed at step %d", seed, step)
		}
	}
	// The end: the session's loss gives up every held packet.
	m.loseSession(sessions, false)
	time.Sleep(100 * time.Millisecond)
	m.absorb()
	if t.Failed() {
		t.Fatalf("seed %d: failed at the end", seed)
	}
	closed = true
	gw.Close()
	stopRelay()
	relayCancel()
	goleak.VerifyNone(t, before, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"))
}

// trRelay listens as a relay; each session it accepts is welcomed and
// handed over. stop ends the listener and waits for its goroutine.
func trRelay(t *testing.T, ctx context.Context, dir string, ca *tunnel.CA) (string, <-chan *tunnel.Session, func()) {
	t.Helper()
	ln := relayListener(t, dir, ca)
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan *tunnel.Session, 4)
	done := make(chan struct{})
	var all []*tunnel.Session
	go func() {
		defer close(done)
		for {
			s, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			s.SendWelcome(tunnel.Welcome{MaxPacket: 1200})
			all = append(all, s)
			ch <- s
		}
	}()
	return ln.Addr().String(), ch, func() {
		cancel()
		ln.Close()
		<-done
		for _, s := range all {
			s.Close("test over")
		}
	}
}

// connect takes the gateway's next relay session, reads its control
// messages and replies, and assigns the VIPs.
func (m *trModel) connect(sessions <-chan *tunnel.Session) {
	m.t.Helper()
	var s *tunnel.Session
	select {
	case s = <-sessions:
	case <-time.After(15 * time.Second):
		m.t.Fatal("the gateway did not connect to the relay")
	}
	m.gen++
	m.session = s
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	gen := m.gen
	go func() {
		for {
			if _, err := tunnel.DecodeControl(s.Next()); err != nil && s.Err() != nil {
				return
			}
		}
	}()
	go tagReturns(ctx, s, func(tag uint32, pkt []byte) bool {
		select {
		case m.replies <- trReply{gen: gen, tag: tag, pkt: pkt}:
			return true
		case <-ctx.Done():
			return false
		}
	})
	if err := s.Send(tunnel.Assign{Type: tunnel.MessageAssign, Pool: trPool, VIPs: []tunnel.VIPAssignment{
		{Service: "echo", VIP: trEchoVIP}, {Service: "web", VIP: trWebVIP},
	}}); err != nil {
		m.t.Fatal(err)
	}
	m.waitFor("the VIPs assigned", func() bool {
		t := m.g.tbl.Load()
		return t.lookupVIP(trEchoVIP) != nil && t.lookupVIP(trWebVIP) != nil
	})
}

func (m *trModel) waitFor(what string, cond func() bool) {
	m.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			m.t.Fatalf("gen %d: %s: not within 10 s", m.gen, what)
		}
		m.absorb()
		time.Sleep(2 * time.Millisecond)
	}
}

func (m *trModel) dropped(reason string) float64 {
	return testutil.ToFloat64(m.g.m.dropped.WithLabelValues(reason)) // ztgate_packets_dropped_total
}

func (m *trModel) refusedN(r [2]string) float64 {
	return testutil.ToFloat64(m.g.m.flowsRefused.WithLabelValues(r[0], r[1])) // ztgate_flows_refused_total
}

// tagIngress returns the open ingress of tag, nil when there is none.
func (m *trModel) tagIngress(tag uint32) *ingress {
	m.g.ingresses.mu.RLock()
	defer m.g.ingresses.mu.RUnlock()
	for _, in := range m.g.ingresses.bySynth {
		if in.tagged && in.tag == tag && !in.closed.Load() {
			return in
		}
	}
	return nil
}

// newTagID draws a tag number not used yet in this session.
func (m *trModel) newTagID() uint32 {
	for {
		id := m.rng.Uint32()
		if _, used := m.tags[trKey{m.gen, id}]; id != 0 && !used && m.held[trKey{m.gen, id}] == nil {
			return id
		}
	}
}

var trInners = []netip.Addr{
	netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.64.7.9"),
}

// randomOpen makes a tag of a random kind (not sent yet).
func (m *trModel) randomOpen(id uint32) *trTag {
	tg := &trTag{gen: m.gen, id: id, inner: trInners[m.rng.IntN(len(trInners))], kind: "ok"}
	switch r := m.rng.IntN(10); {
	case r < 4:
		tg.service, tg.tenant = "echo", "acme"
	case r < 7:
		tg.service, tg.tenant = "web", "globex"
	case r < 8:
		tg.service, tg.tenant, tg.kind = "ghost", "acme", "ghost"
	case r < 9:
		tg.service, tg.tenant, tg.kind = "echo", "globex", "denied"
	default:
		tg.service, tg.tenant, tg.kind = "web", "acme", "denied"
	}
	tg.identity = fmt.Sprintf("ztna://%s/agent/a%d", tg.tenant, m.rng.IntN(3))
	return tg
}

// open sends tg's tag_open and waits for its ingress; the packets held
// for it are delivered, or given up when they waited too long.
func (m *trModel) open(tg *trTag) {
	m.t.Helper()
	key := trKey{tg.gen, tg.id}
	// Known before it is sent: the held packets' echoes may come back
	// before the model sees the ingress.
	m.tags[key] = tg
	if toks := m.held[key]; toks != nil {
		delete(m.held, key)
		delete(m.heldSince, key)
		for i, tok := range toks {
			e := m.expect[tok]
			e.want, e.order = 1, i
		}
	}
	if err := m.session.Send(tunnel.TagOpen{Type: tunnel.MessageTagOpen, Tag: tg.id, Service: tg.service,
		Tenant: tg.tenant, Identity: tg.identity, InnerAddr: tg.inner}); err != nil {
		m.t.Fatal(err)
	}
	var in *ingress
	m.waitFor(fmt.Sprintf("tag %08x open", tg.id), func() bool { in = m.tagIngress(tg.id); return in != nil })
	if in.peer.tenant != tg.tenant || in.peer.identity != tg.identity || in.innerAddr() != tg.inner || in.service != tg.service {
		m.t.Errorf("tag %08x: ingress %+v, want %+v", tg.id, in.peer, tg)
	}
	tg.synth, tg.live = in.synth, true
}

// token is a unique payload of the model's step.
func (m *trModel) token(key trKey) string {
	m.seq++
	return fmt.Sprintf("g%d-t%08x-%d", key.gen, key.id, m.seq)
}

// sendTagged sends a 0x30 of tag carrying pkt.
func (m *trModel) sendTagged(tag uint32, service string, pkt []byte) {
	m.t.Helper()
	b, err := tunnel.AppendTagged(nil, tag, service, pkt)
	if err != nil {
		m.t.Fatal(err)
	}
	if err := m.session.SendDatagram(b); err != nil {
		m.t.Fatalf("send: %v", err)
	}
}

func (m *trModel) liveTags(pred func(*trTag) bool) []*trTag {
	var out []*trTag
	for _, tg := range m.tags {
		if tg.live && tg.gen == m.gen && (pred == nil || pred(tg)) {
			out = append(out, tg)
		}
	}
	slices.SortFunc(out, func(a, b *trTag) int { return int(a.id>>1) - int(b.id>>1) })
	return out
}

func (m *trModel) deadTags() []*trTag {
	var out []*trTag
	for _, tg := range m.tags {
		if !tg.live && tg.gen == m.gen {
			out = append(out, tg)
		}
	}
	slices.SortFunc(out, func(a, b *trTag) int { return int(a.id>>1) - int(b.id>>1) })
	return out
}

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

func vipOf(service string) netip.Addr {
	if service == "web" {
		return trWebVIP
	}
	return trEchoVIP
}

// udp sends a UDP datagram of a live tag to its service's port 7 (or an
// unmapped port), from its inner address or a spoofed one, and records
// what must come of it.
func (m *trModel) udp(tg *trTag, dup int) {
	key := trKey{tg.gen, tg.id}
	tok := m.token(key)
	src := netip.AddrPortFrom(tg.inner, uint16(40000+m.rng.IntN(4)))
	dstPort := uint16(7)
	spoof := m.rng.IntN(8) == 0
	if spoof {
		src = netip.AddrPortFrom(trInners[(slices.Index(trInners, tg.inner)+1)%len(trInners)], src.Port())
	}
	if m.rng.IntN(8) == 0 {
		dstPort = 9
	}
	vip := vipOf(tg.service)
	if tg.kind == "ghost" {
		vip = pick(m.rng, []netip.Addr{trEchoVIP, trWebVIP})
	}
	dst := netip.AddrPortFrom(vip, dstPort)
	pkt := netstacktest.UDPDatagram(src, dst, []byte(tok))
	for range dup {
		m.sendTagged(tg.id, tg.service, pkt)
	}
	switch {
	case spoof:
		m.drops["spoofed_source"] += float64(dup)
		m.forbidden[tok] = true
	case tg.kind == "ghost":
		m.drops["wrong_service"] += float64(dup)
		m.forbidden[tok] = true
	case tg.kind == "denied":
		m.refused[[2]string{"udp", refuseTenant}] += float64(dup)
		m.forbidden[tok] = true
	case dstPort != 7:
		m.refused[[2]string{"udp", refusePort}] += float64(dup)
		m.forbidden[tok] = true
	default:
		m.expect[tok] = &trExpect{key: key, dst: src, want: dup, order: -1}
	}
}

// ping sends an echo request of a live tag to its service's VIP.
func (m *trModel) ping(tg *trTag) {
	key := trKey{tg.gen, tg.id}
	tok := m.token(key)
	vip := vipOf(tg.service)
	if tg.kind == "ghost" {
		vip = trEchoVIP
	}
	id := uint16(m.rng.IntN(4) + 1)
	m.sendTagged(tg.id, tg.service, netstacktest.EchoRequest(tg.inner, vip, id, uint16(m.seq), []byte(tok)))
	switch {
	case tg.kind == "ghost":
		m.drops["wrong_service"]++
		m.forbidden[tok] = true
	case tg.kind == "denied":
		m.refused[[2]string{"icmp", refuseTenant}]++
		m.forbidden[tok] = true
	case tg.service == "web":
		m.refused[[2]string{"icmp", refuseICMP}]++
		m.forbidden[tok] = true
	default:
		m.expect[tok] = &trExpect{key: key, dst: netip.AddrPortFrom(tg.inner, 0), want: 1, order: -1}
	}
}

// syn sends a TCP SYN of a live tag to its service's port 8 (echo: the
// line echo) or an unmapped port 9: a SYN-ACK or a RST must come back.
func (m *trModel) syn(tg *trTag) {
	key := trKey{tg.gen, tg.id}
	port := uint16(50000 + m.rng.IntN(1000))
	src := netip.AddrPortFrom(tg.inner, port)
	dstPort := uint16(8 + m.rng.IntN(2))
	vip := vipOf(tg.service)
	if tg.kind == "ghost" {
		vip = trEchoVIP
	}
	m.sendTagged(tg.id, tg.service, netstacktest.TCPSegment(src, netip.AddrPortFrom(vip, dstPort), netstacktest.FlagSYN, 1000, nil))
	var kind string
	switch {
	case tg.kind == "ghost":
		m.drops["wrong_service"]++
		return
	case tg.kind == "denied":
		m.refused[[2]string{"tcp", refuseTenant}]++
		kind = "rst"
	case tg.service == "web" || dstPort == 9:
		m.refused[[2]string{"tcp", refusePort}]++
		kind = "rst"
	default:
		kind = "synack"
	}
	m.expect[fmt.Sprintf("tcp-%s-%d-%d-%08x", kind, port, key.gen, key.id)] = &trExpect{key: key, dst: src, want: 1, order: -1}
}

// absorb checks the replies received so far.
func (m *trModel) absorb() { drainNow(m.replies, m.check) }

// check matches one reply with the model.
func (m *trModel) check(r trReply) {
	t := m.t
	t.Helper()
	key := trKey{r.gen, r.tag}
	tg := m.tags[key]
	if tg == nil {
		t.Errorf("a reply under tag %08x of session %d, which the relay never opened: % x", r.tag, r.gen, r.pkt)
		return
	}
	p := r.pkt
	if len(p) < 20 || p[0]>>4 != 4 {
		t.Errorf("tag %08x: a reply that is not IPv4: % x", r.tag, p)
		return
	}
	ihl := int(p[0]&0xf) * 4
	dst := netip.AddrFrom4([4]byte(p[16:20]))
	if dst != tg.inner {
		t.Errorf("tag %08x: a reply to %v, its inner address is %v", r.tag, dst, tg.inner)
		return
	}
	body := p[ihl:]
	var tok string
	var dstPort uint16
	switch p[9] {
	case 17:
		dstPort = binary.BigEndian.Uint16(body[2:4])
		tok = string(body[8:])
	case 1:
		switch body[0] {
		case 0:
			tok = string(body[8:])
		case 3: // a refused flow's port unreachable
			return
		default:
			t.Errorf("tag %08x: ICMP type %d", r.tag, body[0])
			return
		}
	case 6:
		dstPort = binary.BigEndian.Uint16(body[2:4])
		flags := body[13]
		kind := "synack"
		if flags&0x04 != 0 {
			kind = "rst"
		} else if flags&0x12 != 0x12 {
			return // a retransmitted SYN-ACK, a FIN at the tag's end: not answers of the model
		}
		tok = fmt.Sprintf("tcp-%s-%d-%d-%08x", kind, dstPort, key.gen, key.id)
		if e := m.expect[tok]; e == nil || e.got >= e.want {
			// A retransmission, or the RST of a handshake the model left
			// open: under the right tag to the right address all the same.
			return
		}
	default:
		t.Errorf("tag %08x: reply of protocol %d", r.tag, p[9])
		return
	}
	if m.forbidden[tok] {
		t.Errorf("tag %08x: a reply to %q, a packet that must have been dropped", r.tag, tok)
		return
	}
	e := m.expect[tok]
	if e == nil {
		t.Errorf("tag %08x: an unexpected reply %q (% x)", r.tag, tok, p)
		return
	}
	if e.key != key {
		t.Errorf("the reply to %q came under tag %08x of session %d, its packet went under %08x of %d", tok, r.tag, r.gen, e.key.id, e.key.gen)
		return
	}
	if dstPort != e.dst.Port() {
		t.Errorf("the reply to %q goes to port %d, want %d", tok, dstPort, e.dst.Port())
	}
	e.got++
	if e.got > e.want {
		t.Errorf("%q answered %d times, want %d", tok, e.got, e.want)
	}
	if e.order >= 0 {
		m.heldOrder[key] = append(m.heldOrder[key], e.order)
	}
}

// settle waits for every expected reply and for the counters, then
// checks them exactly.
func (m *trModel) settle(what string) {
	t := m.t
	t.Helper()
	m.waitFor(what+": the expected replies", func() bool {
		for _, e := range m.expect {
			if e.got < e.want {
				return false
			}
		}
		return true
	})
	countersOK := func() bool {
		if countsDiffer(m.g, m.drops, m.refused) != nil {
			return false
		}
		// A tag_close gives up the packets held for its tags when the
		// gateway takes it: nothing to wait for but the count.
		return m.dropped("unknown_tag") >= m.unknownSure
	}
	deadline := time.Now().Add(5 * time.Second)
	for !countersOK() && time.Now().Before(deadline) {
		m.absorb()
		time.Sleep(2 * time.Millisecond)
	}
	for _, d := range countsDiffer(m.g, m.drops, m.refused) {
		t.Errorf("%s: %s", what, d)
	}
	heldNow := 0.0
	for _, toks := range m.held {
		heldNow += float64(len(toks))
	}
	if got := m.dropped("unknown_tag"); got < m.unknownSure || got > m.unknownSure+heldNow {
		t.Errorf("%s: unknown_tag drops %v, want %v plus at most the %v held", what, got, m.unknownSure, heldNow)
	}
	for key, order := range m.heldOrder {
		if !slices.IsSorted(order) {
			t.Errorf("%s: the held packets of tag %08x answered in the order %v", what, key.id, order)
		}
	}
	m.checkFlows(what)
	// Done with: nothing more may answer them.
	for tok, e := range m.expect {
		if e.got >= e.want && !(e.order >= 0 && e.want == 0) { // not one still held
			delete(m.expect, tok)
			m.forbidden[tok] = true
		}
	}
	m.heldOrder = map[trKey][]int{}
}

// checkFlows compares the API's flows with the tags: every flow of a tag
// shows the tag's tenant and identity, and no flow is left of a closed tag.
func (m *trModel) checkFlows(what string) {
	t := m.t
	t.Helper()
	bySynth := map[netip.Addr]*trTag{}
	for _, tg := range m.tags {
		if tg.synth.IsValid() {
			bySynth[tg.synth] = tg
		}
	}
	var resp struct {
		Flows []apiFlow `json:"flows"`
	}
	if code := call(t, m.g.apiHandler(""), "GET", "/v1/flows", "", &resp); code != 200 {
		t.Fatalf("GET /v1/flows: %d", code)
	}
	for _, f := range resp.Flows {
		client := netip.MustParseAddrPort(f.Client)
		tg := bySynth[client.Addr()]
		if tg == nil {
			t.Errorf("%s: a flow of %s, no tag's", what, f.Client)
			continue
		}
		// A synthetic address is reused only after its tag closed: the
		// live tag of the address is the one.
		if !tg.live {
			t.Errorf("%s: a flow %+v of tag %08x, closed", what, f, tg.id)
			continue
		}
		if f.Tenant != tg.tenant || f.Identity != tg.identity || f.Service != tg.service {
			t.Errorf("%s: flow %+v of tag %08x (tenant %s, identity %s, service %s)", what, f, tg.id, tg.tenant, tg.identity, tg.service)
		}
	}
}

// closeTags sends one tag_close of tags and waits for them to close.
func (m *trModel) closeTags(ids []uint32) {
	m.t.Helper()
	if err := m.session.Send(tunnel.TagClose{Type: tunnel.MessageTagClose, Tags: ids}); err != nil {
		m.t.Fatal(err)
	}
	for _, id := range ids {
		key := trKey{m.gen, id}
		if tg := m.tags[key]; tg != nil && tg.live {
			m.waitFor(fmt.Sprintf("tag %08x closed", id), func() bool { return m.tagIngress(id) == nil })
			tg.live = false
		}
		m.giveUpHeld(key)
	}
	// Its flows go with it.
	m.waitFor("the closed tags' flows gone", func() bool {
		for _, f := range m.g.flows.list(nil) {
			for _, id := range ids {
				if tg := m.tags[trKey{m.gen, id}]; tg != nil && f.client.Addr() == tg.synth {
					return false
				}
			}
		}
		return true
	})
}

// giveUpHeld records that the packets held for key are dropped and
// counted.
func (m *trModel) giveUpHeld(key trKey) {
	for _, tok := range m.held[key] {
		m.forbidden[tok] = true
		delete(m.expect, tok)
		m.unknownSure++
	}
	delete(m.held, key)
	delete(m.heldSince, key)
}

// loseSession ends the relay session; unless final, it waits for the
// gateway to connect again.
func (m *trModel) loseSession(sessions <-chan *tunnel.Session, reconnect bool) {
	m.t.Helper()
	m.session.Close("test: relay session lost")
	m.waitFor("every tag closed with the session", func() bool {
		for _, tg := range m.liveTags(nil) {
			if m.tagIngress(tg.id) != nil {
				return false
			}
		}
		return true
	})
	for _, tg := range m.liveTags(nil) {
		tg.live = false
	}
	for key := range m.held {
		m.giveUpHeld(key)
	}
	m.waitFor("the session's flows gone", func() bool { return len(m.g.flows.list(nil)) == 0 })
	// The held packets are counted when the session goes.
	m.waitFor("the held packets counted", func() bool { return m.dropped("unknown_tag") == m.unknownSure })
	m.cancel()
	if reconnect {
		m.connect(sessions)
	}
}

// step takes one random action and checks its outcome.
func (m *trModel) step(step int, sessions <-chan *tunnel.Session) {
	m.t.Helper()
	r := m.rng.IntN(100)
	live := m.liveTags(nil)
	what := ""
	switch {
	case r < 15 || len(live) == 0:
		tg := m.randomOpen(m.newTagID())
		what = fmt.Sprintf("open %08x %s/%s (%s)", tg.id, tg.service, tg.tenant, tg.kind)
		m.open(tg)
	case r < 40:
		tg := pick(m.rng, live)
		dup := 1
		if m.rng.IntN(5) == 0 {
			dup = 2
		}
		what = fmt.Sprintf("udp x%d under %08x", dup, tg.id)
		m.udp(tg, dup)
	case r < 47:
		// Reordered: two datagrams of a tag, the later first.
		tg := pick(m.rng, live)
		what = fmt.Sprintf("reordered udp under %08x", tg.id)
		m.udp(tg, 1)
		m.udp(tg, 1)
	case r < 55:
		tg := pick(m.rng, live)
		what = fmt.Sprintf("ping under %08x", tg.id)
		m.ping(tg)
	case r < 62:
		tg := pick(m.rng, live)
		what = fmt.Sprintf("syn under %08x", tg.id)
		m.syn(tg)
	case r < 70:
		// tag_close of a batch: live, dead, unknown tags.
		var ids []uint32
		for _, tg := range live {
			if m.rng.IntN(3) == 0 {
				ids = append(ids, tg.id)
			}
		}
		if dead := m.deadTags(); len(dead) > 0 && m.rng.IntN(2) == 0 {
			ids = append(ids, pick(m.rng, dead).id)
		}
		if m.rng.IntN(3) == 0 {
			ids = append(ids, m.newTagID())
		}
		for key := range m.held {
			if key.gen == m.gen && m.rng.IntN(3) == 0 {
				ids = append(ids, key.id)
			}
		}
		what = fmt.Sprintf("tag_close %08x", ids)
		m.closeTags(ids)
	case r < 78:
		// Packets that overtake their tag_open: held, then delivered in
		// order (at most pendingTagLimit of them; the rest dropped).
		tg := m.randomOpen(m.newTagID())
		tg.kind, tg.service, tg.tenant = "ok", "echo", "acme"
		tg.identity = "ztna://acme/agent/early"
		key := trKey{tg.gen, tg.id}
		n := 1 + m.rng.IntN(pendingTagLimit+4)
		what = fmt.Sprintf("%d packets before the tag_open of %08x", n, tg.id)
		src := netip.AddrPortFrom(tg.inner, 41000)
		for i := range n {
			tok := m.token(key)
			m.sendTagged(tg.id, "echo", netstacktest.UDPDatagram(src, netip.AddrPortFrom(trEchoVIP, 7), []byte(tok)))
			if i < pendingTagLimit {
				m.held[key] = append(m.held[key], tok)
				m.expect[tok] = &trExpect{key: key, dst: src, want: 0, order: i}
			} else {
				m.unknownSure++
				m.forbidden[tok] = true
			}
		}
		m.heldSince[key] = time.Now()
		// The gateway holds them before the tag_open comes.
		m.barrier()
		if m.rng.IntN(4) != 0 {
			m.open(tg)
		} else {
			tg.live = false
			m.tags[key] = tg // opened later, or never
		}
	case r < 83:
		// Packets under closed or unknown tags: held, never delivered.
		var key trKey
		closed := slices.DeleteFunc(m.deadTags(), func(tg *trTag) bool { return !tg.synth.IsValid() })
		if len(closed) > 0 && m.rng.IntN(2) == 0 {
			key = trKey{m.gen, pick(m.rng, closed).id}
		} else {
			key = trKey{m.gen, m.newTagID()}
		}
		if len(m.held[key]) >= pendingTagLimit || (m.heldSince[key] != time.Time{} && time.Since(m.heldSince[key]) > pendingTagTimeout/2) {
			what = "nothing"
			break
		}
		what = fmt.Sprintf("udp under the dead or unknown tag %08x", key.id)
		tok := m.token(key)
		m.sendTagged(key.id, "echo", netstacktest.UDPDatagram(netip.AddrPortFrom(trInners[0], 42000), netip.AddrPortFrom(trEchoVIP, 7), []byte(tok)))
		m.held[key] = append(m.held[key], tok)
		m.forbidden[tok] = true
		if m.heldSince[key].IsZero() {
			m.heldSince[key] = time.Now()
		}
		m.barrier() // held before a tag_close of the tag comes
	case r < 90:
		what = "malformed"
		m.malformed(live)
	case r < 95:
		// A held tag opened now (its tag_open overtaken).
		var keys []trKey
		for key := range m.held {
			if key.gen == m.gen && time.Since(m.heldSince[key]) < pendingTagTimeout/4 { // 1.5 s to spare for a loaded -race run
				if tg := m.tags[key]; tg != nil && tg.kind == "ok" && !tg.live && tg.synth == (netip.Addr{}) {
					keys = append(keys, key)
				}
			}
		}
		if len(keys) == 0 {
			what = "nothing"
			break
		}
		slices.SortFunc(keys, func(a, b trKey) int { return int(a.id>>1) - int(b.id>>1) })
		tg := m.tags[pick(m.rng, keys)]
		what = fmt.Sprintf("late tag_open %08x", tg.id)
		m.open(tg)
	default:
		// The gateway redials after 1 s, 1.6 s, 3.2 s…: a few losses.
		if m.rng.IntN(3) != 0 || m.gen > 2 {
			what = "nothing"
			break
		}
		what = "relay session lost"
		m.loseSession(sessions, true)
	}
	if os.Getenv("ZTGATE_TUNNELSIDE_TRACE") != "" {
		m.t.Logf("step %d: %s", step, what)
	}
	m.settle(fmt.Sprintf("step %d (%s)", step, what))
	// Held packets that waited too long are given up, and counted.
	for key, since := range m.heldSince {
		if time.Since(since) > pendingTagTimeout+time.Second {
			if tg := m.tags[key]; tg != nil && tg.kind == "ok" && !tg.live && !tg.synth.IsValid() {
				tg.kind = "expired" // never opened now
			}
			for _, tok := range m.held[key] {
				m.forbidden[tok] = true
				delete(m.expect, tok)
			}
			// Counted at a sweep or at the session's end: the bound stays.
		}
	}
}

// barrier waits until the gateway has taken every datagram sent so far:
// the control stream's tag_open or tag_close may overtake them, and the
// model says what becomes of a packet held when they come. A datagram no
// datagram starts with is counted by the one goroutine that takes them
// all, in the order they came (in the order sent, on loopback).
func (m *trModel) barrier() {
	m.t.Helper()
	if err := m.session.SendDatagram([]byte{0x00, 0xba, 0x44}); err != nil {
		m.t.Fatal(err)
	}
	m.drops["malformed_datagram"]++
	want := m.drops["malformed_datagram"]
	m.waitFor("the datagrams taken", func() bool { return m.dropped("malformed_datagram") >= want })
}

// malformed sends a datagram the gateway must drop and count.
func (m *trModel) malformed(live []*trTag) {
	switch m.rng.IntN(5) {
	case 0: // a 0x30 cut short
		b, _ := tunnel.AppendTagged(nil, 1, "echo", []byte{0x45})
		if err := m.session.SendDatagram(b[:3]); err != nil {
			m.t.Fatal(err)
		}
		m.drops["malformed_datagram"]++
	case 1: // a byte no datagram starts with
		if err := m.session.SendDatagram([]byte{0x00, 1, 2, 3}); err != nil {
			m.t.Fatal(err)
		}
		m.drops["malformed_datagram"]++
	case 2: // a raw IP packet: the relay sends only tagged ones
		tg := pick(m.rng, live)
		if err := m.session.SendDatagram(netstacktest.UDPDatagram(netip.AddrPortFrom(tg.inner, 1), netip.AddrPortFrom(trEchoVIP, 7), []byte("raw"))); err != nil {
			m.t.Fatal(err)
		}
		m.drops["unexpected_datagram"]++
	case 3: // a service-routed packet
		b, _ := tunnel.AppendRouted(nil, "echo", netstacktest.UDPDatagram(netip.AddrPortFrom(trInners[0], 1), netip.AddrPortFrom(trEchoVIP, 7), []byte("routed")))
		if err := m.session.SendDatagram(b); err != nil {
			m.t.Fatal(err)
		}
		m.drops["unexpected_datagram"]++
	default: // a tag's packet that is not IPv4
		tg := pick(m.rng, live)
		junk := make([]byte, 1+m.rng.IntN(40))
		for i := range junk {
			junk[i] = byte(m.rng.IntN(256))
		}
		junk[0] = 0x60 | junk[0]&0x0f // IPv6, or too short for it: not IPv4 all the same
		m.sendTagged(tg.id, tg.service, junk)
		m.drops["not_ipv4"]++
	}
}

// TestTunnelSideRandomHeldPacketsCounted: every packet held for a tag not
// announced yet is delivered or counted as unknown_tag once given up: when
// it expires (at a sweep, when its tag is held again, or at its tag_open),
// when a tag_close names its tag, and when the relay session ends. Before,
// only those over a tag's or the map's bound were counted.
func TestTunnelSideRandomHeldPacketsCounted(t *testing.T) {
	stale := time.Now().Add(-time.Hour)
	pkt := []byte{0x45}
	newRS := func() *relaySession {
		g := &Gateway{m: newMetrics(prometheus.NewRegistry()), flows: newFlowTable()}
		g.ingresses = newIngressTable(prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_ingresses"}), nil)
		return newRelaySession(g, nil, nil)
	}
	held := func(n int, since time.Time) *pendingTag {
		p := &pendingTag{since: since}
		for range n {
			p.pkts = append(p.pkts, pkt)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		run  func(rs *relaySession)
		want float64
	}{
		{"tag_close of a held tag", func(rs *relaySession) {
			rs.pending[7] = held(3, time.Now())
			rs.closeTag(7, "tag_closed")
		}, 3},
		{"relay session ends", func(rs *relaySession) {
			rs.pending[7] = held(3, time.Now())
			rs.pending[8] = held(2, time.Now())
			rs.closeAll("relay session ended")
		}, 5},
		{"swept expired", func(rs *relaySession) {
			rs.swept = stale
			rs.pending[7] = held(4, stale)
			rs.holdLocked(8, pkt)
		}, 4},
		{"expired tag held again", func(rs *relaySession) {
			rs.swept = time.Now().Add(time.Hour)
			rs.pending[7] = held(4, stale)
			rs.holdLocked(7, pkt)
		}, 4},
		{"tag_open after they expired", func(rs *relaySession) {
			rs.pending[7] = held(2, stale)
			rs.openTag(&tunnel.TagOpen{Tag: 7, Service: "echo", Tenant: "acme"})
		}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := newRS()
			tc.run(rs)
			if n := testutil.ToFloat64(rs.g.m.dropped.WithLabelValues("unknown_tag")); n != tc.want {
				t.Errorf("unknown_tag drops %v, want %v", n, tc.want)
			}
		})
	}
}
