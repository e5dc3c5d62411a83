package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testseed"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/resolver/resolvertest"
	"github.com/ztgate/ztgate/tunnel"
)

// The churn test drives two agents of two tenants, attached to one fake
// relay with two fake gateways for their direct paths, through a few
// hundred random steps, and checks them against a model after every step.
// It logs its seed; ZTGATE_AGENT_SEED=<seed> makes the same choices again,
// as far as the machine's timing lets it (when an offer the model leaves
// open comes, how long a relay's redial takes).
const (
	churnSeedEnv = "ZTGATE_AGENT_SEED"
	churnSteps   = 300
	// churnWait bounds every wait for the agent to catch up with a step.
	churnWait = testTimeout
	// churnResend is how long a datagram may take before it is sent again
	// (a QUIC datagram may be lost, even on loopback).
	churnResend = time.Second
	// churnFast bounds a local refusal ("at once", where a refusal the
	// agent did not make would never come): loose enough for a loaded
	// -race run.
	churnFast = 3 * time.Second
	// churnIdleMargin: a flow that was idle within this of its table
	// timeout may have expired or not; the test sends it nothing.
	churnIdleMargin = 5 * time.Second
	// churnOfferExpiry is when the fake relay expires an offer it left
	// unanswered (the relay's own is 10 s; the agent gives up at 12 s).
	churnOfferExpiry = 8 * time.Second
	// churnRelayDrops bounds each agent's relay sessions dropped: the
	// agent redials after 1 s, 2 s, 4 s...
	churnRelayDrops = 2
	// churnSilentDeaths bounds the direct paths that die by going silent
	// (each is noticed after 0.6 to 0.8 s); the others are closed.
	churnSilentDeaths = 3
)

var (
	churnNames = []string{"web", "db", "dns", "wiki", "mail", "git"}
	churnPorts = [][]tunnel.PortInfo{
		{{Protocol: "tcp", Port: 80}, {Protocol: "udp", Port: 7}},
		{{Protocol: "udp", Port: 53}, {Protocol: "tcp", Port: 53}},
		{{Protocol: "tcp", Port: 443}},
		{{Name: "game", Protocol: "udp", Port: 27015}},
	}
	churnPool1   = netip.MustParsePrefix("10.100.0.0/24")
	churnPool2   = netip.MustParsePrefix("10.100.0.0/23")
	churnBadPool = netip.MustParsePrefix("100.64.0.0/10") // holds the agents' address: refused
	churnNever   = netip.MustParseAddr("10.100.0.5")      // in the pool, never a VIP
	churnStray   = netip.MustParseAddr("192.0.2.55")      // a pushed VIP outside the pool
	churnOther   = netip.MustParseAddr("100.64.0.2")      // an address that is not the agents'
)

// span is what a counter of the agent may read: lo when every packet sent
// again had arrived the first time, hi when none had.
type span struct{ lo, hi float64 }

func (s *span) add(n float64) { s.lo += n; s.hi += n }

// churnCounts are the model's counters of one agent.
type churnCounts struct {
	up, down, upDirect, downDirect     span
	drops                              [numDropReasons]span
	noService, serviceDown             span
	directUp, directDown, directFailed span
}

// churnSvc is a service of the relay's world.
type churnSvc struct {
	name    string
	vip     netip.Addr
	ports   []tunnel.PortInfo
	icmp    bool
	healthy bool
	tenants map[string]bool
}

// viewSvc is a service of an agent's directory, as the model has it.
type viewSvc struct {
	name    string
	vip     netip.Addr
	ports   []tunnel.PortInfo
	healthy bool
}

// churnPath is a direct path of an agent to a gateway.
type churnPath struct {
	gw       *fakeServer
	sess     *fakeSession
	alive    bool
	services map[string]uint64 // services whose new flows start here → the offer's id
	served   map[string]bool   // services whose flows ever started here
}

func (p *churnPath) place() place { return place{server: p.gw.name, seq: p.sess.seq} }

// churnFlow is a flow an agent's TUN opened.
type churnFlow struct {
	n        int
	proto    uint8
	src, dst netip.AddrPort // ICMP: src's port is the echo identifier, dst's 0
	known    bool           // the router's flow table has it
	path     *churnPath     // its path while known; nil: the relay
	last     time.Time      // when a packet last refreshed its entry
	seq      uint16
}

func (f *churnFlow) idle() time.Duration {
	switch f.proto {
	case tunnel.ProtoTCP:
		return tunnel.FlowTCPIdle
	case tunnel.ProtoUDP:
		return tunnel.FlowUDPIdle
	}
	return tunnel.FlowOtherIdle
}

// ambiguous: its entry may or may not have expired by now.
func (f *churnFlow) ambiguous(now time.Time) bool {
	d := now.Sub(f.last)
	return f.known && d > f.idle()-churnIdleMargin && d < f.idle()+churnIdleMargin
}

// expired: its entry has certainly expired.
func (f *churnFlow) expired(now time.Time) bool {
	return f.known && now.Sub(f.last) >= f.idle()+churnIdleMargin
}

// offerState is what the model knows of a service's direct-path attempts
// at an agent. Absent: fresh.
type offerState struct {
	fresh   bool      // a new flow on the relay makes the agent offer at once
	may     bool      // an offer may come (a backoff passes, a lost one times out)
	pending uint64    // an offer on the relay session, not answered yet
	since   time.Time // of pending
}

// churnAgent is an agent and the model of it.
type churnAgent struct {
	name, tenant string
	a            *Agent
	tun          *rawTUN
	relay        *tunnel.Session // the fake relay's side; nil while disconnected
	relaySeq     int
	drops        int
	dialing      time.Time // when its redial reached the relay, waiting for the welcome
	pool         netip.Prefix
	view         map[string]*viewSvc
	routes       map[string]*churnPath // services whose new flows go direct
	offers       map[string]*offerState
	expecting    map[string]bool // fresh services a step's new flows must make it offer
	results      map[uint64]*tunnel.Result
	paths        map[string]*churnPath // live, by gateway
	flows        []*churnFlow
	want         churnCounts
	waits        []*outWait // what its TUN must still show, or may show again
	dnsPort      uint16
	oldIDs       []uint64 // signaling sessions of paths no service's new flows start on
	closed       bool
}

func (ag *churnAgent) close() {
	if !ag.closed {
		ag.closed = true
		ag.a.Close()
	}
}

func (ag *churnAgent) byVIP(a netip.Addr) *viewSvc {
	for _, s := range ag.view {
		if s.vip == a {
			return s
		}
	}
	return nil
}

func (ag *churnAgent) offer(service string) *offerState {
	st := ag.offers[service]
	if st == nil {
		st = &offerState{fresh: true}
		ag.offers[service] = st
	}
	return st
}

// outWait is a packet the agent must write to its TUN.
type outWait struct {
	desc   string
	match  func(p []byte) bool
	got    bool
	by     time.Time // zero: no bound beyond churnWait
	resend func()    // sends its cause again (a return packet); nil: none
	tries  int
	again  bool // it may show up again (it was sent again)
}

// sentBack is a packet from the tunnel that an agent must drop.
type sentBack struct {
	desc string
	b    []byte
}

// pktKey names a packet the test sent: IP identification and fragment
// offset.
type pktKey struct{ id, frag uint16 }

func keyOf(p []byte) pktKey {
	return pktKey{binary.BigEndian.Uint16(p[4:6]), binary.BigEndian.Uint16(p[6:8]) & 0x1fff}
}

// inflight is a packet of an agent's TUN that must reach a session.
type inflight struct {
	ag      *churnAgent
	key     pktKey
	pkt     []byte
	service string
	at      []place
	got     bool
	tries   int
	desc    string
}

type churn struct {
	t    *testing.T
	seed uint64
	rng  *rand.Rand
	p    *pki

	arrivals chan arrival
	seq      atomic.Int64
	relay    *fakeServer
	gws      []*fakeServer
	agents   []*churnAgent
	held     map[string]*tunnel.Session // redials waiting for the welcome, by agent name
	http     *http.Client
	closed   bool

	// The relay's world.
	pool    netip.Prefix
	svcs    map[string]*churnSvc
	lastVIP map[string]netip.Addr
	used    map[netip.Addr]bool

	ipID      uint16
	port      uint16
	flowN     int
	pending   map[pktKey]*inflight
	delivered map[pktKey]place
	sent      map[pktKey]string   // what each packet was, for a report
	backs     map[pktKey]sentBack // packets from the tunnel the agents must drop
	silent    int

	step  int
	log   []string
	stats map[string]int
}

