package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/internal/testseed"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// TestICMPRandom drives the gateway's ICMP handling with steps drawn from
// a logged seed (ZTGATE_ICMP_SEED replays one), every packet written by
// hand into the LAN link and every packet the gateway writes to the LAN
// captured:
//   - echo requests, IPv4 and IPv6, from clients of two tenants and from a
//     source in none, to the VIPs of three services, to a VIP without a
//     service and to the gateway's own addresses, with random identifiers,
//     sequence numbers, TTLs and payloads of 0 bytes up to the MTU; bursts
//     past a tenant's rate of new flows and past a source's share of the
//     echo requests in flight to a backend that does not answer;
//   - backends that answer pings, do not, or hold them (a fake pinger);
//     reloads that change each service's tenants and icmp; the rate
//     limiter's clock stepped;
//   - UDP datagrams and TCP SYNs to the VIPs: refused ones (no service,
//     tenant, port, rate, no healthy backend: gone's only backend fails
//     its checks) and accepted ones to a backend port where nothing
//     listens; UDP datagrams in IPv4 and IPv6 fragments, reassembled;
//   - TCP flows to a backend that accepts (icmprandom_tcp_test.go): the
//     SYN-ACK, ICMP errors about it and about the established flow's data
//     from the client, its tenant's router or another tenant's client,
//     the client's RST in the handshake, data echoed;
//   - ICMP errors from clients (about their own packets, about another's,
//     about an error), redirects and other types, and malformed or
//     fragmented echo requests (ICMPv6 ones in fragments refused whole,
//     IPv4 ones to the gateway's own address reassembled and answered).
//
// After every step, the packets the LAN got are exactly those the model
// wants — each echo reply from the VIP with the request's identifier,
// sequence number and payload, each refusal an ICMP error quoting the
// client's own packet (the VIP and its ports, never a backend's address),
// or an ICMP error the stack's rate limit suppressed and counted, each
// refused SYN a RST — and ztgate_flows_refused_total, ztgate_packets_dropped_total,
// ztgate_echo_requests_total, the UDP flows and the echo slots in use agree
// with the model. No goroutine is left.
func TestICMPRandom(t *testing.T) {
	seed := testseed.Get(t, icmpSeedEnv)
	r := newICMPRand(t, seed)
	kinds := []struct {
		name   string
		weight int
		run    func()
	}{
		{"ping", 30, r.ping},
		{"burst", 4, r.burst},
		{"udp", 12, r.udp},
		{"tcp", 8, r.tcp},
		{"icmp error", 8, r.icmpError},
		{"malformed", 8, r.malformed},
		{"backends", 5, r.setModes},
		{"reload", 6, r.reload},
		{"clock", 6, r.tick},
		{"tcp flow", 7, r.tcpLive},
		{"udp fragments", 5, r.udpFragments},
	}
	spent := map[string]time.Duration{}
	for r.step = 1; r.step <= irSteps; r.step++ {
		if time.Since(r.began) > irBudget {
			r.logf("stopping: the test's time budget of %v is spent", irBudget)
			break
		}
		i := testseed.Weighted(r.rng, len(kinds), func(i int) int { return kinds[i].weight })
		began := time.Now()
		kinds[i].run()
		r.settle()
		r.stats[kinds[i].name]++
		spent[kinds[i].name] += time.Since(began)
	}
	r.t.Logf("steps: %v", r.stats)
	r.t.Logf("time spent: %v", spent)
}

const (
	icmpSeedEnv = "ZTGATE_ICMP_SEED"
	irSteps     = 300
	irBudget    = 40 * time.Second
	irWait      = 5 * time.Second
	irMTU       = 1420
	irMarkerID  = 0xfeed
)

var (
	irGW4, irGW6   = netip.MustParseAddr("10.100.0.1"), netip.MustParseAddr("fd00:100::1")
	irNoVIP4       = netip.MustParseAddr("10.100.0.99")
	irNoVIP6       = netip.MustParseAddr("fd00:100::99")
	irMarkerClient = netip.MustParseAddr("198.51.100.10")
	irClients      = []irClient{
		{netip.MustParseAddr("198.51.100.10"), "acme"},
		{netip.MustParseAddr("198.51.100.11"), "acme"},
		{netip.MustParseAddr("2001:db8:a::10"), "acme"},
		{netip.MustParseAddr("203.0.113.10"), "globex"},
		{netip.MustParseAddr("2001:db8:b::10"), "globex"},
		{netip.MustParseAddr("192.0.2.200"), ""},
		{netip.MustParseAddr("2001:db8:f::1"), ""},
	}
	irTenantChoices = []string{`"acme"`, `"globex"`, `"*"`, `"acme", "globex"`}
)

// irTenantOf is the tenant whose sources hold a, "" for none.
func irTenantOf(a netip.Addr) string {
	for _, p := range []struct {
		prefix, tenant string
	}{{"198.51.100.0/24", "acme"}, {"2001:db8:a::/48", "acme"}, {"203.0.113.0/24", "globex"}, {"2001:db8:b::/48", "globex"}} {
		if netip.MustParsePrefix(p.prefix).Contains(a) {
			return p.tenant
		}
	}
	return ""
}

type irClient struct {
	addr   netip.Addr
	tenant string // "": in no tenant
}

// irSvc is a service of the model.
type irSvc struct {
	name       string
	vip4, vip6 netip.Addr
	backends   []netip.Addr
	tcp, udp   bool // TCP 80, UDP 7
	live       bool // TCP 443 to a backend port that accepts (and echoes)
	down       bool // its only backend fails its health checks: no healthy backend
	tenants    string
	icmp       bool
}

func (s *irSvc) allows(tenant string) bool {
	return s.tenants == `"*"` || strings.Contains(s.tenants, `"`+tenant+`"`)
}

// irMode is how a backend answers pings.
type irMode uint8

const (
	irUp   irMode = iota // answers at once
	irDown               // does not answer (the ping fails at once, as after its timeout)
	irHold               // holds the ping until the test releases it
)

