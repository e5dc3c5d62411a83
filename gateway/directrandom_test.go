package gateway

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/testseed"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// The services of TestDirectSideRandom, at pinned VIPs: echo (UDP 7 to an
// echo, TCP 8 to a line echo, ICMP) and web (UDP 7 to another echo, no
// ICMP), each admitting the tenants the last reload gave it, or removed.
var (
	dsEchoVIP = netip.MustParseAddr("10.100.0.10")
	dsWebVIP  = netip.MustParseAddr("10.100.0.11")
	dsNoVIP   = netip.MustParseAddr("10.100.0.99") // in the pool, no service's
	dsOutside = netip.MustParseAddr("192.0.2.77")  // outside the pool
	dsGateway = netip.MustParseAddr("10.100.0.1")  // the gateway's own address (DNS)
	// Two inner addresses for every agent: sessions of different tenants
	// (and of one identity) often share one.
	dsInners = []netip.Addr{netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.2")}
)

// dsIdentities are the agents: two of acme, one of globex, one of a tenant
// no [[tenant]] names and that a service admits only as "*".
var dsIdentities = [][2]string{{"acme", "a1"}, {"acme", "a2"}, {"globex", "g1"}, {"initech", "i1"}}

// dsTenantChoices are the tenants a reload may give a service (nil:
// the service removed).
var dsTenantChoices = [][]string{{"acme"}, {"globex"}, {"acme", "globex"}, {"*"}, nil}

// dsSession is the model of one direct agent session.
type dsSession struct {
	idx            int
	tenant, name   string
	inner          netip.Addr
	s              *tunnel.Session
	synth          netip.Addr // its ingress's address in the netstack
	live           bool
	cancel         context.CancelFunc
	readers        sync.WaitGroup
	mu             sync.Mutex
	dir            *tunnel.Directory // the last directory it received; guarded by mu
	controlUnknown int               // control messages of another type; guarded by mu
	// A ztna-v1 session (v1) has no hello: its inner address is the
	// source of its first packet the gateway lets in (learnt; until then
	// inner is the address the agent means to use), it has no directory,
	// and it reaches a service only once it registered it (registered: the
	// services ACKed).
	v1         bool
	learnt     bool
	registered map[string]bool
	// rights are the services a legacy certificate grants (nil: every
	// service of its tenant).
	rights []string
	// acked: the model acknowledged a segment to s since its last
	// barrier (checkTCP), a packet perhaps not yet read by the gateway.
	acked bool
}

func (s *dsSession) identity() string { return s.tenant + "/agent/" + s.name }

// learn pins a ztna-v1 session's inner address to src, the source of the
// first packet the gateway lets in.
func (s *dsSession) learn(src netip.Addr) {
	if s.v1 && !s.learnt {
		s.inner, s.learnt = src, true
	}
}

// pinned reports whether the gateway holds s to its inner address: from
// the hello on ztna-v2, once learnt on ztna-v1.
func (s *dsSession) pinned() bool { return !s.v1 || s.learnt }

// dsKey names a flow as its session sends it.
type dsKey struct {
	sess     int
	proto    string
	src, dst netip.AddrPort
}

// dsFlow is a flow the model expects in the gateway's flow table.
type dsFlow struct {
	key     dsKey
	service string
	// TCP: the agent's next sequence number and the next one it expects
	// of the gateway (0: no SYN-ACK yet).
	seq, ack uint32
}

// dsExpect is a reply the model waits for: to session sess, want times.
type dsExpect struct {
	sess      int
	dst       netip.AddrPort
	want, got int
	dns       *bool // a DNS answer: whether it names the service
}

// dsReply is a datagram a session received.
type dsReply struct {
	sess int
	b    []byte
}

// dsModel is TestDirectSideRandom's state.
type dsModel struct {
	t        *testing.T
	g        *Gateway
	rng      *rand.Rand
	fh       *fileHarness
	ca       *tunnel.CA
	dir      string
	head     string // the configuration before the services
	udp1     int
	udp2     int
	line     int
	creds    map[string]*tunnel.Credentials
	tenants  map[string][]string // the services' tenants; nil: removed
	sessions []*dsSession
	flows    map[dsKey]*dsFlow
	replies  chan dsReply
	expect   map[string]*dsExpect
	// forbidden: tokens whose packets must reach no one (any more).
	forbidden map[string]bool
	drops     map[string]float64
	refused   map[[2]string]float64
	sessRef   map[string]float64 // ztgate_tunnel_refusals_total
	handRef   map[string]float64 // ztgate_tunnel_handshakes_total{side="server",result="refused"}
	seq       int
	nextPort  uint16
	choices   [][]string // the tenants a reload may give a service
	leaks     goleak.Option
	// regWant: the registration answers (0x12, 0x13) each session is
	// still to receive, by their bytes, and how often.
	regWant map[int]map[string]int
}

var dsDropReasons = []string{"malformed", "not_ipv4", "malformed_datagram", "not_authorised", "spoofed_source", "wrong_service", "unexpected_datagram"}

var dsRefusals = [][2]string{
	{"udp", refusePort}, {"udp", refuseTenant}, {"tcp", refusePort}, {"tcp", refuseTenant},
	{"icmp", refuseICMP}, {"icmp", refuseTenant}, {"udp", refuseNoService}, {"tcp", refuseNoService}, {"icmp", refuseNoService},
}

// TestDirectSideRandom drives a gateway's direct listener ([tunnel]
// listen) with a seeded random sequence of agent sessions of several
// tenants and identities at once (two of different tenants often on one
// inner address, one identity twice at once), sessions refused (a
// gateway's or a relay's certificate, a hello of the wrong role, a
// certificate without identity or of another CA, a hello without an inner
// address), UDP, TCP, ICMP and DNS packets from their inner address or a
// spoofed one, raw or service-routed, to services the agent's tenant may
// reach and ones it may not, to unknown VIPs and beyond the pool,
// malformed datagrams, sessions closed, and reloads that change which
// tenants a service admits or remove it. After every step it checks
// against a model which session each reply reaches (only the one whose
// packet it answers, at its inner address), the exact drop and refusal
// counters, GET /v1/flows (each flow's session, identity, tenant and
// service; none left of a closed session or a removed service), each
// session's directory, and at the end that no goroutine is left.
// ZTGATE_DIRECT_SEED replays a seed; ZTGATE_DIRECT_TRACE logs the steps.
func TestDirectSideRandom(t *testing.T) {
	seed := testseed.Get(t, "ZTGATE_DIRECT_SEED")
	m := newDSModel(t, rand.New(rand.NewPCG(seed, seed^0xd12ec7)), dsTenantChoices, map[string][]string{"echo": {"acme"}, "web": {"globex"}})
	m.run(seed, 250, m.step)
}

// newDSModel starts the gateway of a direct-side test, its backends and
// the certificates of dsIdentities; its services admit the tenants of
// initial, and reloads give them tenants of choices. The gateway closes
// when the test ends (run closes it first).
func newDSModel(t *testing.T, rng *rand.Rand, choices [][]string, initial map[string][]string) *dsModel {
	dir := t.TempDir()
	section, ca := writePKI(t, dir)
	m := &dsModel{
		t: t, rng: rng, ca: ca, dir: dir, choices: choices,
		fh:   &fileHarness{path: filepath.Join(dir, "gw.toml"), dir: dir},
		head: "[gateway]\nstate_dir = \"STATE\"\ndrain_timeout = \"1h\"\n[api]\nlisten = \"off\"\n" + section + twoTenants,
		udp1: startUDPEcho(t), udp2: startUDPEcho(t), line: startLineEcho(t, "echo"),
		creds:   map[string]*tunnel.Credentials{},
		tenants: initial,
		flows:   map[dsKey]*dsFlow{}, replies: make(chan dsReply, 4096),
		expect: map[string]*dsExpect{}, forbidden: map[string]bool{},
		drops: map[string]float64{}, refused: map[[2]string]float64{},
		sessRef: map[string]float64{}, handRef: map[string]float64{}, nextPort: 20000,
		regWant: map[int]map[string]int{},
	}
	for _, id := range dsIdentities {
		m.creds[id[0]+"/"+id[1]] = agentCreds(t, ca, dir, tunnel.IssueRequest{Tenant: id[0], Role: tunnel.RoleAgent, Name: id[1]})
	}
	m.leaks = goleak.IgnoreCurrent() // the backends end after the test
	m.fh.write(t, m.config())
	cfg, err := conf.LoadGateway(m.fh.path)
	if err != nil {
		t.Fatal(err)
	}
	lan, err := netstacktest.NewClient(1420, acmeClient)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := New(cfg, Options{Device: lan, Pinger: fakePinger{up: map[netip.Addr]bool{netip.MustParseAddr("127.0.0.1"): true}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	m.g = gw
	for _, r := range dsDropReasons {
		m.drops[r] = m.dropped(r)
	}
	for _, r := range dsRefusals {
		m.refused[r] = m.refusedN(r)
	}
	return m
}

// run takes steps random steps of step, checking the gateway against the
// model after each, closes every session and checks that no flow and no
// goroutine is left.
func (m *dsModel) run(seed uint64, steps int, step func() string) {
	t := m.t
	ended := false
	defer func() {
		if !ended {
			m.closeAll()
		}
	}()
	for i := range steps {
		what := step()
		if os.Getenv("ZTGATE_DIRECT_TRACE") != "" {
			t.Logf("step %d: %s", i, what)
		}
		m.settle(fmt.Sprintf("step %d (%s)", i, what))
		if t.Failed() {
			t.Fatalf("seed %d: failed at step %d (%s)", seed, i, what)
		}
	}
	// The end: every session closes, and its flows with it.
	for _, s := range m.sessions {
		if s.live {
			m.closeSession(s)
		}
	}
	m.settle("the end")
	if n := len(m.g.flows.list(nil)); n != 0 {
		t.Errorf("%d flows left with no session", n)
	}
	if t.Failed() {
		t.Fatalf("seed %d: failed at the end", seed)
	}
	ended = true
	m.closeAll()
	goleak.VerifyNone(t, m.leaks, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"))
}

// closeAll ends the sessions, their readers and the gateway.
func (m *dsModel) closeAll() {
	for _, s := range m.sessions {
		s.s.Close("test over")
		s.cancel()
	}
	m.g.Close()
	for _, s := range m.sessions {
		s.readers.Wait()
	}
}

// config is the gateway's file for the model's services.
func (m *dsModel) config() string {
	var b strings.Builder
	b.WriteString(m.head)
	if ts := m.tenants["echo"]; ts != nil {
		fmt.Fprintf(&b, `
[[service]]
name = "echo"
tenants = %s
vip = %q
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
`, tomlList(ts), dsEchoVIP, m.udp1, m.line)
	}
	if ts := m.tenants["web"]; ts != nil {
		fmt.Fprintf(&b, `
[[service]]
name = "web"
tenants = %s
vip = %q
backends = ["127.0.0.1"]
icmp = false
  [[service.port]]
  protocol = "udp"
  port = 7
  target = %d
  [service.health]
  type = "none"
`, tomlList(ts), dsWebVIP, m.udp2)
	}
	return b.String()
}

func tomlList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func (m *dsModel) dropped(reason string) float64 {
	return testutil.ToFloat64(m.g.m.dropped.WithLabelValues(reason)) // ztgate_packets_dropped_total
}

func (m *dsModel) refusedN(r [2]string) float64 {
	return testutil.ToFloat64(m.g.m.flowsRefused.WithLabelValues(r[0], r[1])) // ztgate_flows_refused_total
}

func (m *dsModel) sessRefused(reason string) float64 {
	return testutil.ToFloat64(m.g.m.tunnelRefusals.WithLabelValues(reason)) // ztgate_tunnel_refusals_total
}

func (m *dsModel) handRefused(reason string) float64 {
	v := metricValue(m.t, m.g, "ztgate_tunnel_handshakes_total", "reason", reason, "result", "refused", "side", "server")
	return max(v, 0)
}

// admits reports whether the model's service admits tenant.
func (m *dsModel) admits(service, tenant string) bool {
	ts := m.tenants[service]
	return ts != nil && (slices.Contains(ts, tenant) || slices.Contains(ts, "*"))
}

// serviceAt is the service whose VIP a is, "" for none.
func (m *dsModel) serviceAt(a netip.Addr) string {
	switch {
	case a == dsEchoVIP && m.tenants["echo"] != nil:
		return "echo"
	case a == dsWebVIP && m.tenants["web"] != nil:
		return "web"
	}
	return ""
}

// mayReach reports whether the model lets s reach service: its tenant
// admitted, and its certificate's rights.
func (m *dsModel) mayReach(s *dsSession, service string) bool {
	return m.admits(service, s.tenant) && (s.rights == nil || slices.Contains(s.rights, service))
}

// fate is what the gateway does with a packet of s from src to dst, raw
// (routed "") or service-routed: a drop reason, or "" and the service it
// goes to ("" for the gateway's own address). A ztna-v1 session's first
// packet the gateway lets in pins its inner address.
func (m *dsModel) fate(s *dsSession, routed string, src, dst netip.Addr) (drop, service string) {
	if routed != "" {
		switch {
		case !m.mayReach(s, routed) || (s.v1 && !s.registered[routed]):
			return "not_authorised", ""
		case s.pinned() && src != s.inner:
			return "spoofed_source", ""
		case dst != dsGateway && m.serviceAt(dst) != routed:
			return "wrong_service", ""
		}
		s.learn(src)
		if dst == dsGateway {
			return "", ""
		}
		return "", routed
	}
	if dst != dsGateway {
		service = m.serviceAt(dst)
		if service == "" || !m.mayReach(s, service) || (s.v1 && !s.registered[service]) {
			return "not_authorised", ""
		}
	}
	if s.pinned() && src != s.inner {
		return "spoofed_source", ""
	}
	s.learn(src)
	return "", service
}

// send sends b on s's session.
func (m *dsModel) send(s *dsSession, b []byte) {
	m.t.Helper()
	if err := s.s.SendDatagram(b); err != nil {
		m.t.Fatalf("session %d: send: %v", s.idx, err)
	}
}

// sendPacket sends pkt from s, raw or routed to a service, and counts its
// drop; it returns the fate.
func (m *dsModel) sendPacket(s *dsSession, routed string, pkt []byte) (drop, service string) {
	m.t.Helper()
	src, dst := netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
	drop, service = m.fate(s, routed, src, dst)
	b := pkt
	if routed != "" {
		var err error
		if b, err = tunnel.AppendRouted(nil, routed, pkt); err != nil {
			m.t.Fatal(err)
		}
	}
	m.send(s, b)
	if drop != "" {
		m.drops[drop]++
	}
	return drop, service
}

func (m *dsModel) token(s *dsSession) string {
	m.seq++
	return fmt.Sprintf("s%d-%d", s.idx, m.seq)
}

func (m *dsModel) live() []*dsSession {
	return slices.DeleteFunc(slices.Clone(m.sessions), func(s *dsSession) bool { return !s.live })
}

// step takes one random action and says which.
func (m *dsModel) step() string {
	live := func(s *dsSession) bool { return s.live }
	s := testseed.Pick(m.rng, m.sessions, live)
	r := m.rng.IntN(100)
	switch {
	case r < 10 || s == nil:
		id := dsIdentities[m.rng.IntN(len(dsIdentities))]
		if s != nil && m.rng.IntN(4) == 0 {
			id = [2]string{s.tenant, s.name} // one identity twice at once
		}
		if len(m.live()) >= 6 {
			return m.closeSession(s)
		}
		return m.connect(id[0], id[1], dsInners[m.rng.IntN(len(dsInners))])
	case r < 15:
		return m.refusedSession()
	case r < 21:
		return m.closeSession(s)
	case r < 45:
		return m.udp(s)
	case r < 53:
		return m.ping(s)
	case r < 59:
		return m.dns(s)
	case r < 69:
		return m.syn(s)
	case r < 77:
		return m.tcpData()
	case r < 85:
		return m.malformed(s)
	default:
		return m.reload()
	}
}

// connect opens a ztna-v2 session of tenant/name (a URI identity) from
// inner and finds its ingress.
func (m *dsModel) connect(tenant, name string, inner netip.Addr) string {
	return m.connectAs(dsAgent{key: tenant + "/" + name, tenant: tenant, name: name}, inner)
}

// dsAgent is a certificate a session connects with: m.creds[key], of
// tenant and name (a legacy one's common name), granting rights (nil:
// every service of its tenant), on ztna-v1 or ztna-v2.
type dsAgent struct {
	key, tenant, name string
	rights            []string
	v1                bool
}

// connectAs opens a session of a from inner (on ztna-v1, the address it
// means to send from) and finds its ingress.
func (m *dsModel) connectAs(a dsAgent, inner netip.Addr) string {
	t := m.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := m.synths()
	alpn := tunnel.ALPNV2
	if a.v1 {
		alpn = tunnel.ALPNV1
	}
	ts, err := tunnel.Dial(ctx, m.g.direct.Addr().String(), tunnel.DialConfig{
		Credentials: m.creds[a.key], ServerName: "127.0.0.1", ALPN: []string{alpn},
		Hello: tunnel.Hello{Role: tunnel.RoleAgent, Name: a.name, InnerAddr: inner},
	}, nil)
	if err != nil {
		t.Fatalf("session of %s (%s): %v", a.key, alpn, err)
	}
	s := &dsSession{idx: len(m.sessions), tenant: a.tenant, name: a.name, inner: inner, s: ts, live: true,
		v1: a.v1, rights: a.rights, registered: map[string]bool{}}
	rctx, rcancel := context.WithCancel(context.Background())
	s.cancel = rcancel
	m.sessions = append(m.sessions, s)
	s.readers.Go(func() {
		for {
			b, err := ts.ReceiveDatagram(rctx)
			if err != nil {
				return
			}
			select {
			case m.replies <- dsReply{sess: s.idx, b: slices.Clone(b)}:
			case <-rctx.Done():
				return
			}
		}
	})
	s.readers.Go(func() {
		for {
			typ, raw, err := ts.Next()
			if err != nil {
				return
			}
			s.mu.Lock()
			if typ == tunnel.MessageDirectory {
				var d tunnel.Directory
				if json.Unmarshal(raw, &d) == nil {
					s.dir = &d
				}
			} else {
				s.controlUnknown++
			}
			s.mu.Unlock()
		}
	})
	m.waitFor(fmt.Sprintf("the ingress of session %d", s.idx), func() bool {
		m.g.ingresses.mu.RLock()
		defer m.g.ingresses.mu.RUnlock()
		for a, in := range m.g.ingresses.bySynth {
			// A ztna-v1 ingress learns its inner address later, in its
			// session's goroutine: not read here.
			if !old[a] && in.peer.identity == s.identity() && (s.v1 || in.innerAddr() == inner) && !in.closed.Load() {
				s.synth = a
				return true
			}
		}
		return false
	})
	m.waitDirectories("connect")
	return fmt.Sprintf("session %d of %s (%s) from %v", s.idx, s.identity(), alpn, inner)
}

// synths is the set of the ingresses' addresses now.
func (m *dsModel) synths() map[netip.Addr]bool {
	m.g.ingresses.mu.RLock()
	defer m.g.ingresses.mu.RUnlock()
	out := map[netip.Addr]bool{}
	for a := range m.g.ingresses.bySynth {
		out[a] = true
	}
	return out
}

// closeSession closes s from the agent's side: its ingress and flows go.
func (m *dsModel) closeSession(s *dsSession) string {
	m.t.Helper()
	s.s.Close("test: agent leaves")
	m.waitFor(fmt.Sprintf("the ingress of session %d gone", s.idx), func() bool { return m.g.ingresses.lookup(s.synth) == nil })
	m.waitFor(fmt.Sprintf("the flows of session %d gone", s.idx), func() bool {
		return len(m.g.flows.list(func(f *flow) bool { return f.client.Addr() == s.synth })) == 0
	})
	s.live = false
	s.cancel()
	s.readers.Wait()
	m.absorb()
	for k := range m.flows {
		if k.sess == s.idx {
			delete(m.flows, k)
		}
	}
	for tok, e := range m.expect {
		if e.sess == s.idx {
			delete(m.expect, tok)
			m.forbidden[tok] = true
		}
	}
	return fmt.Sprintf("session %d closed", s.idx)
}

// refusedSession tries a session the gateway must refuse.
func (m *dsModel) refusedSession() string {
	t := m.t
	t.Helper()
	kinds := []string{"gateway cert", "relay cert", "hello of a gateway", "no identity", "another CA", "no inner address"}
	kind := kinds[m.rng.IntN(len(kinds))]
	req := tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "r" + fmt.Sprint(m.seq)}
	ca := m.ca
	hello := tunnel.Hello{Role: tunnel.RoleAgent, Name: "r", InnerAddr: dsInners[0]}
	var wantCode, wantHand string
	switch kind {
	case "gateway cert":
		req.Role, hello.Role, wantCode = tunnel.RoleGateway, tunnel.RoleGateway, "wrong_role"
	case "relay cert":
		req.Role, wantCode = tunnel.RoleRelay, "wrong_role"
	case "hello of a gateway":
		hello.Role, wantCode = tunnel.RoleGateway, "wrong_role"
	case "no identity":
		req, wantHand = tunnel.IssueRequest{Name: "sanless", NoIdentity: true}, tunnel.ReasonNoIdentity
	case "another CA":
		other, err := tunnel.NewCA("another CA", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ca, wantHand = other, tunnel.ReasonUnknownAuthority
	case "no inner address":
		hello.InnerAddr, wantCode = netip.Addr{}, tunnel.CodeBadMessage
	}
	creds := agentCreds(t, ca, m.dir, req)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := m.synths()
	s, err := tunnel.Dial(ctx, m.g.direct.Addr().String(), tunnel.DialConfig{
		Credentials: creds, ServerName: "127.0.0.1", ALPN: []string{tunnel.ALPNV2}, Hello: hello,
	}, nil)
	if err == nil {
		s.Close("test")
		t.Errorf("%s: a session", kind)
		return kind
	}
	var refused *tunnel.RefusedError
	switch {
	case wantCode != "" && (!errors.As(err, &refused) || refused.Code != wantCode):
		t.Errorf("%s: %v, want refused as %s", kind, err, wantCode)
	case wantHand != "" && errors.As(err, &refused) && refused.Code != "tls_alert":
		t.Errorf("%s: %v, want refused at the handshake", kind, err)
	}
	if wantCode == "wrong_role" {
		m.sessRef["wrong_role"]++
	}
	if wantHand != "" {
		m.handRef[wantHand]++
		m.sessRef[wantHand]++ // the gateway's count of its refusals, certificates' too
	}
	if wantCode == tunnel.CodeBadMessage {
		m.sessRef["bad_hello"]++
	}
	if n := m.synths(); len(n) > len(old) {
		t.Errorf("%s: an ingress was added", kind)
	}
	return "refused: " + kind
}

// srcFor picks the source of a new packet of s for proto to one of dsts:
// a new port, or the port and destination of another session's flow from
// the same inner address (a twin flow), or (UDP) one of s's own.
func (m *dsModel) srcFor(s *dsSession, proto string, dst netip.AddrPort) (netip.AddrPort, netip.AddrPort) {
	var twins, own []dsKey
	for k := range m.flows {
		if k.proto != proto {
			continue
		}
		switch {
		case k.sess != s.idx && k.src.Addr() == s.inner:
			if _, taken := m.flows[dsKey{s.idx, proto, k.src, k.dst}]; !taken {
				twins = append(twins, k)
			}
		case k.sess == s.idx && proto == "udp":
			own = append(own, k)
		}
	}
	sortKeys := func(ks []dsKey) {
		slices.SortFunc(ks, func(a, b dsKey) int {
			return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
		})
	}
	sortKeys(twins)
	sortKeys(own)
	switch r := m.rng.IntN(3); {
	case r == 0 && len(twins) > 0:
		k := twins[m.rng.IntN(len(twins))]
		return k.src, k.dst
	case r == 1 && len(own) > 0:
		k := own[m.rng.IntN(len(own))]
		return k.src, k.dst
	}
	m.nextPort++
	return netip.AddrPortFrom(s.inner, m.nextPort), dst
}

// randomDst is a destination for a packet of s: mostly the VIP of a
// service its tenant may reach, else any VIP, one of no service, or an
// address beyond the pool.
func (m *dsModel) randomDst(s *dsSession) netip.Addr {
	var may []netip.Addr
	for svc, vip := range map[string]netip.Addr{"echo": dsEchoVIP, "web": dsWebVIP} {
		if m.mayReach(s, svc) {
			may = append(may, vip)
		}
	}
	slices.SortFunc(may, netip.Addr.Compare)
	if len(may) > 0 && m.rng.IntN(3) != 0 {
		return may[m.rng.IntN(len(may))]
	}
	switch r := m.rng.IntN(10); {
	case r < 5:
		return dsEchoVIP
	case r < 8:
		return dsWebVIP
	case r < 9:
		return dsNoVIP
	default:
		return dsOutside
	}
}

// routedAs picks how a packet to dst is framed: raw (""), or routed to
// the service of dst, to another, or to one that does not exist.
func (m *dsModel) routedAs(dst netip.Addr) string {
	switch r := m.rng.IntN(8); {
	case r < 5:
		return ""
	case r < 7:
		if dst == dsWebVIP {
			return "web"
		}
		return "echo"
	default:
		return pick(m.rng, []string{"echo", "web", "ghost"})
	}
}

// udp sends a UDP datagram of s.
func (m *dsModel) udp(s *dsSession) string {
	port := uint16(7)
	if m.rng.IntN(8) == 0 {
		port = 9
	}
	src, dst := m.srcFor(s, "udp", netip.AddrPortFrom(m.randomDst(s), port))
	spoof := m.rng.IntN(8) == 0
	if spoof {
		src = netip.AddrPortFrom(dsInners[(slices.Index(dsInners, s.inner)+1)%len(dsInners)], src.Port())
	}
	routed := m.routedAs(dst.Addr())
	tok := m.token(s)
	drop, service := m.sendPacket(s, routed, netstacktest.UDPDatagram(src, dst, []byte(tok)))
	what := fmt.Sprintf("udp %v→%v (%q) from session %d", src, dst, routed, s.idx)
	switch {
	case drop != "":
		m.forbidden[tok] = true
		return what + ": " + drop
	case dst.Port() != 7:
		m.refused[[2]string{"udp", refusePort}]++
		m.forbidden[tok] = true
		return what + ": port refused"
	}
	k := dsKey{s.idx, "udp", src, dst}
	if m.flows[k] == nil {
		m.flows[k] = &dsFlow{key: k, service: service}
	}
	m.expect[tok] = &dsExpect{sess: s.idx, dst: src, want: 1}
	return what
}

// ping sends an echo request of s.
func (m *dsModel) ping(s *dsSession) string {
	dst := m.randomDst(s)
	src := s.inner
	if m.rng.IntN(8) == 0 {
		src = dsInners[(slices.Index(dsInners, s.inner)+1)%len(dsInners)]
	}
	routed := m.routedAs(dst)
	tok := m.token(s)
	id := uint16(1 + m.rng.IntN(3))
	drop, service := m.sendPacket(s, routed, netstacktest.EchoRequest(src, dst, id, uint16(m.seq), []byte(tok)))
	what := fmt.Sprintf("ping %v→%v (%q) from session %d", src, dst, routed, s.idx)
	switch {
	case drop != "":
		m.forbidden[tok] = true
		return what + ": " + drop
	case service == "web":
		m.refused[[2]string{"icmp", refuseICMP}]++
		m.forbidden[tok] = true
		return what + ": icmp refused"
	}
	m.expect[tok] = &dsExpect{sess: s.idx, dst: netip.AddrPortFrom(s.inner, 0), want: 1}
	return what
}

// dns asks the gateway's DNS for a service's address: it answers as the
// session's tenant may reach the service.
func (m *dsModel) dns(s *dsSession) string {
	name := pick(m.rng, []string{"echo", "web"})
	m.seq++
	id := uint16(m.seq)
	m.nextPort++
	src := netip.AddrPortFrom(s.inner, m.nextPort)
	routed := ""
	if m.rng.IntN(3) == 0 {
		routed = name
	}
	drop, _ := m.sendPacket(s, routed, netstacktest.UDPDatagram(src, netip.AddrPortFrom(dsGateway, 53), dnsQueryFor(id, name+".ztna.internal", 1)))
	tok := fmt.Sprintf("dns-%d", id)
	what := fmt.Sprintf("dns %s (%q) from session %d", name, routed, s.idx)
	if drop != "" {
		m.forbidden[tok] = true
		return what + ": " + drop
	}
	visible := m.mayReach(s, name)
	m.expect[tok] = &dsExpect{sess: s.idx, dst: src, want: 1, dns: &visible}
	return fmt.Sprintf("%s (visible %v)", what, visible)
}

// syn opens a TCP flow of s: a SYN-ACK (the model acknowledges it) or a
// RST must come back.
func (m *dsModel) syn(s *dsSession) string {
	port := uint16(8)
	if m.rng.IntN(4) == 0 {
		port = 9
	}
	src, dst := m.srcFor(s, "tcp", netip.AddrPortFrom(m.randomDst(s), port))
	routed := m.routedAs(dst.Addr())
	drop, service := m.sendPacket(s, routed, netstacktest.TCPSegment(src, dst, netstacktest.FlagSYN, 1000, nil))
	what := fmt.Sprintf("syn %v→%v (%q) from session %d", src, dst, routed, s.idx)
	if drop != "" {
		return what + ": " + drop
	}
	kind := "synack"
	if service != "echo" || dst.Port() != 8 {
		m.refused[[2]string{"tcp", refusePort}]++
		kind = "rst"
	} else {
		k := dsKey{s.idx, "tcp", src, dst}
		m.flows[k] = &dsFlow{key: k, service: service, seq: 1001}
	}
	m.expect[tcpToken(kind, s.idx, src, dst)] = &dsExpect{sess: s.idx, dst: src, want: 1}
	return what + ": " + kind
}

func tcpToken(kind string, sess int, src, dst netip.AddrPort) string {
	return fmt.Sprintf("tcp-%s-%d-%v-%v", kind, sess, src, dst)
}

// tcpData sends a line on an open TCP flow; the line echo answers it.
func (m *dsModel) tcpData() string {
	var open []*dsFlow
	for _, f := range m.flows {
		if f.key.proto == "tcp" && f.ack != 0 {
			open = append(open, f)
		}
	}
	if len(open) == 0 {
		return "nothing"
	}
	slices.SortFunc(open, func(a, b *dsFlow) int { return strings.Compare(fmt.Sprint(a.key), fmt.Sprint(b.key)) })
	f := open[m.rng.IntN(len(open))]
	s := m.sessions[f.key.sess]
	tok := m.token(s)
	line := []byte(tok + "\n")
	drop, _ := m.sendPacket(s, "", netstacktest.TCPSegmentAck(f.key.src, f.key.dst, netstacktest.FlagPSH|netstacktest.FlagACK, f.seq, f.ack, line))
	what := fmt.Sprintf("tcp data %v→%v from session %d", f.key.src, f.key.dst, s.idx)
	if drop != "" {
		m.forbidden[tok] = true
		return what + ": " + drop
	}
	f.seq += uint32(len(line))
	m.expect[tok] = &dsExpect{sess: s.idx, dst: f.key.src, want: 1}
	return what
}

// malformed sends a datagram the gateway drops and counts.
func (m *dsModel) malformed(s *dsSession) string {
	pkt := netstacktest.UDPDatagram(netip.AddrPortFrom(s.inner, 1), netip.AddrPortFrom(dsEchoVIP, 7), []byte("x"))
	var b []byte
	reason := "unexpected_datagram"
	kind := m.rng.IntN(8)
	switch kind {
	case 0: // a byte no datagram starts with
		b, reason = []byte{0x00, 1, 2}, "malformed_datagram"
	case 1: // a relay's tagged packet: a type ztna-v1 does not know
		b, _ = tunnel.AppendTagged(nil, 7, "echo", pkt)
		if s.v1 {
			reason = "malformed_datagram"
		}
	case 2: // a tag return
		b = append([]byte{0x31, 0, 0, 0, 7}, pkt...)
		if s.v1 {
			reason = "malformed_datagram"
		}
	case 3: // an observed address
		b = []byte{0x01, 203, 0, 113, 5, 0xd4, 0x31}
	case 4: // a routed packet cut short
		b, _ = tunnel.AppendRouted(nil, "echo", pkt)
		b, reason = b[:3], "malformed_datagram"
	case 5: // IPv6, or too short for it: not IPv4 all the same
		b, reason = []byte{0x60, 0, 0, 0, 0, 8, 17}, "not_ipv4"
	case 6: // an IPv4 header cut short
		b, reason = pkt[:12], "malformed"
	default: // a registration ACK, which agents receive
		b = []byte{0x12, 0x00, 4, 'e', 'c', 'h', 'o'}
	}
	m.send(s, b)
	m.drops[reason]++
	return fmt.Sprintf("malformed %d from session %d: %s", kind, s.idx, reason)
}

// reload gives a service other tenants, or removes or adds it.
func (m *dsModel) reload() string {
	t := m.t
	t.Helper()
	svc := pick(m.rng, []string{"echo", "web"})
	m.barrier()
	cur := m.tenants[svc]
	var next []string
	for {
		next = m.choices[m.rng.IntN(len(m.choices))]
		if !slices.Equal(next, cur) || (next == nil) != (cur == nil) {
			break
		}
	}
	m.tenants[svc] = next
	m.fh.write(t, m.config())
	if _, err := m.g.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	// A flow whose agent may no longer reach its service (its tenant
	// removed from it, or the service removed) ends at once: the direct
	// path drops its packets from now on, so it has nothing to drain. A
	// TCP flow is reset, once: a FIN could not be acknowledged. (Every
	// reset is expected before any is waited for: a wait reads them all.)
	var ended []dsKey
	for k, f := range m.flows {
		if m.mayReach(m.sessions[k.sess], f.service) {
			continue
		}
		if k.proto == "tcp" && f.ack != 0 {
			m.expect[tcpToken("rst", k.sess, k.src, k.dst)] = &dsExpect{sess: k.sess, dst: k.src, want: 1}
		}
		ended = append(ended, k)
	}
	for _, k := range ended {
		s := m.sessions[k.sess]
		m.waitFor(fmt.Sprintf("the %s flow %v→%v of session %d (%s) ended", k.proto, k.src, k.dst, k.sess, s.tenant), func() bool {
			return len(m.g.flows.list(func(gf *flow) bool {
				return gf.client == netip.AddrPortFrom(s.synth, k.src.Port()) && gf.vip == k.dst && gf.proto == k.proto
			})) == 0
		})
		delete(m.flows, k)
	}
	m.waitDirectories("reload")
	return fmt.Sprintf("reload: %s admits %v", svc, next)
}

// barrier waits until the gateway has read every acknowledgement the
// model sent: checkTCP sends them as replies come in, so one may still be
// on its way when a step ends, and a reload that lands first judges it by
// the rights after it (a drop the model does not count). A session's
// datagrams are read in order, so a DNS query sent after them and
// answered marks them read. It draws nothing from the model's generator.
func (m *dsModel) barrier() {
	asked := false
	for _, s := range m.live() {
		if !s.acked {
			continue
		}
		s.acked = false
		m.seq++
		id := uint16(m.seq)
		m.nextPort++
		src := netip.AddrPortFrom(s.inner, m.nextPort)
		if drop, _ := m.sendPacket(s, "", netstacktest.UDPDatagram(src, netip.AddrPortFrom(dsGateway, 53), dnsQueryFor(id, "echo.ztna.internal", 1))); drop != "" {
			m.t.Fatalf("session %d: the barrier's query dropped as %s", s.idx, drop)
		}
		visible := m.mayReach(s, "echo")
		m.expect[fmt.Sprintf("dns-%d", id)] = &dsExpect{sess: s.idx, dst: src, want: 1, dns: &visible}
		asked = true
	}
	if asked {
		m.settle("the barrier before a reload")
	}
}

// wantDirectory is the directory of s's tenant: the services it may reach.
func (m *dsModel) wantDirectory(s *dsSession) []string {
	out := []string{}
	for _, svc := range []string{"echo", "web"} {
		if m.mayReach(s, svc) {
			out = append(out, fmt.Sprintf("%s=%v", svc, map[string]netip.Addr{"echo": dsEchoVIP, "web": dsWebVIP}[svc]))
		}
	}
	return out
}

func (s *dsSession) directory() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir == nil {
		return nil
	}
	out := []string{}
	for _, d := range s.dir.Services {
		out = append(out, fmt.Sprintf("%s=%v", d.Name, d.VIP))
	}
	return out
}

// waitDirectories waits for every live session's directory to be the
// model's.
func (m *dsModel) waitDirectories(what string) {
	m.t.Helper()
	for _, s := range m.live() {
		if s.v1 {
			continue // no control stream
		}
		m.waitFor(fmt.Sprintf("%s: session %d's directory %v", what, s.idx, m.wantDirectory(s)), func() bool {
			return slices.Equal(s.directory(), m.wantDirectory(s))
		})
	}
}

func (m *dsModel) waitFor(what string, cond func() bool) {
	m.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: not within 10 s", what)
		}
		m.absorb()
		time.Sleep(2 * time.Millisecond)
	}
}

// absorb checks the replies received so far.
func (m *dsModel) absorb() { drainNow(m.replies, m.check) }

// check matches one datagram a session received with the model.
func (m *dsModel) check(r dsReply) {
	t := m.t
	t.Helper()
	s := m.sessions[r.sess]
	switch k := tunnel.Kind(r.b); k {
	case tunnel.TypeIP:
	case tunnel.TypeQAD:
		if len(r.b) != tunnel.QADLen || netip.AddrFrom4([4]byte(r.b[1:5])) != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("session %d: QAD % x, want 127.0.0.1 and a port", r.sess, r.b)
		}
		return
	case tunnel.TypeAck, tunnel.TypeNack:
		if m.regWant[r.sess][string(r.b)] == 0 {
			t.Errorf("session %d (%s, v1 %v): a registration answer % x it is not owed", r.sess, s.identity(), s.v1, r.b)
			return
		}
		m.regWant[r.sess][string(r.b)]--
		return
	default:
		t.Errorf("session %d: a datagram of type %#x: % x", r.sess, k, r.b)
		return
	}
	p := r.b
	if len(p) < 20 || p[0]>>4 != 4 || int(binary.BigEndian.Uint16(p[2:4])) > len(p) {
		t.Errorf("session %d: a datagram that is no IPv4 packet: % x", r.sess, p)
		return
	}
	p = p[:binary.BigEndian.Uint16(p[2:4])] // no padding
	ihl := int(p[0]&0xf) * 4
	src, dst := netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
	if dst != s.inner {
		t.Errorf("session %d: a packet to %v, its inner address is %v", r.sess, dst, s.inner)
		return
	}
	body := p[ihl:]
	var tok string
	var dstPort uint16
	switch p[9] {
	case 17:
		dstPort = binary.BigEndian.Uint16(body[2:4])
		if src == dsGateway && binary.BigEndian.Uint16(body[0:2]) == 53 {
			msg := body[8:]
			tok = fmt.Sprintf("dns-%d", binary.BigEndian.Uint16(msg[0:2]))
			if e := m.expect[tok]; e != nil && e.dns != nil && e.sess == r.sess {
				if answers := binary.BigEndian.Uint16(msg[6:8]) > 0; answers != *e.dns {
					t.Errorf("session %d (%s): the DNS answer %s names the service: %v, want %v", r.sess, s.tenant, tok, answers, *e.dns)
				}
			}
		} else {
			tok = string(body[8:])
		}
	case 1:
		switch body[0] {
		case 0:
			tok = string(body[8:])
		case 3: // a refused flow's port unreachable: it quotes this session's packet
			if q := body[8:]; len(q) >= 20 && netip.AddrFrom4([4]byte(q[12:16])) != s.inner {
				t.Errorf("session %d: an unreachable quoting a packet from %v", r.sess, netip.AddrFrom4([4]byte(q[12:16])))
			}
			return
		default:
			t.Errorf("session %d: ICMP type %d", r.sess, body[0])
			return
		}
	case 6:
		tok = m.checkTCP(s, p, src)
		if tok == "" {
			return
		}
	default:
		t.Errorf("session %d: a reply of protocol %d", r.sess, p[9])
		return
	}
	if m.forbidden[tok] {
		t.Errorf("session %d: a reply to %q, a packet that must reach no one", r.sess, tok)
		return
	}
	e := m.expect[tok]
	if e == nil {
		t.Errorf("session %d: an unexpected reply %q (% x)", r.sess, tok, p)
		return
	}
	if e.sess != r.sess {
		t.Errorf("the reply to %q reached session %d (%s from %v), its packet came from session %d (%s from %v)",
			tok, r.sess, s.identity(), s.inner, e.sess, m.sessions[e.sess].identity(), m.sessions[e.sess].inner)
		return
	}
	if p[9] != 1 && dstPort != e.dst.Port() && p[9] != 6 {
		t.Errorf("the reply to %q goes to port %d, want %d", tok, dstPort, e.dst.Port())
	}
	e.got++
	if e.got > e.want {
		t.Errorf("%q answered %d times, want %d", tok, e.got, e.want)
	}
}

// checkTCP reads a TCP segment to s: the token of an expected SYN-ACK,
// RST or line, or "" for one the model does not wait for (a
// retransmission, an acknowledgement, the end of a closed flow's
// connection).
func (m *dsModel) checkTCP(s *dsSession, p []byte, src netip.Addr) string {
	ihl := int(p[0]&0xf) * 4
	body := p[ihl:]
	from := netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[0:2]))
	to := netip.AddrPortFrom(s.inner, binary.BigEndian.Uint16(body[2:4]))
	seq := binary.BigEndian.Uint32(body[4:8])
	flags := body[13]
	payload := body[int(body[12]>>4)*4:]
	k := dsKey{s.idx, "tcp", to, from}
	f := m.flows[k]
	switch {
	case flags&0x04 != 0:
		tok := tcpToken("rst", s.idx, to, from)
		if e := m.expect[tok]; e == nil || e.got >= e.want {
			return "" // a flow's end
		}
		return tok
	case flags&0x12 == 0x12:
		tok := tcpToken("synack", s.idx, to, from)
		if e := m.expect[tok]; e == nil || e.got >= e.want {
			return "" // a retransmission
		}
		if f != nil && f.ack == 0 {
			f.ack = seq + 1
			m.sendPacket(s, "", netstacktest.TCPSegmentAck(to, from, netstacktest.FlagACK, f.seq, f.ack, nil))
			s.acked = true
		}
		return tok
	case len(payload) > 0:
		line := strings.TrimSuffix(string(payload), "\n")
		tok, ok := strings.CutPrefix(line, "echo: ")
		if !ok {
			m.t.Errorf("session %d: TCP data %q", s.idx, payload)
			return ""
		}
		if f != nil && seq == f.ack {
			f.ack += uint32(len(payload))
			m.sendPacket(s, "", netstacktest.TCPSegmentAck(to, from, netstacktest.FlagACK, f.seq, f.ack, nil))
			s.acked = true
		} else if e := m.expect[tok]; e != nil && e.got >= e.want {
			return "" // a retransmission
		}
		return tok
	}
	return ""
}