// TestAgentChurnRandom runs churnSteps random steps against two agents
// (tenants acme and globex, the same inner address): the relay pushes
// directories (services added, removed, moved to another VIP, marked down
// and up, their tenants, ports and the pool changed, a pool the agents
// must refuse, a VIP outside the pool); the agents' offers are answered
// with one of two gateways (or a wrong identity, no candidates, refused,
// expired); direct paths are retired, closed or go silent; the relay
// session drops and comes back; the TUNs open TCP, UDP (whole and
// fragmented, fragments in order or not) and ICMP echo flows to services
// up and down and to VIPs of no service, send on them, send ICMP errors
// about their replies, and send from foreign addresses; the relay and the
// gateways send packets back, from the right VIPs and the wrong ones. A
// model checks, after every step:
//   - each packet reaches the session the model says (the relay, or the
//     path its flow started on until that path dies; new flows the
//     service's current path; a later fragment its first's), intact, with
//     its service's name, and no session of the other agent;
//   - new flows to a service that is down and every packet to a VIP of no
//     service are refused by the agent itself within churnFast (RST,
//     ICMP port unreachable, no echo reply) and reach no session;
//   - a fresh service's first new flow on the relay makes the agent offer,
//     and no service offers twice or while it is direct;
//   - DNS at 10.100.0.1 answers A and PTR from the latest directory
//     (NXDOMAIN for names gone, REFUSED outside the pool);
//   - packets from the tunnel reach the TUN exactly when they should;
//   - Status and GET /v1/status (connection, pool, services, their paths,
//     the direct paths), the counters and the sessions the fakes see.
//
// At the end no goroutine is left.
func TestAgentChurnRandom(t *testing.T) {
	before := goleak.IgnoreCurrent()
	seed := testseed.Get(t, churnSeedEnv)
	c := newChurn(t, seed)
	ops := []struct {
		weight int
		name   string
		do     func() bool // false: not applicable now
	}{
		{24, "new flow", c.newFlow},
		{20, "flow packet", c.flowPacket},
		{10, "packets back", c.packetsBack},
		{2, "junk from the TUN", c.junk},
		{5, "service added", c.serviceAdd},
		{4, "service removed", c.serviceRemove},
		{4, "service moved", c.serviceMove},
		{6, "service down or up", c.serviceHealth},
		{3, "service's tenants", c.serviceTenants},
		{2, "service's ports", c.servicePorts},
		{2, "pool changed", c.poolChange},
		{1, "hostile directory", c.hostileDirectory},
		{12, "offer answered", c.answer},
		{3, "direct path retired", c.retire},
		{4, "direct path dies", c.pathDies},
		{2, "relay session drops", c.relayDrop},
		{8, "relay session back", c.relayBack},
		{4, "dns", c.dnsAll},
		{2, "status over http", c.statusHTTP},
	}
	for c.step = 1; c.step <= churnSteps; c.step++ {
		c.housekeeping()
		for {
			i := testseed.Weighted(c.rng, len(ops), func(i int) int { return ops[i].weight })
			c.logf("%s", ops[i].name)
			if ops[i].do() {
				c.stats[ops[i].name]++
				break
			}
			c.log = c.log[:len(c.log)-1]
		}
		c.settle()
	}
	c.finish()
	goleak.VerifyNone(t, before)
}

func newChurn(t *testing.T, seed uint64) *churn {
	c := &churn{
		t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), p: newPKI(t),
		arrivals: make(chan arrival, 8192), held: map[string]*tunnel.Session{},
		http: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: churnWait},
		pool: churnPool1, svcs: map[string]*churnSvc{}, lastVIP: map[string]netip.Addr{}, used: map[netip.Addr]bool{},
		port: 20000, pending: map[pktKey]*inflight{}, delivered: map[pktKey]place{}, sent: map[pktKey]string{}, backs: map[pktKey]sentBack{},
		stats: map[string]int{},
	}
	t.Cleanup(c.closeAll)
	c.relay = startFake(t, c.p, relayReq, "relay", true, c.arrivals, &c.seq)
	for _, name := range []string{"gw1", "gw2"} {
		req := tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleGateway, Name: name}
		c.gws = append(c.gws, startFake(t, c.p, req, name, false, c.arrivals, &c.seq))
	}
	// The world the agents start with: three services.
	for _, name := range churnNames[:3] {
		c.svcs[name] = c.newService(name)
	}
	for i, tenant := range []string{"acme", "globex"} {
		ag := &churnAgent{name: "laptop-" + string(rune('a'+i)), tenant: tenant, tun: newRawTUN(), pool: churnPool1,
			view: map[string]*viewSvc{}, routes: map[string]*churnPath{}, offers: map[string]*offerState{},
			expecting: map[string]bool{}, results: map[uint64]*tunnel.Result{}, paths: map[string]*churnPath{},
			dnsPort: 5353}
		cert, key := c.p.issue(tunnel.IssueRequest{Tenant: tenant, Role: tunnel.RoleAgent, Name: ag.name})
		cfg := &conf.Agent{
			Name:   ag.name,
			Tunnel: conf.Tunnel{Server: c.relay.addr.String(), ServerName: "relay.test", Cert: cert, Key: key, CA: c.p.caFile},
			TUN:    conf.TUN{Name: "test", MTU: 1280, Pool: churnPool1, Address: innerAddr, Enabled: true},
			DNS:    conf.DNS{Zone: "ztna.internal.", TTL: 30 * time.Second},
			API:    conf.API{Listen: netip.MustParseAddrPort("127.0.0.1:0")},
		}
		a, err := New(cfg, Options{Device: ag.tun, Registry: prometheus.NewRegistry()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		ag.a = a
		c.agents = append(c.agents, ag)
		c.welcome(ag)
		c.push(ag, c.pool, false)
	}
	c.settle()
	return c
}

// closeAll stops the agents and the fakes (once).
func (c *churn) closeAll() {
	if c.closed {
		return
	}
	c.closed = true
	for _, ag := range c.agents {
		ag.close()
	}
	for _, s := range c.held {
		_ = s.Close("test over")
	}
	c.relay.close()
	for _, gw := range c.gws {
		gw.close()
	}
	c.http.CloseIdleConnections()
}

// logf records a step for the failure report.
func (c *churn) logf(format string, args ...any) {
	c.log = append(c.log, fmt.Sprintf("%3d: ", c.step)+fmt.Sprintf(format, args...))
}

// fatalf fails the test with the seed and the last steps.
func (c *churn) fatalf(format string, args ...any) {
	c.t.Helper()
	first := max(0, len(c.log)-40)
	c.t.Fatalf("step %d: %s\nseed %d (%s=%d); last steps:\n%s", c.step, fmt.Sprintf(format, args...),
		c.seed, churnSeedEnv, c.seed, strings.Join(c.log[first:], "\n"))
}

// pickKey returns a random key of m that keep accepts, in a deterministic
// order, or "".
func pickKey[V any](rng *rand.Rand, m map[string]V, keep func(string, V) bool) string {
	var ok []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if keep == nil || keep(k, m[k]) {
			ok = append(ok, k)
		}
	}
	if len(ok) == 0 {
		return ""
	}
	return ok[rng.IntN(len(ok))]
}

func (c *churn) agentNamed(name string) *churnAgent {
	for _, ag := range c.agents {
		if ag.name == name {
			return ag
		}
	}
	c.fatalf("a session of %q, no agent of the test", name)
	return nil
}

// --- packets ---

func (c *churn) nextID() uint16 {
	c.ipID++
	if c.ipID == 0 {
		c.ipID = 1
	}
	return c.ipID
}

// udpPacket is an IPv4 UDP datagram, checksums right.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	return netstacktest.UDPDatagram(src, dst, payload)
}

// withID sets p's IP identification (and its header checksum).
func withID(p []byte, id uint16) []byte {
	binary.BigEndian.PutUint16(p[4:6], id)
	netstacktest.SetIPv4Checksum(p)
	return p
}

// portsOf returns the transport ports of an IPv4 packet of at least 4
// bytes past its header.
func portsOf(p []byte) [2]uint16 {
	hl := int(p[0]&0x0f) * 4
	return [2]uint16{binary.BigEndian.Uint16(p[hl:]), binary.BigEndian.Uint16(p[hl+2:])}
}

// payload is what the test writes in a packet: who sent it in which step.
func (c *churn) payload(ag *churnAgent, what string, n int) []byte {
	b := []byte(fmt.Sprintf("%s step %d %s ", ag.name, c.step, what))
	for len(b) < n {
		b = append(b, 'x')
	}
	return b[:max(n, 1)]
}

// tunPacket is one packet the TUN hands the router, and what the model
// needs to know of it.
type tunPacket struct {
	b     []byte
	opens bool // a TCP SYN, any UDP datagram or fragment, an echo request
	tcp   bool
	udp   bool
	err   bool // an ICMP error about one of the flow's replies
	later bool // a later fragment
	whole bool // a datagram's last piece sent: the local stack answers once it has all
	dgram *dgramState
}