// irPinger is the gateway's pinger: each backend as its mode says.
type irPinger struct {
	mu      sync.Mutex
	modes   map[netip.Addr]irMode
	pinged  []netip.Addr
	held    int
	release chan struct{}
}

func (p *irPinger) Ping(ctx context.Context, dst netip.Addr, _ []byte) error {
	p.mu.Lock()
	p.pinged = append(p.pinged, dst)
	mode, release := p.modes[dst], p.release
	if mode == irHold {
		p.held++
	}
	p.mu.Unlock()
	switch mode {
	case irUp:
		return nil
	case irHold:
		select {
		case <-release:
		case <-ctx.Done():
		}
		p.mu.Lock()
		p.held--
		p.mu.Unlock()
	}
	return context.DeadlineExceeded
}

func (p *irPinger) Close() error { return nil }

func (p *irPinger) take() []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.pinged
	p.pinged = nil
	return out
}

// releaseAll ends every held ping.
func (p *irPinger) releaseAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.release)
	p.release = make(chan struct{})
}

// irLAN is the LAN device: it keeps every packet the gateway writes.
type irLAN struct {
	*netstacktest.Client
	mu   sync.Mutex
	pkts [][]byte
}

func (d *irLAN) WritePackets(pkts [][]byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range pkts {
		d.pkts = append(d.pkts, slices.Clone(p))
	}
	return nil
}

func (d *irLAN) all() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.pkts)
}

func (d *irLAN) drop(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pkts = slices.Delete(d.pkts, 0, n)
}

// irBucket is a source's bucket of new flows, as golang.org/x/time/rate
// keeps it.
type irBucket struct {
	tokens float64
	last   time.Time
}

// irWant is a packet the step's model expects on the LAN.
type irWant struct {
	kind   string // "reply", "prohibited", "port unreachable", "rst"
	req    []byte // the client's packet it answers
	from   netip.Addr
	got    bool
	limits bool     // an ICMP error: the stack's ICMP rate limit may suppress it
	reasm  bool     // an ICMP error about a datagram gVisor reassembled (irReassembledQuote)
	group  *irGroup // a reply that may come: group.need of the group's come
}

// irGroup is a set of wanted replies of which need come.
type irGroup struct{ need, got int }

type icmpRand struct {
	t                *testing.T
	rng              *rand.Rand
	step             int
	began            time.Time
	h                *fileHarness
	lan              *irLAN
	pinger           *irPinger
	clk              *fakeNow
	text             string
	tcpPort, udpPort uint16                     // where nothing listens on the backends
	livePort         uint16                     // where the backends' echo server listens
	liveTCP          map[[2]netip.AddrPort]bool // TCP flows that got a SYN-ACK: client, VIP

	svcs    []*irSvc
	buckets map[netip.Addr]*irBucket
	flows   map[[2]netip.AddrPort]bool // UDP flows: client, VIP
	refused map[[2]string]int
	drops   map[string]int
	echoOK  map[string]int
	noReply map[string]int
	port    uint16
	seq     uint16
	limited uint64 // the stack's ICMP errors suppressed so far
	stats   map[string]int

	want         []*irWant
	pendingPings []irPing // pings of the step to backends that answer or not
	groups       map[string]*irGroup
}

func newICMPRand(t *testing.T, seed uint64) *icmpRand {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	r := &icmpRand{
		t:       t,
		rng:     rand.New(rand.NewPCG(seed, seed^0x1c3b)),
		began:   time.Now(),
		clk:     newFakeNow(),
		pinger:  &irPinger{modes: map[netip.Addr]irMode{}, release: make(chan struct{})},
		buckets: map[netip.Addr]*irBucket{},
		flows:   map[[2]netip.AddrPort]bool{},
		refused: map[[2]string]int{},
		drops:   map[string]int{},
		echoOK:  map[string]int{},
		noReply: map[string]int{},
		port:    30000,
		stats:   map[string]int{},
		groups:  map[string]*irGroup{},
		tcpPort: uint16(20000 + r0(seed)%10000),
	}
	r.udpPort = r.tcpPort + 1
	r.liveTCP = map[[2]netip.AddrPort]bool{}
	r.livePort = irEchoServer(t)
	t.Cleanup(func() { r.pinger.releaseAll() }) // before the gateway closes: it waits for its pings
	r.svcs = []*irSvc{
		{name: "alpha", vip4: netip.MustParseAddr("10.100.0.10"), vip6: netip.MustParseAddr("fd00:100::10"),
			backends: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, tcp: true, udp: true},
		{name: "beta", vip4: netip.MustParseAddr("10.100.0.11"), vip6: netip.MustParseAddr("fd00:100::11"),
			backends: []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}, udp: true},
		{name: "dark", vip4: netip.MustParseAddr("10.100.0.12"), vip6: netip.MustParseAddr("fd00:100::12"),
			backends: []netip.Addr{netip.MustParseAddr("127.0.0.4")}, tcp: true},
		{name: "gone", vip4: netip.MustParseAddr("10.100.0.13"), vip6: netip.MustParseAddr("fd00:100::13"),
			backends: []netip.Addr{netip.MustParseAddr("127.0.0.5")}, tcp: true, udp: true, down: true},
	}
	r.svcs[0].live = true
	for _, s := range r.svcs {
		s.tenants = irTenantChoices[r.rng.IntN(len(irTenantChoices))]
		s.icmp = r.rng.IntN(4) != 0
	}
	r.pinger.modes[netip.MustParseAddr("127.0.0.1")] = irUp
	r.pinger.modes[netip.MustParseAddr("127.0.0.2")] = irUp
	r.pinger.modes[netip.MustParseAddr("127.0.0.3")] = irDown
	r.pinger.modes[netip.MustParseAddr("127.0.0.4")] = irHold
	r.text = r.toml()
	r.h = newFileHarnessWith(t, r.text, nil, nil, func(g *Gateway) {
		g.readFile = func(string) ([]byte, error) {
			return []byte(strings.ReplaceAll(r.text, "STATE", r.h.dir+"/state")), nil
		}
	}, func(o *Options) {
		r.lan = &irLAN{Client: o.Device.(*netstacktest.Client)}
		o.Device = r.lan
		o.Pinger = r.pinger
		o.Now = r.clk.now
	})
	r.logf("start: %s", r.describe())
	// gone's backend fails its first check: from then on the service has
	// no healthy backend.
	waitFor(t, irWait, "gone's backend down", func() bool {
		mfs, err := r.h.gw.m.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		h := series(mfs, "ztgate_backend_healthy", "service", "gone")
		return len(h) == 1 && slices.Collect(maps.Values(h))[0] == 0
	})
	r.settle()
	return r
}