// settle waits for the expected replies and the counters, then checks
// them exactly, and the flows.
func (m *dsModel) settle(what string) {
	t := m.t
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.absorb()
		// A TCP flow enters the table a moment after its SYN-ACK left.
		if m.replied() && m.countersOK() && len(m.flowErrors()) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	for tok, e := range m.expect {
		if e.got < e.want {
			t.Errorf("%s: no reply to %q of session %d", what, tok, e.sess)
		}
	}
	for sess, w := range m.regWant {
		for b, n := range w {
			if n > 0 {
				t.Errorf("%s: session %d is owed the registration answer % x (%d times)", what, sess, b, n)
			}
		}
	}
	for _, d := range countsDiffer(m.g, m.drops, m.refused) {
		t.Errorf("%s: %s", what, d)
	}
	for r, v := range m.sessRef {
		if got := m.sessRefused(r); got != v {
			t.Errorf("%s: ztgate_tunnel_refusals_total{reason=%q} = %v, want %v", what, r, got, v)
		}
	}
	for r, v := range m.handRef {
		if got := m.handRefused(r); got != v {
			t.Errorf("%s: ztgate_tunnel_handshakes_total{side=\"server\",result=\"refused\",reason=%q} = %v, want %v", what, r, got, v)
		}
	}
	for _, err := range m.flowErrors() {
		t.Errorf("%s: %s", what, err)
	}
	for _, s := range m.live() {
		if s.v1 {
			continue
		}
		if got, want := s.directory(), m.wantDirectory(s); !slices.Equal(got, want) {
			t.Errorf("%s: session %d (%s) has the directory %v, want %v", what, s.idx, s.identity(), got, want)
		}
	}
	// Done with: nothing more may answer them.
	for tok, e := range m.expect {
		if e.got >= e.want {
			delete(m.expect, tok)
			m.forbidden[tok] = true
		}
	}
}