// dgramState is the routing of a fragmented datagram's fragments.
type dgramState struct {
	firstSeen bool
	path      *churnPath // the path its first fragment took (nil: the relay)
}

// packetsFor builds the next packets of flow f: its first, or one more.
func (c *churn) packetsFor(ag *churnAgent, f *churnFlow, first bool) []*tunPacket {
	id := c.nextID()
	switch f.proto {
	case tunnel.ProtoTCP:
		flags, syn := uint8(netstacktest.FlagACK|netstacktest.FlagPSH), false
		if first || c.rng.IntN(10) == 0 {
			flags, syn = netstacktest.FlagSYN, true
		}
		var data []byte
		if !syn {
			data = c.payload(ag, fmt.Sprintf("tcp flow %d", f.n), 1+c.rng.IntN(900))
		}
		b := withID(netstacktest.TCPSegment(f.src, f.dst, flags, uint32(f.seq)*1000, data), id)
		f.seq++
		return []*tunPacket{{b: b, opens: syn, tcp: true, whole: true}}
	case tunnel.ProtoICMP:
		f.seq++
		b := withID(netstacktest.EchoRequest(f.src.Addr(), f.dst.Addr(), f.src.Port(), f.seq,
			c.payload(ag, fmt.Sprintf("echo flow %d", f.n), 8+c.rng.IntN(500))), id)
		return []*tunPacket{{b: b, opens: true, whole: true}}
	}
	if !first && f.known && c.rng.IntN(8) == 0 {
		// An ICMP port unreachable about a reply of the flow's.
		reply := withID(udpPacket(f.dst, f.src, []byte("late reply")), 0x7777)
		b := withID(netstacktest.ICMPError(f.src.Addr(), f.dst.Addr(), 3, 3, reply), id)
		return []*tunPacket{{b: b, err: true, whole: true}}
	}
	f.seq++
	if c.rng.IntN(4) != 0 {
		b := withID(udpPacket(f.src, f.dst, c.payload(ag, fmt.Sprintf("udp flow %d", f.n), 1+c.rng.IntN(900))), id)
		return []*tunPacket{{b: b, opens: true, udp: true, whole: true}}
	}
	whole := withID(udpPacket(f.src, f.dst, c.payload(ag, fmt.Sprintf("fragmented udp flow %d", f.n), 1200+c.rng.IntN(1200))), id)
	frags := netstacktest.Fragment(whole, 256+8*c.rng.IntN(40))
	d := &dgramState{}
	var out []*tunPacket
	for i, b := range frags {
		out = append(out, &tunPacket{b: b, opens: true, udp: true, later: i > 0, dgram: d})
	}
	if c.rng.IntN(3) == 0 { // the last fragment first
		out = append([]*tunPacket{out[len(out)-1]}, out[:len(out)-1]...)
	}
	out[len(out)-1].whole = true
	return out
}

// newFlow opens a flow from a random agent's TUN: to a service of its
// directory, up or down, to a VIP that has none, or to one that never had.
func (c *churn) newFlow() bool {
	ag := c.agents[c.rng.IntN(len(c.agents))]
	dst := churnNever
	var svc *viewSvc
	direct := pickKey(c.rng, ag.view, func(name string, _ *viewSvc) bool { return ag.routes[name] != nil })
	if r := c.rng.IntN(10); direct != "" && r < 5 {
		svc = ag.view[direct]
		dst = svc.vip
	} else if r < 8 {
		if name := pickKey(c.rng, ag.view, nil); name != "" {
			svc = ag.view[name]
			dst = svc.vip
		}
	} else if r < 9 {
		var old []netip.Addr
		for _, a := range slices.SortedFunc(maps.Keys(c.used), netip.Addr.Compare) {
			if ag.byVIP(a) == nil && ag.pool.Contains(a) {
				old = append(old, a)
			}
		}
		if len(old) > 0 {
			dst = old[c.rng.IntN(len(old))]
		}
	}
	f := &churnFlow{n: c.flowN, src: netip.AddrPortFrom(innerAddr, c.port)}
	c.flowN++
	c.port++
	switch r := c.rng.IntN(20); {
	case r < 8:
		f.proto = tunnel.ProtoTCP
	case r < 16:
		f.proto = tunnel.ProtoUDP
	default:
		f.proto = tunnel.ProtoICMP
	}
	var port uint16 = 9
	if svc != nil {
		proto := map[uint8]string{tunnel.ProtoTCP: "tcp", tunnel.ProtoUDP: "udp"}[f.proto]
		var ports []uint16
		for _, p := range svc.ports {
			if p.Protocol == proto {
				ports = append(ports, p.Port)
			}
		}
		if len(ports) > 0 && c.rng.IntN(8) != 0 {
			port = ports[c.rng.IntN(len(ports))]
		}
	}
	if f.proto == tunnel.ProtoICMP {
		port = 0
	}
	f.dst = netip.AddrPortFrom(dst, port)
	ag.flows = append(ag.flows, f)
	c.logf("  %s: flow %d %s %v → %v (%s)", ag.name, f.n, protoName(f.proto), f.src, f.dst, c.describeDst(ag, dst))
	c.sendFlow(ag, f, c.packetsFor(ag, f, true))
	return true
}

// flowPacket sends more on a recent flow whose table entry has certainly
// not expired, or certainly has.
func (c *churn) flowPacket() bool {
	now := time.Now()
	ag := testseed.Pick(c.rng, c.agents, func(ag *churnAgent) bool { return len(ag.flows) > 0 })
	if ag == nil {
		return false
	}
	recent := ag.flows[max(0, len(ag.flows)-48):]
	f := testseed.Pick(c.rng, recent, func(f *churnFlow) bool { return !f.ambiguous(now) && f.dst.Addr() != churnStray })
	if f == nil {
		return false
	}
	pkts := c.packetsFor(ag, f, false)
	c.logf("  %s: flow %d %s %v → %v (%s), %d packet(s)", ag.name, f.n, protoName(f.proto), f.src, f.dst,
		c.describeDst(ag, f.dst.Addr()), len(pkts))
	c.sendFlow(ag, f, pkts)
	return true
}

func protoName(p uint8) string {
	return map[uint8]string{tunnel.ProtoTCP: "tcp", tunnel.ProtoUDP: "udp", tunnel.ProtoICMP: "icmp"}[p]
}

// describeDst says what dst is to ag now, for the log.
func (c *churn) describeDst(ag *churnAgent, dst netip.Addr) string {
	s := ag.byVIP(dst)
	switch {
	case s == nil:
		return "no service"
	case !s.healthy:
		return s.name + ", down"
	case ag.routes[s.name] != nil:
		return s.name + ", direct to " + ag.routes[s.name].gw.name
	}
	return s.name + ", relay"
}

// sendFlow hands pkts to ag's router, one after the other, and checks each
// went where the model says.
func (c *churn) sendFlow(ag *churnAgent, f *churnFlow, pkts []*tunPacket) {
	var flights []*inflight
	for _, pk := range pkts {
		key := keyOf(pk.b)
		c.sent[key] = fmt.Sprintf("step %d: %s flow %d %s packet %v", c.step, ag.name, f.n, protoName(f.proto), key)
		at, service, local := c.decide(ag, f, pk)
		if !ag.tun.send(pk.b) {
			c.fatalf("the agent's TUN is closed")
		}
		if local || len(at) == 0 {
			continue
		}
		fl := &inflight{ag: ag, key: key, pkt: pk.b, service: service, at: at, desc: c.sent[key]}
		c.pending[key] = fl
		flights = append(flights, fl)
	}
	c.awaitFlights(flights)
	c.awaitOut(ag)
	c.awaitOffers(ag)
}

// decide is the model of the router: where pk of flow f goes. It returns
// the places it may reach (none: dropped), its service, or local when the
// agent answers it itself; it updates the model and what the TUN must
// show.
func (c *churn) decide(ag *churnAgent, f *churnFlow, pk *tunPacket) (at []place, service string, local bool) {
	dst := f.dst.Addr()
	svc := ag.byVIP(dst)
	if svc == nil || !svc.healthy && pk.opens {
		if svc == nil {
			ag.want.noService.add(1)
		} else {
			ag.want.serviceDown.add(1)
		}
		c.stats["refused locally"]++
		c.expectRefusal(ag, f, pk)
		return nil, "", true
	}
	p, tunneled := c.pathOf(ag, svc.name, f, pk)
	if !tunneled {
		return nil, "", false
	}
	if p != nil {
		ag.want.upDirect.add(1)
		c.stats["packets direct"]++
		return []place{p.place()}, svc.name, false
	}
	if ag.relay == nil {
		ag.want.drops[dropNoSession].add(1)
		c.stats["packets without a relay session"]++
		return nil, svc.name, false
	}
	ag.want.up.add(1)
	c.stats["packets on the relay"]++
	return []place{{server: "relay", seq: ag.relaySeq}}, svc.name, false
}