// r0 spreads a seed over the backends' closed ports.
func r0(seed uint64) int { return int(seed % 1000003) }

func (r *icmpRand) toml() string {
	var b strings.Builder
	b.WriteString(`
[gateway]
state_dir = "STATE"
[api]
listen = "off"
[tun]
pool = "10.100.0.0/24"
pool6 = "fd00:100::/64"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24", "2001:db8:a::/48"]
[[tenant]]
name = "globex"
sources = ["203.0.113.0/24", "2001:db8:b::/48"]
new_flows_per_second = 2
new_flows_burst = 4
`)
	for _, s := range r.svcs {
		var q []string
		for _, a := range s.backends {
			q = append(q, fmt.Sprintf("%q", a))
		}
		fmt.Fprintf(&b, "[[service]]\nname = %q\ntenants = [%s]\nvip = %q\nvip6 = %q\nbackends = [%s]\nicmp = %v\n",
			s.name, s.tenants, s.vip4, s.vip6, strings.Join(q, ", "), s.icmp)
		if s.tcp {
			fmt.Fprintf(&b, "  [[service.port]]\n  protocol = \"tcp\"\n  port = 80\n  target = %d\n", r.tcpPort)
		}
		if s.live {
			fmt.Fprintf(&b, "  [[service.port]]\n  protocol = \"tcp\"\n  port = 443\n  target = %d\n", r.livePort)
		}
		if s.udp {
			fmt.Fprintf(&b, "  [[service.port]]\n  protocol = \"udp\"\n  port = 7\n  target = %d\n", r.udpPort)
		}
		if s.down {
			// A TCP check of the port where nothing listens, failing at
			// once and often.
			fmt.Fprintf(&b, "  [service.health]\n  type = \"tcp\"\n  port = %d\n  interval = \"500ms\"\n  fall = 1\n", r.tcpPort)
			continue
		}
		b.WriteString("  [service.health]\n  type = \"none\"\n")
	}
	return b.String()
}

func (r *icmpRand) describe() string {
	var parts []string
	for _, s := range r.svcs {
		parts = append(parts, fmt.Sprintf("%s{tenants %s icmp %v}", s.name, s.tenants, s.icmp))
	}
	r.pinger.mu.Lock()
	defer r.pinger.mu.Unlock()
	return strings.Join(parts, " ") + fmt.Sprintf(" modes %v", r.pinger.modes)
}

func (r *icmpRand) logf(format string, args ...any) {
	r.t.Helper()
	r.t.Logf("step %d (%v): %s", r.step, time.Since(r.began).Round(time.Millisecond), fmt.Sprintf(format, args...))
}

func (r *icmpRand) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("step %d: %s", r.step, fmt.Sprintf(format, args...))
}

// client is a random client: in a tenant, or now and then in none.
func (r *icmpRand) client() irClient {
	if r.rng.IntN(10) == 0 {
		return irClients[5+r.rng.IntN(2)]
	}
	return irClients[r.rng.IntN(5)]
}

// target is a random destination of a client's family: a service's VIP,
// mostly, a VIP without a service, or the gateway's own address.
func (r *icmpRand) target(c irClient) (netip.Addr, *irSvc) {
	x := r.rng.IntN(12)
	switch {
	case x == 0:
		if c.addr.Is4() {
			return irNoVIP4, nil
		}
		return irNoVIP6, nil
	case x == 1:
		if c.addr.Is4() {
			return irGW4, nil
		}
		return irGW6, nil
	}
	s := r.svcs[r.rng.IntN(len(r.svcs))]
	if c.addr.Is4() {
		return s.vip4, s
	}
	return s.vip6, s
}

func (r *icmpRand) svcAt(vip netip.Addr) *irSvc {
	for _, s := range r.svcs {
		if s.vip4 == vip || s.vip6 == vip {
			return s
		}
	}
	return nil
}

// allowSource charges a new flow of c to its bucket: the tenant's rate
// for globex (2 a second, burst 4), the gateway's (1000, 2000) for acme.
func (r *icmpRand) allowSource(c irClient) string {
	perSecond, burst, reason := 1000.0, 2000.0, refuseRate
	if c.tenant == "globex" {
		perSecond, burst, reason = 2, 4, refuseTenantRate
	}
	now := r.clk.now()
	b := r.buckets[c.addr]
	if b == nil {
		b = &irBucket{tokens: burst, last: now}
		r.buckets[c.addr] = b
	}
	b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*perSecond)
	b.last = now
	if b.tokens < 1 {
		return reason
	}
	b.tokens--
	return ""
}

// classify is the model's decision on a new flow (proto "icmp", "udp" or
// "tcp") of c to dst: "" when admitted.
func (r *icmpRand) classify(c irClient, proto string, dst netip.AddrPort) string {
	if reason := r.allowSource(c); reason != "" {
		return reason
	}
	s := r.svcAt(dst.Addr())
	switch {
	case s == nil:
		return refuseNoService
	case !s.allows(c.tenant):
		return refuseTenant
	case proto == "icmp" && !s.icmp:
		return refuseICMP
	case proto == "udp" && (!s.udp || dst.Port() != 7),
		proto == "tcp" && !(s.tcp && dst.Port() == 80 || s.live && dst.Port() == 443):
		return refusePort
	case s.down:
		return refuseNoBackend
	}
	return ""
}

func (r *icmpRand) payload() []byte {
	var n int
	switch x := r.rng.IntN(10); {
	case x == 0:
		n = 0
	case x < 6:
		n = r.rng.IntN(64)
	default:
		n = r.rng.IntN(irMTU - 48 + 1)
	}
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.rng.UintN(256))
	}
	return p
}