func (m *dsModel) replied() bool {
	for _, e := range m.expect {
		if e.got < e.want {
			return false
		}
	}
	for _, w := range m.regWant {
		for _, n := range w {
			if n > 0 {
				return false
			}
		}
	}
	return true
}

func (m *dsModel) countersOK() bool {
	if countsDiffer(m.g, m.drops, m.refused) != nil {
		return false
	}
	for r, v := range m.sessRef {
		if m.sessRefused(r) != v {
			return false
		}
	}
	for r, v := range m.handRef {
		if m.handRefused(r) != v {
			return false
		}
	}
	return true
}

// flowErrors compares GET /v1/flows with the model's flows: each flow is
// of a live session, with its identity, tenant and service, and every flow
// of the model is there.
func (m *dsModel) flowErrors() []string {
	t := m.t
	t.Helper()
	bySynth := map[netip.Addr]*dsSession{}
	for _, s := range m.sessions {
		bySynth[s.synth] = s
	}
	var resp struct {
		Flows []apiFlow `json:"flows"`
	}
	if code := call(t, m.g.apiHandler(""), "GET", "/v1/flows", "", &resp); code != 200 {
		t.Fatalf("GET /v1/flows: %d", code)
	}
	var errs []string
	seen := map[dsKey]bool{}
	for _, af := range resp.Flows {
		client := netip.MustParseAddrPort(af.Client)
		s := bySynth[client.Addr()]
		if s == nil {
			errs = append(errs, fmt.Sprintf("a flow %+v of no session", af))
			continue
		}
		if !s.live {
			errs = append(errs, fmt.Sprintf("a flow %+v of session %d, closed", af, s.idx))
			continue
		}
		if af.Tenant != s.tenant || af.Identity != s.identity() {
			errs = append(errs, fmt.Sprintf("flow %+v of session %d (%s)", af, s.idx, s.identity()))
		}
		k := dsKey{s.idx, af.Protocol, netip.AddrPortFrom(s.inner, client.Port()), netip.MustParseAddrPort(af.VIP)}
		f := m.flows[k]
		if f == nil {
			errs = append(errs, fmt.Sprintf("flow %+v of session %d, which the model does not know", af, s.idx))
			continue
		}
		if af.Service != f.service {
			errs = append(errs, fmt.Sprintf("flow %+v of service %s, want %s", af, af.Service, f.service))
		}
		seen[k] = true
	}
	for k, f := range m.flows {
		if !seen[k] && (k.proto == "udp" || f.ack != 0) {
			errs = append(errs, fmt.Sprintf("the %s flow %v→%v of session %d is not listed", k.proto, k.src, k.dst, k.sess))
		}
	}
	slices.Sort(errs)
	return errs
}