// pathOf is the model of router.pathOf: the path of a packet of a flow to
// service (nil: the relay).
func (c *churn) pathOf(ag *churnAgent, service string, f *churnFlow, pk *tunPacket) (*churnPath, bool) {
	now := time.Now()
	current := ag.routes[service]
	if pk.later {
		d := pk.dgram
		if !d.firstSeen {
			return current, true
		}
		f.last = now
		return d.path, true
	}
	if f.expired(now) {
		f.known = false
	}
	alive := f.known && (f.path == nil || f.path.alive)
	if pk.err {
		if alive {
			f.last = now
			return f.path, true
		}
		return current, true
	}
	if !alive {
		f.known, f.path = true, current
		if current == nil {
			c.wantOffer(ag, service)
		}
	}
	f.last = now
	if pk.dgram != nil {
		pk.dgram.firstSeen, pk.dgram.path = true, f.path
	}
	return f.path, true
}

// expectRefusal records what the agent's local stack answers to a packet
// it refuses: a RST to TCP, a port unreachable to a UDP datagram (once it
// has all its fragments), nothing to an echo request or an ICMP error,
// and nothing to an address outside the pool, which it does not route.
func (c *churn) expectRefusal(ag *churnAgent, f *churnFlow, pk *tunPacket) {
	if !ag.pool.Contains(f.dst.Addr()) || !pk.whole {
		return
	}
	by := time.Now().Add(churnFast)
	switch {
	case pk.tcp:
		c.stats["refusals answered with a RST"]++
		ag.waits = append(ag.waits, &outWait{
			desc: fmt.Sprintf("RST from %v to %v", f.dst, f.src), by: by,
			match: func(p []byte) bool {
				src, dst, _ := netstack.IPv4Addrs(p)
				return p[9] == tunnel.ProtoTCP && len(p) >= 40 && src == f.dst.Addr() && dst == f.src.Addr() &&
					portsOf(p) == [2]uint16{f.dst.Port(), f.src.Port()} && p[20+13]&netstacktest.FlagRST != 0
			},
		})
	case pk.udp:
		c.stats["refusals answered with a port unreachable"]++
		id := binary.BigEndian.Uint16(pk.b[4:6])
		ag.waits = append(ag.waits, &outWait{
			desc: fmt.Sprintf("port unreachable about %v → %v (IP id %d)", f.src, f.dst, id), by: by,
			match: func(p []byte) bool {
				src, _, _ := netstack.IPv4Addrs(p)
				return p[9] == tunnel.ProtoICMP && len(p) >= 48 && p[20] == 3 && src == f.dst.Addr() &&
					binary.BigEndian.Uint16(p[28+4:]) == id && bytes.Equal(p[28+16:28+20], f.dst.Addr().AsSlice())
			},
		})
	default:
		c.stats["refusals answered with nothing"]++
	}
}

// wantOffer: a new flow to service started on the relay.
func (c *churn) wantOffer(ag *churnAgent, service string) {
	if ag.relay == nil {
		return // the agent offers only through a relay
	}
	st := ag.offer(service)
	if st.pending == 0 && st.fresh {
		ag.expecting[service] = true
	}
}