// shortPayload is a random payload of at most n bytes.
func (r *icmpRand) shortPayload(n int) []byte {
	p := r.payload()
	return p[:min(n, len(p))]
}

// echoPacket builds an echo request of the client's family.
func (r *icmpRand) echoPacket(src, dst netip.Addr, id, seq uint16, ttl uint8, payload []byte) []byte {
	if src.Is4() {
		p := netstacktest.EchoRequest(src, dst, id, seq, payload)
		p[8] = ttl
		netstacktest.SetIPv4Checksum(p)
		return p
	}
	m := make([]byte, 8+len(payload))
	m[0] = 128
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	copy(m[8:], payload)
	return irIPv6(src, dst, 58, ttl, m)
}

// irIPv6 builds an IPv6 packet around a transport message whose checksum
// field (ICMPv6, TCP or UDP) it fills.
func irIPv6(src, dst netip.Addr, proto, hops uint8, l4 []byte) []byte {
	b := make([]byte, 40+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
	b[6], b[7] = proto, hops
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], l4)
	at := map[uint8]int{58: 2, 6: 16, 17: 6}[proto]
	m := b[40:]
	m[at], m[at+1] = 0, 0
	binary.BigEndian.PutUint16(m[at:], ^irSum(m, irPseudo6(src, dst, proto, len(m))))
	if proto == 17 && m[at] == 0 && m[at+1] == 0 {
		m[at], m[at+1] = 0xff, 0xff
	}
	return b
}

func irPseudo6(src, dst netip.Addr, proto uint8, n int) uint32 {
	var sum uint32
	s, d := src.As16(), dst.As16()
	for i := 0; i < 16; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(s[i:])) + uint32(binary.BigEndian.Uint16(d[i:]))
	}
	return sum + uint32(n) + uint32(proto)
}

// irSum is the Internet checksum's one's-complement sum of b over initial.
func irSum(b []byte, initial uint32) uint16 {
	sum := initial
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// udpPacket and synPacket build a datagram and a SYN of the client's family.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	if src.Addr().Is4() {
		return netstacktest.UDPDatagram(src, dst, payload)
	}
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	return irIPv6(src.Addr(), dst.Addr(), 17, 64, u)
}

func synPacket(src, dst netip.AddrPort, seq uint32) []byte {
	if src.Addr().Is4() {
		return netstacktest.TCPSegment(src, dst, netstacktest.FlagSYN, seq, nil)
	}
	s := make([]byte, 20)
	binary.BigEndian.PutUint16(s[0:], src.Port())
	binary.BigEndian.PutUint16(s[2:], dst.Port())
	binary.BigEndian.PutUint32(s[4:], seq)
	s[12], s[13] = 5<<4, netstacktest.FlagSYN
	binary.BigEndian.PutUint16(s[14:], 65535)
	return irIPv6(src.Addr(), dst.Addr(), 6, 64, s)
}

func (r *icmpRand) expect(kind string, req []byte, from netip.Addr) {
	r.want = append(r.want, &irWant{kind: kind, req: req, from: from,
		limits: kind == "prohibited" || kind == "port unreachable"})
}

// sendEcho sends one echo request of c to dst and applies it to the
// model; it returns whether the ping is held by the backend.
func (r *icmpRand) sendEcho(c irClient, dst netip.Addr, held map[string]int) bool {
	r.seq++
	id := uint16(r.rng.UintN(1 << 16))
	if id == irMarkerID {
		id++
	}
	p := r.echoPacket(c.addr, dst, id, r.seq, uint8(1+r.rng.IntN(255)), r.payload())
	r.h.gw.lan.Deliver(p)
	switch {
	case c.tenant == "":
		r.drops["unknown_source"]++
		return false
	case dst == irGW4 || dst == irGW6:
		r.expect("reply", p, dst) // the stack answers its own address
		return false
	}
	if reason := r.classify(c, "icmp", netip.AddrPortFrom(dst, 0)); reason != "" {
		r.refused[[2]string{"icmp", reason}]++
		if reason != refuseNoBackend { // no healthy backend: no reply at all
			r.expect("prohibited", p, dst)
		}
		return false
	}
	s := r.svcAt(dst)
	if s.name == "dark" { // its backend holds the ping
		total, tenant, source := held["total"], held[c.tenant], held[c.addr.String()]
		reason := ""
		switch {
		case source >= maxSourceEchoes:
			reason = refuseSourceEchoLimit
		case tenant >= maxTenantEchoes:
			reason = refuseTenantEchoLimit
		case total >= maxEchoes:
			reason = refuseEchoLimit
		}
		if reason != "" {
			r.refused[[2]string{"icmp", reason}]++
			return false
		}
		held["total"]++
		held[c.tenant]++
		held[c.addr.String()]++
		r.noReply[s.name]++
		return true
	}
	r.pendingPings = append(r.pendingPings, irPing{svc: s, req: p, dst: dst})
	return false
}

// irPing is a ping sent to a backend that answers or not: the pinger says
// which backend it went to, and the model then knows the outcome.
type irPing struct {
	svc *irSvc
	req []byte
	dst netip.Addr
}

// ping sends one echo request.
func (r *icmpRand) ping() {
	c := r.client()
	dst, _ := r.target(c)
	held := map[string]int{}
	r.logf("ping of %v to %v", c.addr, dst)
	if r.sendEcho(c, dst, held) {
		r.waitHeld(held["total"])
	}
	r.resolvePings()
}

// burst sends 20 to 45 echo requests at once from one client to one
// destination: past a globex source's rate, past a source's share of the
// pings held by dark's backend.
func (r *icmpRand) burst() {
	c := r.client()
	dst, _ := r.target(c)
	// Pings to a backend that answers end at once, and would take echo
	// slots for a moment that the model cannot tell: a burst goes to
	// dark, whose backend holds every ping until the step releases them,
	// or comes from globex, whose rate lets 4 through at most.
	if c.tenant != "globex" || r.rng.IntN(2) == 0 {
		s := r.svcs[2]
		dst = s.vip4
		if c.addr.Is6() {
			dst = s.vip6
		}
	}
	n := 20 + r.rng.IntN(26)
	held := map[string]int{}
	for range n {
		r.sendEcho(c, dst, held)
	}
	r.logf("burst of %d pings of %v to %v: %d held", n, c.addr, dst, held["total"])
	r.waitHeld(held["total"])
	r.resolvePings()
}