// awaitFlights waits until every flight reached its place, sending again
// those that take longer than churnResend.
func (c *churn) awaitFlights(flights []*inflight) {
	deadline := time.Now().Add(churnWait)
	for {
		var missing []*inflight
		for _, fl := range flights {
			if !fl.got {
				missing = append(missing, fl)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.fatalf("%s did not reach %v within %v", missing[0].desc, missing[0].at, churnWait)
		}
		timer := time.NewTimer(churnResend)
		select {
		case a := <-c.arrivals:
			timer.Stop()
			c.arrived(a)
		case <-timer.C:
			for _, fl := range missing {
				if fl.tries++; fl.tries > 3 {
					c.fatalf("%s did not reach %v (sent %d times)", fl.desc, fl.at, fl.tries)
				}
				c.stats["packets sent again"]++
				c.logf("  sent again: %s", fl.desc)
				c.resendCounts(fl)
				fl.ag.tun.send(fl.pkt)
			}
		}
	}
}

// resendCounts widens the counters a packet sent again may add to.
func (c *churn) resendCounts(fl *inflight) {
	switch fl.at[0].server {
	case "relay":
		fl.ag.want.up.hi++
	default:
		fl.ag.want.upDirect.hi++
	}
}

// arrived checks a datagram one of the fakes received.
func (c *churn) arrived(a arrival) {
	service, pkt, err := tunnel.ParseRouted(a.b)
	if err != nil {
		c.fatalf("%v received a datagram that is not a routed packet (% x): %v", a.at, a.b[:min(len(a.b), 32)], err)
	}
	if len(pkt) < 20 {
		c.fatalf("%v received a routed packet of %d bytes", a.at, len(pkt))
	}
	key := keyOf(pkt)
	fl := c.pending[key]
	if fl == nil {
		if at, ok := c.delivered[key]; ok && at == a.at {
			return // sent again, and both arrived
		}
		what := c.sent[key]
		if what == "" {
			what = fmt.Sprintf("a packet the test did not send (IP id %d)", key.id)
		}
		c.fatalf("%s reached %v (a session of %s): it must not reach any, or not this one", what, a.at, a.agent)
	}
	switch {
	case a.agent != fl.ag.name:
		c.fatalf("%s reached %v, a session of %s: another tenant's", fl.desc, a.at, a.agent)
	case !slices.Contains(fl.at, a.at):
		c.fatalf("%s reached %v, want %v", fl.desc, a.at, fl.at)
	case string(service) != fl.service:
		c.fatalf("%s reached %v framed for service %q, want %q", fl.desc, a.at, service, fl.service)
	case !bytes.Equal(pkt, fl.pkt):
		c.fatalf("%s reached %v changed", fl.desc, a.at)
	}
	fl.got = true
	delete(c.pending, key)
	c.delivered[key] = a.at
}

// awaitOut waits for what ag's TUN must show, sending return packets
// again when they take longer than churnResend.
func (c *churn) awaitOut(ag *churnAgent) {
	deadline := time.Now().Add(churnWait)
	for {
		var missing []*outWait
		for _, w := range ag.waits {
			if !w.got {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.fatalf("%s's TUN never showed %s", ag.name, missing[0].desc)
		}
		timer := time.NewTimer(churnResend)
		select {
		case w := <-ag.tun.out:
			timer.Stop()
			c.tunOut(ag, w)
		case <-timer.C:
			for _, w := range missing {
				if w.resend == nil {
					continue
				}
				if w.tries++; w.tries > 3 {
					c.fatalf("%s's TUN never showed %s (sent %d times)", ag.name, w.desc, w.tries)
				}
				c.logf("  sent again: %s", w.desc)
				c.stats["packets sent again"]++
				w.again = true
				w.resend()
			}
		}
	}
}

// tunOut checks a packet ag wrote to its TUN against what it must write.
func (c *churn) tunOut(ag *churnAgent, out written) {
	p := out.b
	for i, w := range ag.waits {
		if !w.match(p) {
			continue
		}
		if w.got && !w.again {
			continue
		}
		if !w.got {
			w.got = true
			if !w.by.IsZero() && out.at.After(w.by) {
				c.fatalf("%s's TUN showed %s after more than %v", ag.name, w.desc, churnFast)
			}
		}
		if !w.again {
			ag.waits = slices.Delete(ag.waits, i, i+1)
		}
		return
	}
	if b, ok := c.backs[keyOf(p)]; ok && bytes.Equal(b.b, p) {
		c.fatalf("%s's TUN shows %s", ag.name, b.desc)
	}
	c.fatalf("%s's TUN shows a packet nobody expects: % x", ag.name, p[:min(len(p), 48)])
}

// drainOut checks what the TUNs show without waiting.
func (c *churn) drainOut() {
	for _, ag := range c.agents {
		for {
			select {
			case w := <-ag.tun.out:
				c.tunOut(ag, w)
				continue
			default:
			}
			break
		}
		if n := ag.tun.lost.Load(); n > 0 {
			c.fatalf("%s's TUN lost %d packets to a full queue", ag.name, n)
		}
	}
}

// --- offers and answers ---

// pollRelay takes the relay's control messages that came.
func (c *churn) pollRelay() {
	for {
		select {
		case m := <-c.relay.msgs:
			c.relayMsg(m)
		default:
			return
		}
	}
}

func (c *churn) relayMsg(m sessionMsg) {
	ag := c.agentNamed(m.agent)
	switch msg := m.msg.(type) {
	case *tunnel.Offer:
		if ag.relay == nil || m.seq != ag.relaySeq {
			// On a session that ended: lost with it; the agent gives it
			// up at offerTimeout.
			st := ag.offer(msg.Service)
			st.fresh, st.may = false, true
			c.logf("  %s: offer for %s on a relay session that ended", ag.name, msg.Service)
			return
		}
		c.offered(ag, msg)
	case *tunnel.Result:
		if m.seq == ag.relaySeq {
			ag.results[msg.SessionID] = msg
		}
	default:
		c.fatalf("%s sent the relay %T", ag.name, msg)
	}
}

// offered checks an offer against the model.
func (c *churn) offered(ag *churnAgent, o *tunnel.Offer) {
	st := ag.offer(o.Service)
	switch {
	case o.SessionID == 0:
		c.fatalf("%s offered %s with session id 0", ag.name, o.Service)
	case st.pending != 0:
		c.fatalf("%s offered %s again (%d) while its offer %d is open", ag.name, o.Service, o.SessionID, st.pending)
	case ag.routes[o.Service] != nil:
		c.fatalf("%s offered %s, which is direct to %s", ag.name, o.Service, ag.routes[o.Service].gw.name)
	case !st.may && !ag.expecting[o.Service]:
		c.fatalf("%s offered %s unprompted", ag.name, o.Service)
	}
	c.logf("  %s: offer %d for %s", ag.name, o.SessionID, o.Service)
	c.stats["offers"]++
	st.pending, st.since, st.fresh, st.may = o.SessionID, time.Now(), false, false
	delete(ag.expecting, o.Service)
}

// awaitOffers waits for the offers a step's new flows must bring.
func (c *churn) awaitOffers(ag *churnAgent) {
	c.pollRelay()
	deadline := time.NewTimer(churnWait)
	defer deadline.Stop()
	for len(ag.expecting) > 0 {
		select {
		case m := <-c.relay.msgs:
			c.relayMsg(m)
		case <-deadline.C:
			c.fatalf("%s did not offer a direct path for %v, fresh, on a new flow through the relay",
				ag.name, slices.Sorted(maps.Keys(ag.expecting)))
		}
	}
}

// awaitResult waits for ag's result of signaling session id.
func (c *churn) awaitResult(ag *churnAgent, id uint64) *tunnel.Result {
	deadline := time.NewTimer(churnWait)
	defer deadline.Stop()
	for ag.results[id] == nil {
		select {
		case m := <-c.relay.msgs:
			c.relayMsg(m)
		case <-deadline.C:
			c.fatalf("%s sent no result for signaling session %d", ag.name, id)
		}
	}
	r := ag.results[id]
	delete(ag.results, id)
	return r
}

// answer answers an open offer of an agent, as the relay would: with a
// gateway's identity and candidates (its own, another gateway's, none),
// or an error.
func (c *churn) answer() bool {
	c.pollRelay()
	ag := testseed.Pick(c.rng, c.agents, func(ag *churnAgent) bool {
		return ag.relay != nil && pickKey(c.rng, ag.offers, func(_ string, st *offerState) bool { return st.pending != 0 }) != ""
	})
	if ag == nil {
		return false
	}
	service := pickKey(c.rng, ag.offers, func(_ string, st *offerState) bool { return st.pending != 0 })
	st := ag.offers[service]
	id := st.pending
	st.pending = 0
	named := c.gws[c.rng.IntN(len(c.gws))] // the gateway the relay vouches for
	dialled := named                       // whose candidates it passes on
	switch r := c.rng.IntN(10); {
	case r == 0:
		c.logf("  %s: offer %d for %s refused", ag.name, id, service)
		ag.relay.Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeNoGateway, SessionID: id})
		st.may = true
		ag.want.directFailed.add(1)
		return true
	case r == 1:
		dialled = nil
	case r == 2:
		dialled = c.gws[(slices.Index(c.gws, named)+1)%len(c.gws)]
	}
	m := &tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: id, Service: service, Gateway: named.identity}
	if dialled != nil {
		m.Candidates = []netip.AddrPort{dialled.addr}
	}
	c.logf("  %s: offer %d for %s answered with %s, candidates %v", ag.name, id, service, named.identity, m.Candidates)
	ag.relay.Send(m)
	res := c.awaitResult(ag, id)
	inView := ag.view[service] != nil
	live := ag.paths[named.name]
	switch {
	case !inView:
		// The service left the directory since it offered: it takes no
		// path (docs/direct-path.md, "Retirement"); when it comes back,
		// the relay chooses its gateway again.
		c.stats["answers: service gone"]++
		c.wantResult(ag, res, false, netip.AddrPort{})
		*st = offerState{fresh: true}
	case live != nil:
		c.stats["answers: the live path"]++
		c.wantResult(ag, res, true, named.addr)
		c.use(ag, service, live, id)
	case dialled == nil || dialled != named:
		c.stats["answers: no candidate or another identity"]++
		c.wantResult(ag, res, false, netip.AddrPort{})
		st.may = true
		ag.want.directFailed.add(1)
	default:
		c.stats["answers: dialled"]++
		c.wantResult(ag, res, true, named.addr)
		p := &churnPath{gw: named, sess: c.newSession(ag, named), alive: true, services: map[string]uint64{}, served: map[string]bool{}}
		ag.paths[named.name] = p
		c.stats["direct paths"]++
		c.use(ag, service, p, id)
	}
	return true
}

func (c *churn) wantResult(ag *churnAgent, res *tunnel.Result, ok bool, addr netip.AddrPort) {
	if res.Success != ok || ok && res.Address != addr {
		c.fatalf("%s's result %+v, want success %v at %v", ag.name, res, ok, addr)
	}
}

// use: service's new flows start on p.
func (c *churn) use(ag *churnAgent, service string, p *churnPath, id uint64) {
	p.services[service] = id
	p.served[service] = true
	ag.routes[service] = p
	*ag.offer(service) = offerState{}
	ag.want.directUp.add(1)
	c.logf("  %s: %s direct to %s (session %d)", ag.name, service, p.gw.name, p.sess.seq)
}

// newSession returns the session ag's dial opened at gw, the one no path
// of the model has.
func (c *churn) newSession(ag *churnAgent, gw *fakeServer) *fakeSession {
	deadline := time.Now().Add(churnWait)
	for {
		for _, fs := range gw.live(ag.name) {
			known := false
			for _, p := range ag.paths {
				known = known || p.sess == fs
			}
			if !known {
				return fs
			}
		}
		if time.Now().After(deadline) {
			c.fatalf("%s reported a direct path to %s, which has no new session of it", ag.name, gw.name)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// retire: the relay tells an agent that a direct path takes no new flows
// of a service any more (drained, or down at the gateway).
func (c *churn) retire() bool {
	ag := testseed.Pick(c.rng, c.agents, func(ag *churnAgent) bool { return ag.relay != nil && len(ag.routes) > 0 })
	if ag == nil {
		return false
	}
	if len(ag.oldIDs) > 0 && c.rng.IntN(4) == 0 {
		// About a path's session that no service's new flows start on
		// any more: it changes nothing.
		id := ag.oldIDs[c.rng.IntN(len(ag.oldIDs))]
		c.logf("  %s: retirement of old signaling session %d", ag.name, id)
		ag.relay.Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeDrained, SessionID: id})
		return true
	}
	service := pickKey(c.rng, ag.routes, nil)
	p := ag.routes[service]
	code := []string{tunnel.CodeDrained, tunnel.CodeServiceDown}[c.rng.IntN(2)]
	c.logf("  %s: %s on %s retired (%s)", ag.name, service, p.gw.name, code)
	ag.relay.Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: code, SessionID: p.services[service]})
	ag.oldIDs = append(ag.oldIDs, p.services[service])
	delete(p.services, service)
	delete(ag.routes, service)
	*ag.offer(service) = offerState{may: true}
	return true
}

// pathDies: a gateway closes a direct session, or stops answering its
// pings.
func (c *churn) pathDies() bool {
	ag := testseed.Pick(c.rng, c.agents, func(ag *churnAgent) bool { return len(ag.paths) > 0 })
	if ag == nil {
		return false
	}
	p := ag.paths[pickKey(c.rng, ag.paths, nil)]
	if c.silent < churnSilentDeaths && c.rng.IntN(3) == 0 {
		c.silent++
		c.logf("  %s: the path to %s goes silent", ag.name, p.gw.name)
		p.sess.silent.Store(true)
	} else {
		c.logf("  %s: %s closes the path", ag.name, p.gw.name)
		_ = p.sess.s.Close("test: gateway gone")
	}
	p.alive = false
	delete(ag.paths, p.gw.name)
	for service, id := range p.services {
		ag.oldIDs = append(ag.oldIDs, id)
		delete(ag.routes, service)
		*ag.offer(service) = offerState{may: true}
	}
	clear(p.services)
	ag.want.directDown.add(1)
	return true
}

// --- the relay session ---

// welcome waits for ag's session at the relay and welcomes it.
func (c *churn) welcome(ag *churnAgent) {
	deadline := time.NewTimer(churnWait)
	defer deadline.Stop()
	for c.held[ag.name] == nil {
		select {
		case s := <-c.relay.accepted:
			c.held[s.Peer().Name] = s
		case <-deadline.C:
			c.fatalf("%s did not dial the relay", ag.name)
		}
	}
	s := c.held[ag.name]
	delete(c.held, ag.name)
	fs, err := c.relay.welcome(s)
	if err != nil {
		c.fatalf("welcome %s: %v", ag.name, err)
	}
	ag.relay, ag.relaySeq, ag.dialing = s, fs.seq, time.Time{}
}

func (c *churn) relayDrop() bool {
	ag := testseed.Pick(c.rng, c.agents, func(ag *churnAgent) bool { return ag.relay != nil && ag.drops < churnRelayDrops })
	if ag == nil {
		return false
	}
	c.pollRelay()
	ag.drops++
	c.logf("  %s: relay session %d closed", ag.name, ag.relaySeq)
	_ = ag.relay.Close("test: relay restarts")
	ag.relay = nil
	for _, service := range slices.Sorted(maps.Keys(ag.offers)) {
		st := ag.offers[service]
		// An open offer, or one that may be on its way, is lost: the
		// agent gives it up at offerTimeout, and counts a failure.
		if st.pending != 0 || st.may {
			ag.want.directFailed.hi++
		}
		if st.pending != 0 {
			st.pending, st.may = 0, true
		}
	}
	clear(ag.results)
	return true
}

func (c *churn) relayBack() bool {
	ag := testseed.Pick(c.rng, c.agents, func(ag *churnAgent) bool { return ag.relay == nil })
	if ag == nil {
		return false
	}
	c.welcome(ag)
	c.logf("  %s: relay session %d welcomed", ag.name, ag.relaySeq)
	c.push(ag, c.pool, false)
	return true
}

// housekeeping does what the relay does in its own time: welcome a
// redial that would time out otherwise, expire offers left open.
func (c *churn) housekeeping() {
	c.pollRelay()
	for _, ag := range c.agents {
		if ag.relay == nil {
			select {
			case s := <-c.relay.accepted:
				c.held[s.Peer().Name] = s
			default:
			}
			if c.held[ag.name] != nil && ag.dialing.IsZero() {
				ag.dialing = time.Now()
			}
			if !ag.dialing.IsZero() && time.Since(ag.dialing) > 5*time.Second {
				c.logf("%s's redial waited 5 s: welcomed", ag.name)
				c.welcome(ag)
				c.push(ag, c.pool, false)
				c.settle()
			}
			continue
		}
		for _, service := range slices.Sorted(maps.Keys(ag.offers)) {
			st := ag.offers[service]
			if st.pending != 0 && time.Since(st.since) > churnOfferExpiry {
				c.logf("%s: offer %d for %s expired", ag.name, st.pending, service)
				ag.relay.Send(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeExpired, SessionID: st.pending})
				st.pending, st.may = 0, true
				ag.want.directFailed.add(1)
			}
		}
	}
}

// --- the directory ---

// freshVIP allocates a VIP no service ever had, in the pool.
func (c *churn) freshVIP() netip.Addr {
	bases := []netip.Addr{netip.MustParseAddr("10.100.0.10")}
	if c.pool == churnPool2 {
		bases = append(bases, netip.MustParseAddr("10.100.1.10"))
	}
	base := bases[c.rng.IntN(len(bases))]
	for a, i := base, 0; i < 240; a, i = a.Next(), i+1 {
		if !c.used[a] && a != churnNever {
			c.used[a] = true
			return a
		}
	}
	c.fatalf("no VIP left")
	return netip.Addr{}
}

func (c *churn) randomTenants() map[string]bool {
	switch c.rng.IntN(4) {
	case 0:
		return map[string]bool{"acme": true}
	case 1:
		return map[string]bool{"globex": true}
	}
	return map[string]bool{"acme": true, "globex": true}
}

func (c *churn) newService(name string) *churnSvc {
	vip := c.lastVIP[name]
	if !vip.IsValid() || !c.pool.Contains(vip) {
		vip = c.freshVIP()
	}
	c.lastVIP[name] = vip
	return &churnSvc{name: name, vip: vip, ports: churnPorts[c.rng.IntN(len(churnPorts))], icmp: c.rng.IntN(2) == 0,
		healthy: c.rng.IntN(8) != 0, tenants: c.randomTenants()}
}

// directory is the relay's directory for ag.
func (c *churn) directory(ag *churnAgent, pool netip.Prefix, stray bool) *tunnel.Directory {
	d := &tunnel.Directory{Type: tunnel.MessageDirectory, Zone: "ztna.internal.", TTL: 30, Pool: pool, Services: []tunnel.DirectoryService{}}
	for _, name := range slices.Sorted(maps.Keys(c.svcs)) {
		s := c.svcs[name]
		if s.tenants[ag.tenant] {
			d.Services = append(d.Services, tunnel.DirectoryService{Name: s.name, VIP: s.vip, Ports: s.ports, ICMP: s.icmp, Healthy: s.healthy})
		}
	}
	if stray {
		d.Services = append(d.Services, tunnel.DirectoryService{Name: "stray", VIP: churnStray, Healthy: true,
			Ports: []tunnel.PortInfo{{Protocol: "udp", Port: 9}}})
	}
	return d
}

// push sends ag the directory (with the pool given) and applies it to the
// model: a refused pool keeps the one in force, services outside the pool
// are left out, services gone leave their direct paths.
func (c *churn) push(ag *churnAgent, pool netip.Prefix, stray bool) {
	d := c.directory(ag, pool, stray)
	if err := ag.relay.Send(d); err != nil {
		c.fatalf("push to %s: %v", ag.name, err)
	}
	if pool != churnBadPool {
		ag.pool = pool
	}
	view := map[string]*viewSvc{}
	for _, s := range d.Services {
		if ag.pool.Contains(s.VIP) {
			view[s.Name] = &viewSvc{name: s.Name, vip: s.VIP, ports: s.Ports, healthy: s.Healthy}
		}
	}
	for name := range ag.view {
		if view[name] != nil {
			continue
		}
		if p := ag.routes[name]; p != nil {
			ag.oldIDs = append(ag.oldIDs, p.services[name])
			delete(p.services, name)
			delete(ag.routes, name)
			*ag.offer(name) = offerState{fresh: true}
		}
	}
	ag.view = view
}

// pushAll pushes the world to every connected agent, as the relay does on
// every change, and checks their DNS.
func (c *churn) pushAll() {
	for _, ag := range c.agents {
		if ag.relay != nil {
			c.push(ag, c.pool, false)
		}
	}
	c.settle()
	for _, ag := range c.agents {
		c.checkDNS(ag, false)
	}
}

func (c *churn) serviceAdd() bool {
	name := ""
	for _, n := range churnNames {
		if c.svcs[n] == nil {
			name = n
			break
		}
	}
	if name == "" {
		return false
	}
	s := c.newService(name)
	c.svcs[name] = s
	c.logf("  %s at %v for %v, healthy %v", name, s.vip, slices.Sorted(maps.Keys(s.tenants)), s.healthy)
	c.pushAll()
	return true
}

func (c *churn) serviceRemove() bool {
	name := pickKey(c.rng, c.svcs, nil)
	if name == "" {
		return false
	}
	c.logf("  %s", name)
	delete(c.svcs, name)
	c.pushAll()
	return true
}

func (c *churn) serviceMove() bool {
	name := pickKey(c.rng, c.svcs, nil)
	if name == "" {
		return false
	}
	s := c.svcs[name]
	s.vip = c.freshVIP()
	c.lastVIP[name] = s.vip
	c.logf("  %s to %v", name, s.vip)
	c.pushAll()
	return true
}