// waitHeld waits until n pings are held by dark's backend, then releases
// them (each fails: no reply).
func (r *icmpRand) waitHeld(n int) {
	r.t.Helper()
	if n == 0 {
		return
	}
	waitFor(r.t, irWait, fmt.Sprintf("%d pings held", n), func() bool {
		r.pinger.mu.Lock()
		defer r.pinger.mu.Unlock()
		return r.pinger.held == n
	})
	r.pinger.releaseAll()
	dark := netip.MustParseAddr("127.0.0.4")
	pinged := r.pinger.take()
	r.pinger.mu.Lock()
	r.pinger.pinged = slices.DeleteFunc(pinged, func(a netip.Addr) bool { return a == dark })
	r.pinger.mu.Unlock()
	if got := len(pinged) - len(r.pinger.pinged); got != n {
		r.fatalf("%d pings went to dark's backend, want %d", got, n)
	}
}

// resolvePings waits for the pings the step sent to backends that answer
// or not, and applies each to the model by the backend it went to.
func (r *icmpRand) resolvePings() {
	r.t.Helper()
	n := len(r.pendingPings)
	var pinged []netip.Addr
	waitFor(r.t, irWait, fmt.Sprintf("%d pings to backends", n), func() bool {
		pinged = append(pinged, r.pinger.take()...)
		return len(pinged) >= n
	})
	time.Sleep(time.Millisecond)
	if pinged = append(pinged, r.pinger.take()...); len(pinged) != n {
		r.fatalf("%d pings went to backends, want %d: %v", len(pinged), n, pinged)
	}
	// The pings run concurrently: match them to their services as a
	// multiset of backends.
	r.pinger.mu.Lock()
	modes := maps2(r.pinger.modes)
	r.pinger.mu.Unlock()
	// The pings of a service whose backends answer and do not run
	// concurrently, and the pinger does not tell which request went where:
	// as many of the service's requests as went to a backend that answers
	// get a reply, any of them (a group).
	for _, p := range r.pendingPings {
		i := slices.IndexFunc(pinged, func(a netip.Addr) bool { return slices.Contains(p.svc.backends, a) })
		if i < 0 {
			r.fatalf("a ping to %s went to none of its backends %v: %v", p.svc.name, p.svc.backends, pinged)
		}
		b := pinged[i]
		pinged = slices.Delete(pinged, i, i+1)
		g := r.groups[p.svc.name]
		if g == nil {
			g = &irGroup{}
			r.groups[p.svc.name] = g
		}
		if modes[b] == irUp {
			r.echoOK[p.svc.name]++
			g.need++
		} else {
			r.noReply[p.svc.name]++
		}
		r.expect("reply", p.req, p.dst)
		r.want[len(r.want)-1].group = g
	}
	r.pendingPings = nil
}

func maps2[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// udpTarget picks a client and the source and VIP of its next datagram:
// on a flow the model has (one time in three, if it has one), a new flow,
// or one refused (the port nothing serves, one time in five).
func (r *icmpRand) udpTarget() (irClient, netip.AddrPort, netip.AddrPort) {
	c := r.client()
	dst, _ := r.target(c)
	port := uint16(7)
	if r.rng.IntN(5) == 0 {
		port = 9
	}
	var src netip.AddrPort
	var old []netip.AddrPort
	for k := range r.flows {
		if k[0].Addr() == c.addr {
			old = append(old, k[0])
		}
	}
	if len(old) > 0 && r.rng.IntN(3) == 0 {
		slices.SortFunc(old, func(a, b netip.AddrPort) int { return a.Compare(b) })
		src = old[r.rng.IntN(len(old))]
	} else {
		r.port++
		src = netip.AddrPortFrom(c.addr, r.port)
	}
	vip := netip.AddrPortFrom(dst, port)
	return c, src, vip
}

// udp sends a datagram: on a flow the model has, a new flow, or one
// refused.
func (r *icmpRand) udp() {
	c, src, vip := r.udpTarget()
	dst := vip.Addr()
	p := udpPacket(src, vip, r.shortPayload(64))
	r.h.gw.lan.Deliver(p)
	key := [2]netip.AddrPort{src, vip}
	switch {
	case c.tenant == "":
		r.drops["unknown_source"]++
	case r.flows[key]:
		// The flow's datagram goes to its backend, whose port is closed:
		// the backend's port unreachable ends nothing and reaches no one.
	case dst == irGW4 || dst == irGW6:
		r.expect("port unreachable", p, dst) // no listener on the gateway's port
	default:
		if reason := r.classify(c, "udp", vip); reason != "" {
			r.refused[[2]string{"udp", reason}]++
			r.expect("port unreachable", p, dst)
		} else {
			r.flows[key] = true
		}
	}
	r.logf("UDP of %v to %v (%d flows)", src, vip, len(r.flows))
}

// tcp sends a SYN: refused (RST), dropped (over the rate), or dialled to a
// backend port where nothing listens (RST).
func (r *icmpRand) tcp() {
	c := r.client()
	dst, _ := r.target(c)
	if dst == irGW4 || dst == irGW6 {
		dst = irNoVIP4
		if c.addr.Is6() {
			dst = irNoVIP6
		}
	}
	port := uint16(80)
	if r.rng.IntN(5) == 0 {
		port = 81
	}
	r.port++
	src := netip.AddrPortFrom(c.addr, r.port)
	vip := netip.AddrPortFrom(dst, port)
	p := synPacket(src, vip, r.rng.Uint32())
	r.h.gw.lan.Deliver(p)
	r.logf("SYN of %v to %v", src, vip)
	if c.tenant == "" {
		r.drops["unknown_source"]++
		return
	}
	reason := r.classify(c, "tcp", vip)
	switch reason {
	case refuseRate, refuseTenantRate:
		r.refused[[2]string{"tcp", reason}]++ // the SYN is dropped
		return
	case "":
		reason = refuseDial
	}
	r.refused[[2]string{"tcp", reason}]++
	r.expect("rst", p, dst)
}

// icmpError sends an ICMP message other than an echo request from a
// client: an error about its own packet or another's, an error about an
// error, a redirect, or another type. None is answered.
func (r *icmpRand) icmpError() {
	c := r.client()
	dst, _ := r.target(c)
	other := irClients[r.rng.IntN(5)].addr
	if other.Is4() != c.addr.Is4() || other == c.addr {
		other = c.addr.Prev()
	}
	var about netip.Addr
	var p []byte
	kind := r.rng.IntN(6)
	if c.addr.Is4() {
		typ := []uint8{3, 11, 12, 4, 5, 13, 17, 0, 10, 42}[r.rng.IntN(10)]
		about = []netip.Addr{c.addr, other}[r.rng.IntN(2)]
		var quoted []byte
		if kind == 0 { // about an ICMP error the client got
			inner := netstacktest.ICMPError(dst, about, 3, 3, udpPacket(netip.AddrPortFrom(about, 5), netip.AddrPortFrom(dst, 7), nil))
			quoted = inner
		} else {
			quoted = udpPacket(netip.AddrPortFrom(dst, 7), netip.AddrPortFrom(about, 5), []byte("hello"))
		}
		p = netstacktest.ICMPError(c.addr, dst, typ, uint8(r.rng.IntN(4)), quoted)
		r.h.gw.lan.Deliver(p)
		r.logf("ICMP type %d from %v to %v about %v's packet", typ, c.addr, dst, about)
		// An error must be about a packet sent to its source or to another
		// client of its tenant, which it may route for (the quoted packet's
		// destination is about); a redirect is never taken.
		switch {
		case c.tenant == "":
			r.drops["unknown_source"]++
		case typ == 5, (typ == 3 || typ == 4 || typ == 11 || typ == 12) && irTenantOf(about) != c.tenant:
			r.drops["icmp_refused"]++
		}
		return
	}
	typ := []uint8{1, 2, 3, 4, 137, 129, 130, 133, 135, 200}[r.rng.IntN(10)]
	about = []netip.Addr{c.addr, other}[r.rng.IntN(2)]
	q := udpPacket(netip.AddrPortFrom(dst, 7), netip.AddrPortFrom(about, 5), []byte("hello"))
	m := make([]byte, 8+len(q))
	m[0], m[1] = typ, 0
	copy(m[8:], q)
	p = irIPv6(c.addr, dst, 58, 255, m)
	r.h.gw.lan.Deliver(p)
	r.logf("ICMPv6 type %d from %v to %v about %v's packet", typ, c.addr, dst, about)
	switch {
	case c.tenant == "":
		r.drops["unknown_source"]++
	case typ == 137, typ <= 4 && irTenantOf(about) != c.tenant:
		r.drops["icmp_refused"]++
	}
}

// malformed sends a broken or fragmented echo request to a VIP that would
// answer it: dropped, never answered nor pinged.
func (r *icmpRand) malformed() {
	c := irClients[r.rng.IntN(5)]
	s := r.svcs[r.rng.IntN(len(r.svcs))]
	dst := s.vip4
	if c.addr.Is6() {
		dst = s.vip6
	}
	r.seq++
	good := r.echoPacket(c.addr, dst, 7, r.seq, 64, r.shortPayload(200))
	var pkts [][]byte
	what := ""
	linkMalformed := false
	if c.addr.Is4() {
		switch x := r.rng.IntN(8); x {
		case 0:
			what, linkMalformed = "bad ICMP checksum", true
			good[22] ^= 0x55
			pkts = [][]byte{good}
		case 1:
			what, linkMalformed = "bad IP header checksum", true
			good[10] ^= 0x55
			pkts = [][]byte{good}
		case 2:
			what, linkMalformed = "total length past the end", true
			binary.BigEndian.PutUint16(good[2:], uint16(len(good)+8))
			netstacktest.SetIPv4Checksum(good)
			pkts = [][]byte{good}
		case 3:
			what = "ICMP header cut short"
			pkts = [][]byte{netstacktest.IPv4Packet(c.addr, dst, netstacktest.ProtoICMP, nil, good[20:26])}
		case 4:
			what = "echo code 1"
			good[21] = 1
			good[22], good[23] = 0, 0
			binary.BigEndian.PutUint16(good[22:], ^irSum(good[20:], 0))
			pkts = [][]byte{good}
		case 5, 6:
			toGW := r.rng.IntN(4) == 0 // the stack reassembles and answers its own address's
			if toGW {
				dst = irGW4
			}
			big := r.echoPacket(c.addr, dst, 7, r.seq, 64, bytes.Repeat([]byte{0xa5}, 64+r.rng.IntN(300)))
			// An IPv4 identifier of its own: a lone first fragment of an
			// earlier step, still waiting in the stack's reassembly (30 s),
			// would otherwise take this one's fragments as its own, and
			// the overlap drops the datagram whole, as Linux does.
			binary.BigEndian.PutUint16(big[4:], uint16(r.seq))
			netstacktest.SetIPv4Checksum(big)
			pkts = netstacktest.Fragment(big, 8*(1+r.rng.IntN(8)))
			if x == 5 {
				what = fmt.Sprintf("fragmented echo request (%d fragments)", len(pkts))
				if toGW {
					r.expect("reply", big, dst)
				}
			} else {
				what = "first fragment of an echo request"
				pkts = pkts[:1]
			}
		default:
			what, linkMalformed = "option length zero", true
			pkts = [][]byte{netstacktest.IPv4Packet(c.addr, dst, netstacktest.ProtoICMP, []byte{0x07, 0, 0, 0}, good[20:])}
		}
	} else {
		switch x := r.rng.IntN(5); x {
		case 3, 4:
			// ICMPv6 behind a fragment header, as behind any extension
			// header, is refused whole: every fragment, and an atomic
			// fragment (offset 0, no more to come).
			if r.rng.IntN(4) == 0 { // refused to the gateway's own address too
				dst = irGW6
				good = r.echoPacket(c.addr, dst, 7, r.seq, 64, r.shortPayload(200))
			}
			big := r.echoPacket(c.addr, dst, 7, r.seq, 64, bytes.Repeat([]byte{0x5a}, 64+r.rng.IntN(300)))
			pkts = irFragment6(big, 8*(1+r.rng.IntN(16)), r.rng.Uint32())
			switch {
			case x == 3:
				what = fmt.Sprintf("fragmented ICMPv6 echo request (%d fragments)", len(pkts))
			case r.rng.IntN(2) == 0:
				what = "first fragment of an ICMPv6 echo request"
				pkts = pkts[:1]
			default:
				what = "ICMPv6 echo request as an atomic fragment"
				pkts = irFragment6(good, len(good), r.rng.Uint32())
			}
			r.drops["icmp_refused"] += len(pkts)
		case 0:
			what, linkMalformed = "bad ICMPv6 checksum", true
			good[42] ^= 0x55
			pkts = [][]byte{good}
		case 1:
			what = "echo behind a destination options header"
			l4 := good[40:]
			b := make([]byte, 40+8+len(l4))
			copy(b, good[:40])
			b[6] = 60
			b[40] = 58
			b[42], b[43] = 1, 4 // PadN
			copy(b[48:], l4)
			binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
			pkts = [][]byte{b}
			r.drops["icmp_refused"]++
		default:
			what, linkMalformed = "payload length past the end", true
			binary.BigEndian.PutUint16(good[4:], uint16(len(good)))
			pkts = [][]byte{good}
		}
	}
	for _, p := range pkts {
		r.h.gw.lan.Deliver(p)
	}
	if linkMalformed {
		r.drops["malformed"]++
	}
	r.logf("%s of %v to %v", what, c.addr, dst)
}

// setModes changes how the backends of alpha and beta answer pings.
func (r *icmpRand) setModes() {
	r.pinger.mu.Lock()
	for _, a := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		r.pinger.modes[netip.MustParseAddr(a)] = []irMode{irUp, irUp, irDown}[r.rng.IntN(3)]
	}
	r.pinger.mu.Unlock()
	r.logf("backends: %s", r.describe())
}