func (c *churn) serviceHealth() bool {
	name := pickKey(c.rng, c.svcs, nil)
	if name == "" {
		return false
	}
	if down := pickKey(c.rng, c.svcs, func(_ string, s *churnSvc) bool { return !s.healthy }); down != "" && c.rng.IntN(3) != 0 {
		name = down // down more briefly than up
	}
	s := c.svcs[name]
	s.healthy = !s.healthy
	c.logf("  %s healthy %v", name, s.healthy)
	c.pushAll()
	return true
}

func (c *churn) serviceTenants() bool {
	name := pickKey(c.rng, c.svcs, nil)
	if name == "" {
		return false
	}
	s := c.svcs[name]
	s.tenants = c.randomTenants()
	c.logf("  %s for %v", name, slices.Sorted(maps.Keys(s.tenants)))
	c.pushAll()
	return true
}

func (c *churn) servicePorts() bool {
	name := pickKey(c.rng, c.svcs, nil)
	if name == "" {
		return false
	}
	s := c.svcs[name]
	s.ports = churnPorts[c.rng.IntN(len(churnPorts))]
	c.logf("  %s ports %v", name, s.ports)
	c.pushAll()
	return true
}

// poolChange grows the pool to a /23 or shrinks it back, moving the
// services outside.
func (c *churn) poolChange() bool {
	if c.pool == churnPool1 {
		c.pool = churnPool2
	} else {
		c.pool = churnPool1
		for _, name := range slices.Sorted(maps.Keys(c.svcs)) {
			if s := c.svcs[name]; !c.pool.Contains(s.vip) {
				s.vip = c.freshVIP()
				c.lastVIP[name] = s.vip
			}
		}
	}
	c.logf("  pool %v", c.pool)
	c.pushAll()
	return true
}

// hostileDirectory pushes a pool the agents must refuse, or a service
// outside the pool.
func (c *churn) hostileDirectory() bool {
	bad := c.rng.IntN(2) == 0
	c.logf("  bad pool %v, stray service %v", bad, !bad)
	for _, ag := range c.agents {
		if ag.relay == nil {
			continue
		}
		if bad {
			c.push(ag, churnBadPool, false)
		} else {
			c.push(ag, c.pool, true)
		}
	}
	c.settle()
	for _, ag := range c.agents {
		c.checkDNS(ag, false)
	}
	return true
}

// --- packets from the tunnel ---

// packetsBack sends an agent packets from the relay or a direct path:
// replies of its flows, from other VIPs, from outside the pool, to
// another address.
func (c *churn) packetsBack() bool {
	ag := testseed.Pick(c.rng, c.agents, func(ag *churnAgent) bool { return ag.relay != nil || len(ag.paths) > 0 })
	if ag == nil {
		return false
	}
	var p *churnPath
	s := ag.relay
	if name := pickKey(c.rng, ag.paths, nil); name != "" && (s == nil || c.rng.IntN(2) == 0) {
		p = ag.paths[name]
		s = p.sess.s
	}
	for range 1 + c.rng.IntN(3) {
		c.packetBack(ag, s, p)
	}
	c.awaitOut(ag)
	return true
}

// packetBack sends one packet to ag on s (p's session, or the relay's
// when p is nil).
func (c *churn) packetBack(ag *churnAgent, s *tunnel.Session, p *churnPath) {
	src, dst := netip.AddrPortFrom(churnNever, 7), netip.AddrPortFrom(innerAddr, 40000)
	if f := testseed.Pick(c.rng, ag.flows, func(f *churnFlow) bool { return f.proto != tunnel.ProtoICMP }); f != nil {
		src, dst = f.dst, f.src
	}
	switch r := c.rng.IntN(10); {
	case r == 0:
		dst = netip.AddrPortFrom(churnOther, dst.Port())
	case r == 1:
		src = netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), src.Port())
	case r < 4:
		if name := pickKey(c.rng, ag.view, nil); name != "" {
			src = netip.AddrPortFrom(ag.view[name].vip, 80)
		}
	}
	id := c.nextID()
	text := c.payload(ag, "back", 1+c.rng.IntN(600))
	pkt := withID(udpPacket(src, dst, text), id)
	if c.rng.IntN(3) == 0 {
		pkt = withID(netstacktest.TCPSegment(src, dst, netstacktest.FlagACK|netstacktest.FlagPSH, 1, text), id)
	}
	via := "the relay"
	if p != nil {
		via = p.gw.name
	}
	if r := c.rng.IntN(20); r == 0 && p == nil {
		// A routed packet, which only an agent sends.
		b, _ := tunnel.AppendRouted(nil, "web", pkt)
		c.logf("  %s: a routed packet from the relay", ag.name)
		ag.want.drops[dropUnexpectedDatagram].add(1)
		_ = s.SendDatagram(b)
		return
	}
	desc := fmt.Sprintf("step %d: %v → %v from %s (IP id %d)", c.step, src, dst, via, id)
	why := c.acceptDown(ag, src.Addr(), dst.Addr(), p)
	c.logf("  %s: %s: %s", ag.name, desc, map[dropReason]string{numDropReasons: "taken"}[why]+dropName(why))
	if why != numDropReasons {
		ag.want.drops[why].add(1)
		c.backs[keyOf(pkt)] = sentBack{desc: desc + ", to be dropped as " + why.String(), b: pkt}
		_ = s.SendDatagram(pkt)
		return
	}
	counter := &ag.want.down
	if p != nil {
		counter = &ag.want.downDirect
	}
	counter.add(1)
	c.stats["packets back"]++
	ag.waits = append(ag.waits, &outWait{
		desc:  desc,
		match: func(b []byte) bool { return bytes.Equal(b, pkt) },
		resend: func() {
			counter.hi++
			_ = s.SendDatagram(pkt)
		},
	})
	_ = s.SendDatagram(pkt)
}

func dropName(r dropReason) string {
	if r == numDropReasons {
		return ""
	}
	return "dropped as " + r.String()
}

// acceptDown is the model of Agent.acceptDown: numDropReasons when the
// packet is taken, else why it is dropped.
func (c *churn) acceptDown(ag *churnAgent, src, dst netip.Addr, p *churnPath) dropReason {
	if dst != innerAddr || !ag.pool.Contains(src) {
		return dropForeignPacket
	}
	if p != nil {
		if s := ag.byVIP(src); s == nil || !p.served[s.name] {
			return dropWrongGateway
		}
	}
	return numDropReasons
}

// junk: packets the agent's TUN must not take: from another address, not
// IPv4.
func (c *churn) junk() bool {
	ag := c.agents[c.rng.IntN(len(c.agents))]
	id := c.nextID()
	if c.rng.IntN(2) == 0 {
		c.logf("  %s: from %v", ag.name, churnOther)
		ag.tun.send(withID(udpPacket(netip.AddrPortFrom(churnOther, 1), netip.AddrPortFrom(churnNever, 7), []byte("spoofed")), id))
		ag.want.drops[dropForeignSource].add(1)
	} else {
		c.logf("  %s: IPv6", ag.name)
		b := make([]byte, 48)
		b[0] = 0x60
		ag.tun.send(b)
		ag.want.drops[dropNotIPv4].add(1)
	}
	return true
}

// --- DNS and status ---

// dnsAll checks every name and VIP at one agent.
func (c *churn) dnsAll() bool {
	ag := c.agents[c.rng.IntN(len(c.agents))]
	c.checkDNS(ag, true)
	return true
}

// checkDNS asks ag's DNS at the gateway address for names and VIPs (all
// of them, or a few) and checks the answers against its directory.
func (c *churn) checkDNS(ag *churnAgent, all bool) {
	names := append(slices.Clone(churnNames), "stray", "nosuch")
	addrs := slices.SortedFunc(maps.Keys(c.used), netip.Addr.Compare)
	addrs = append(addrs, churnNever, churnStray)
	if !all {
		c.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
		c.rng.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
		names, addrs = names[:2], addrs[:min(2, len(addrs))]
	}
	conn := &tunDNS{tun: ag.tun, src: netip.AddrPortFrom(innerAddr, ag.dnsPort), dst: netip.AddrPortFrom(ag.a.gatewayAddr(), 53),
		id: c.nextID, other: func(w written) { c.tunOut(ag, w) }}
	ask := func(q, qtype, rcode string, want []string) {
		got, answers, err := resolvertest.Ask(conn, q, qtype)
		if err != nil {
			c.fatalf("%s: DNS %s %s: %v", ag.name, q, qtype, err)
		}
		if got != rcode || !slices.Equal(answers, want) {
			c.fatalf("%s: DNS %s %s: %s %v, want %s %v", ag.name, q, qtype, got, answers, rcode, want)
		}
		c.stats["dns questions"]++
	}
	for _, name := range names {
		asked := name + ".ztna.internal"
		if c.rng.IntN(3) == 0 { // names are matched without regard to case
			asked = strings.ToUpper(name) + ".ZTNA.internal"
		}
		if s := ag.view[name]; s != nil {
			ask(asked, "A", "NOERROR", []string{s.vip.String()})
		} else {
			ask(asked, "A", "NXDOMAIN", nil)
		}
		// The SRV record of one of its ports, or of one it had.
		ports := churnPorts[c.rng.IntN(len(churnPorts))]
		if s := ag.view[name]; s != nil && c.rng.IntN(2) == 0 {
			ports = s.ports
		}
		p := ports[c.rng.IntN(len(ports))]
		label := p.Name
		if label == "" {
			label = strconv.Itoa(int(p.Port))
		}
		srv := "_" + label + "._" + p.Protocol + "." + asked
		if s := ag.view[name]; s != nil && slices.Contains(s.ports, p) {
			ask(srv, "SRV", "NOERROR", []string{fmt.Sprintf("0 0 %d %s.ztna.internal.", p.Port, name)})
		} else {
			ask(srv, "SRV", "NXDOMAIN", nil)
		}
	}
	for _, a := range addrs {
		switch s := ag.byVIP(a); {
		case s != nil:
			ask(a.String(), "PTR", "NOERROR", []string{s.name + ".ztna.internal."})
		case ag.pool.Contains(a):
			ask(a.String(), "PTR", "NXDOMAIN", nil)
		default:
			ask(a.String(), "PTR", "REFUSED", nil)
		}
	}
}

// statusHTTP checks GET /v1/status of an agent.
func (c *churn) statusHTTP() bool {
	ag := c.agents[c.rng.IntN(len(c.agents))]
	resp, err := c.http.Get("http://" + ag.a.APIAddr() + "/v1/status")
	if err != nil {
		c.fatalf("%s: GET /v1/status: %v", ag.name, err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || resp.StatusCode != http.StatusOK {
		c.fatalf("%s: GET /v1/status: %s, %v", ag.name, resp.Status, err)
	}
	if diff := c.statusDiff(ag, st); diff != "" {
		c.fatalf("%s: GET /v1/status: %s", ag.name, diff)
	}
	return true
}

// statusDiff compares a status of ag with the model.
func (c *churn) statusDiff(ag *churnAgent, st Status) string {
	if st.Tunnel.Connected != (ag.relay != nil) {
		return fmt.Sprintf("connected %v, want %v", st.Tunnel.Connected, ag.relay != nil)
	}
	if st.Pool != ag.pool {
		return fmt.Sprintf("pool %v, want %v", st.Pool, ag.pool)
	}
	var want []ServiceStatus
	for _, name := range slices.Sorted(maps.Keys(ag.view)) {
		s := ag.view[name]
		ss := ServiceStatus{Name: name, VIP: s.vip, Healthy: s.healthy, Path: "relay", Ports: []PortStatus{}}
		for _, p := range s.ports {
			ss.Ports = append(ss.Ports, PortStatus{Protocol: p.Protocol, Port: p.Port})
		}
		if p := ag.routes[name]; p != nil {
			ss.Path, ss.Gateway = "direct", p.gw.identity
		}
		want = append(want, ss)
	}
	if !slices.EqualFunc(st.Services, want, func(a, b ServiceStatus) bool {
		return a.Name == b.Name && a.VIP == b.VIP && a.Healthy == b.Healthy && a.Path == b.Path &&
			a.Gateway == b.Gateway && slices.Equal(a.Ports, b.Ports)
	}) {
		return fmt.Sprintf("services %+v, want %+v", st.Services, want)
	}
	var paths []string
	for _, name := range slices.Sorted(maps.Keys(ag.paths)) {
		p := ag.paths[name]
		paths = append(paths, fmt.Sprintf("%s %v %s %v", p.gw.identity, p.gw.addr, "direct", slices.Sorted(maps.Keys(p.services))))
	}
	var got []string
	for _, p := range st.Paths {
		got = append(got, fmt.Sprintf("%s %v %s %v", p.Gateway, p.Remote, p.Via, p.Services))
	}
	if strings.Join(got, "; ") != strings.Join(paths, "; ") {
		return fmt.Sprintf("direct paths %q, want %q", got, paths)
	}
	return ""
}

// countsDiff compares ag's counters with the model.
func (c *churn) countsDiff(ag *churnAgent) string {
	m := ag.a.m
	var diffs []string
	check := func(name string, got float64, want span) {
		if got < want.lo || got > want.hi {
			diffs = append(diffs, fmt.Sprintf("%s %v, want %v to %v", name, got, want.lo, want.hi))
		}
	}
	exact := func(name string, got, want float64) { check(name, got, span{want, want}) }
	w := ag.want
	check("packets up", testutil.ToFloat64(m.up), w.up)
	check("packets down", testutil.ToFloat64(m.down), w.down)
	check("direct packets up", testutil.ToFloat64(m.upDirect), w.upDirect)
	check("direct packets down", testutil.ToFloat64(m.downDirect), w.downDirect)
	for r := range numDropReasons {
		check("dropped "+r.String(), testutil.ToFloat64(m.drops[r]), w.drops[r])
	}
	check("refused no_service", testutil.ToFloat64(m.refusedNoService), w.noService)
	check("refused service_down", testutil.ToFloat64(m.refusedServiceDown), w.serviceDown)
	check("direct up", testutil.ToFloat64(m.directUp), w.directUp)
	check("direct down", testutil.ToFloat64(m.directDown), w.directDown)
	check("direct failed", testutil.ToFloat64(m.directFailed), w.directFailed)
	exact("direct paths", testutil.ToFloat64(m.directPaths), float64(len(ag.paths)))
	exact("forwarded paths", testutil.ToFloat64(m.forwardedPaths), 0)
	exact("candidates skipped", testutil.ToFloat64(m.candidatesSkipped), 0)
	exact("flows evicted", testutil.ToFloat64(m.flowsEvicted), 0)
	connected := 0.0
	if ag.relay != nil {
		connected = 1
	}
	exact("connected", testutil.ToFloat64(m.connected), connected)
	return strings.Join(diffs, "; ")
}

// sessionsDiff compares the sessions the fakes hold of ag with the model.
func (c *churn) sessionsDiff(ag *churnAgent) string {
	for _, gw := range c.gws {
		want := 0
		if ag.paths[gw.name] != nil {
			want = 1
		}
		if n := len(gw.live(ag.name)); n != want {
			return fmt.Sprintf("%s holds %d sessions of it, want %d", gw.name, n, want)
		}
	}
	want := 0
	if ag.relay != nil {
		want = 1
	}
	if n := len(c.relay.live(ag.name)); n != want {
		return fmt.Sprintf("the relay holds %d sessions of it, want %d", n, want)
	}
	return ""
}

// settle waits until both agents agree with the model: status, counters,
// sessions; what came meanwhile is checked.
func (c *churn) settle() {
	deadline := time.Now().Add(churnWait)
	for _, ag := range c.agents {
		for {
			c.pollRelay()
			c.drainArrivals()
			c.drainOut()
			diff := c.statusDiff(ag, ag.a.Status())
			if diff == "" {
				diff = c.countsDiff(ag)
			}
			if diff == "" {
				diff = c.sessionsDiff(ag)
			}
			if diff == "" {
				break
			}
			if time.Now().After(deadline) {
				c.fatalf("%s: %s", ag.name, diff)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	for _, f := range []*fakeServer{c.relay, c.gws[0], c.gws[1]} {
		if n := f.overflow.Load(); n > 0 {
			c.fatalf("%s dropped %d datagrams or messages the test did not take in time", f.name, n)
		}
	}
}

// drainArrivals checks the datagrams that came without waiting.
func (c *churn) drainArrivals() {
	for {
		select {
		case a := <-c.arrivals:
			c.arrived(a)
		default:
			return
		}
	}
}

// finish checks that nothing more comes, closes the agents and checks
// that every session of theirs ended.
func (c *churn) finish() {
	c.logf("finish")
	for _, ag := range c.agents {
		c.checkDNS(ag, true)
	}
	c.statusHTTP()
	time.Sleep(200 * time.Millisecond)
	c.settle()
	for _, ag := range c.agents {
		ag.close()
	}
	for _, ag := range c.agents {
		waitFor(c.t, "the agent's sessions to end", func() bool {
			n := len(c.relay.live(ag.name))
			for _, gw := range c.gws {
				n += len(gw.live(ag.name))
			}
			return n == 0
		})
	}
	c.closeAll()
	var stats []string
	for _, k := range slices.Sorted(maps.Keys(c.stats)) {
		stats = append(stats, fmt.Sprintf("%s %d", k, c.stats[k]))
	}
	c.t.Logf("%d steps: %s", churnSteps, strings.Join(stats, ", "))
}