// reload changes one service's tenants or icmp.
func (r *icmpRand) reload() {
	s := r.svcs[r.rng.IntN(len(r.svcs))]
	if r.rng.IntN(2) == 0 {
		s.icmp = !s.icmp
	} else {
		s.tenants = irTenantChoices[r.rng.IntN(len(irTenantChoices))]
	}
	r.text = r.toml()
	if _, err := r.h.gw.Reload(); err != nil {
		r.fatalf("reload: %v", err)
	}
	r.logf("reload: %s", r.describe())
}

// tick steps the rate limiter's clock by a multiple of 500 ms, in which
// every bucket gains a whole number of tokens.
func (r *icmpRand) tick() {
	d := time.Duration(1+r.rng.IntN(4)) * 500 * time.Millisecond
	r.clk.advance(d)
	r.logf("clock +%v", d)
}

// settle waits for what the step must bring, then for a marker (an echo
// request to the gateway's address, which the stack answers after
// whatever the step's packets brought), and checks the LAN's packets and
// the counters against the model.
func (r *icmpRand) settle() {
	r.t.Helper()
	deadline := time.Now().Add(irWait)
	var pkts [][]byte
	for {
		pkts = r.lan.all()
		r.match(pkts, false)
		if r.complete() && r.countersMatch() == "" && r.echoSlotsFree() {
			break
		}
		if time.Now().After(deadline) {
			r.match(pkts, true)
			if msg := r.countersMatch(); msg != "" {
				r.fatalf("%s", msg)
			}
			if !r.echoSlotsFree() {
				r.fatalf("echo slots still taken: %d", r.h.gw.echoLimits.total)
			}
			r.fatalf("missing: %s (ICMP errors rate-limited %d, %d before)", r.missing(), r.h.gw.ns.Stats().ICMPRateLimited, r.limited)
		}
		time.Sleep(2 * time.Millisecond)
	}
	r.seq++
	marker := r.echoPacket(irMarkerClient, irGW4, irMarkerID, r.seq, 64, nil)
	r.h.gw.lan.Deliver(marker)
	var n int
	waitFor(r.t, irWait, "the marker's reply", func() bool {
		pkts = r.lan.all()
		n = slices.IndexFunc(pkts, func(p []byte) bool {
			return len(p) >= 28 && p[0]>>4 == 4 && p[9] == 1 && p[20] == 0 &&
				binary.BigEndian.Uint16(p[24:]) == irMarkerID && binary.BigEndian.Uint16(p[26:]) == r.seq
		})
		return n >= 0
	})
	r.match(pkts[:n], true)
	r.lan.drop(n + 1)
	r.limited = r.h.gw.ns.Stats().ICMPRateLimited
	r.want = nil
	clear(r.groups)
	if got, want := r.h.gw.flows.len(), len(r.flows); got != want {
		r.fatalf("%d flows, want %d", got, want)
	}
	if p := r.pinger.take(); len(p) != 0 {
		r.fatalf("pings to backends nobody asked for: %v", p)
	}
}

func (r *icmpRand) complete() bool {
	limitable := 0
	for _, g := range r.groups {
		if g.got != g.need {
			return false
		}
	}
	for _, w := range r.want {
		if w.group != nil {
			continue
		}
		if !w.got && !w.limits {
			return false
		}
		if !w.got {
			limitable++
		}
	}
	return uint64(limitable) == r.h.gw.ns.Stats().ICMPRateLimited-r.limited
}

func (r *icmpRand) missing() string {
	var out []string
	for _, g := range r.groups {
		if g.got != g.need {
			out = append(out, fmt.Sprintf("%d of %d replies of a group", g.got, g.need))
		}
	}
	for _, w := range r.want {
		if !w.got && w.group == nil {
			out = append(out, fmt.Sprintf("%s to % x", w.kind, w.req[:min(len(w.req), 48)]))
		}
	}
	return strings.Join(out, "; ")
}

// match marks the wanted packets pkts hold; with strict, a packet that
// answers nothing wanted fails the test.
func (r *icmpRand) match(pkts [][]byte, strict bool) {
	r.t.Helper()
	for _, w := range r.want {
		w.got = false
	}
	for _, g := range r.groups {
		g.got = 0
	}
	for _, p := range pkts {
		if slices.ContainsFunc(r.want, func(w *irWant) bool { return !w.got && r.answers(p, w) && r.mark(w) }) {
			continue
		}
		if r.ofLiveTCP(p) {
			continue
		}
		if strict {
			r.fatalf("unexpected packet to the LAN: % x", p[:min(len(p), 96)])
		}
	}
	if strict {
		for name, g := range r.groups {
			if g.got != g.need {
				r.fatalf("%d replies to %s's pings, want %d (as many as went to a backend that answers)", g.got, name, g.need)
			}
		}
	}
}

func (r *icmpRand) mark(w *irWant) bool {
	if w.group != nil {
		if w.group.got == w.group.need {
			return false
		}
		w.group.got++
	}
	w.got = true
	return true
}

// answers reports whether p is the answer w wants, checked byte for byte.
func (r *icmpRand) answers(p []byte, w *irWant) bool {
	req := w.req
	v6 := req[0]>>4 == 6
	hl, src, dst, proto, ok := irParse(p)
	if !ok || src != w.from {
		return false
	}
	rhl, rsrc, _, _, _ := irParse(req)
	if dst != rsrc {
		return false
	}
	l4 := p[hl:]
	switch w.kind {
	case "reply":
		if v6 {
			return proto == 58 && len(l4) == len(req)-rhl && l4[0] == 129 && l4[1] == 0 &&
				bytes.Equal(l4[4:], req[rhl+4:]) && irSum(l4, irPseudo6(src, dst, 58, len(l4))) == 0xffff && p[7] == 64
		}
		return proto == 1 && len(l4) == len(req)-rhl && l4[0] == 0 && l4[1] == 0 &&
			bytes.Equal(l4[4:], req[rhl+4:]) && irSum(l4, 0) == 0xffff && irSum(p[:hl], 0) == 0xffff
	case "prohibited", "port unreachable":
		typ, code := uint8(3), uint8(13)
		limit := 576
		if w.kind == "port unreachable" {
			code = 3
		}
		if v6 {
			typ, code, limit = 1, 1, 1280
			if w.kind == "port unreachable" {
				code = 4
			}
		}
		if len(l4) < 8 || l4[0] != typ || l4[1] != code {
			return false
		}
		q := l4[8:]
		sumOK := irSum(l4, 0) == 0xffff
		if v6 {
			sumOK = proto == 58 && irSum(l4, irPseudo6(src, dst, 58, len(l4))) == 0xffff
		} else {
			sumOK = sumOK && proto == 1 && irSum(p[:hl], 0) == 0xffff
		}
		if w.reasm {
			return sumOK && len(p) <= limit && irReassembledQuote(q, req, limit-hl-8)
		}
		// The quote is the client's packet, as much of it as fits.
		return sumOK && len(p) <= limit && len(q) == min(len(req), limit-hl-8) && bytes.Equal(q, req[:len(q)])
	case "rst":
		if proto != 6 || len(l4) < 20 || l4[13]&netstacktest.FlagRST == 0 {
			return false
		}
		return bytes.Equal(l4[0:2], req[rhl+2:rhl+4]) && bytes.Equal(l4[2:4], req[rhl:rhl+2])
	}
	return false
}

// irParse reads an IPv4 or IPv6 header: its length, addresses and
// protocol.
func irParse(p []byte) (hl int, src, dst netip.Addr, proto uint8, ok bool) {
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		hl = int(p[0]&0xf) * 4
		return hl, netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20])), p[9], len(p) >= hl
	case len(p) >= 40 && p[0]>>4 == 6:
		return 40, netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40])), p[6], true
	}
	return 0, netip.Addr{}, netip.Addr{}, 0, false
}

// countersMatch compares the gateway's counters with the model's; "" when
// they agree.
func (r *icmpRand) countersMatch() string {
	mfs, err := r.h.gw.m.reg.Gather()
	if err != nil {
		return err.Error()
	}
	for _, proto := range []string{"icmp", "udp", "tcp"} {
		got := series(mfs, "ztgate_flows_refused_total", "protocol", proto)
		for reason, v := range got {
			if want := r.refused[[2]string{proto, reason}]; v != float64(want) {
				return fmt.Sprintf("ztgate_flows_refused_total{protocol=%q, reason=%q} %v, want %d", proto, reason, v, want)
			}
		}
		for k, want := range r.refused {
			if k[0] == proto && got[k[1]] != float64(want) {
				return fmt.Sprintf("ztgate_flows_refused_total{protocol=%q, reason=%q} %v, want %d", proto, k[1], got[k[1]], want)
			}
		}
	}
	for _, reason := range []string{"malformed", "unknown_source", "not_routed", "icmp_refused"} {
		if got, want := metricValue(r.t, r.h.gw, "ztgate_packets_dropped_total", "reason", reason), r.drops[reason]; got != float64(want) {
			return fmt.Sprintf("ztgate_packets_dropped_total{reason=%q} %v, want %d", reason, got, want)
		}
	}
	for _, s := range r.svcs {
		for result, m := range map[string]map[string]int{"ok": r.echoOK, "no_reply": r.noReply} {
			got := max(0, metricValue(r.t, r.h.gw, "ztgate_echo_requests_total", "result", result, "service", s.name))
			if got != float64(m[s.name]) {
				return fmt.Sprintf("ztgate_echo_requests_total{service=%q, result=%q} %v, want %d", s.name, result, got, m[s.name])
			}
		}
	}
	return ""
}

func (r *icmpRand) echoSlotsFree() bool {
	e := r.h.gw.echoLimits
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.total == 0 && len(e.tenants) == 0 && len(e.sources) == 0
}
