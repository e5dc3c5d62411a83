package resolver

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testseed"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/catalog"
)

// Bounds of TestDNSRandom.
const (
	dnsSeedEnv     = "ZTGATE_DNS_SEED"
	rndBatches     = 40
	rndPerBatch    = 100
	rndWorkers     = 6
	rndBudget      = 20 * time.Second // a slow machine ends the run early, and says so
	rndReplyWait   = 5 * time.Second
	rndFwdTimeout  = 500 * time.Millisecond // an answering upstream late under a loaded -race run would pass for a silent one
	rndMaxFailures = 8
	rndRecent      = 300
)

// rndClients are the test's client addresses: tenant A, tenant B, and one
// without a view.
var rndClients = [3]netip.Addr{
	netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"),
}

// TestDNSRandom sends a few thousand random queries over UDP and TCP to two
// servers, one forwarding to two fake upstreams and one without upstreams,
// from the clients of two tenants and one client without a view, and checks
// every reply against a model: the rcode, the AA, TC, RA, RD and CD bits,
// the records and their TTLs, the question as asked, the OPT record, the
// size of a UDP reply. The zone changes between batches of queries
// (services come and go, change VIPs, ports and tenants; the pools move),
// and queries are repeated, so that the servers' caches are checked too.
// Names are in random letter case, in and around the zone and the reverse
// zones; the queries carry random types, classes, flags, EDNS sizes and
// the DO bit, and some are malformed (other opcodes, no or two questions,
// broken OPT records, responses, short messages). The upstreams answer,
// fail, stay silent, truncate or send stray replies, per name. At the end
// the servers shut down and no goroutine is left. The seed is logged;
// ZTGATE_DNS_SEED replays one.
func TestDNSRandom(t *testing.T) {
	before := goleak.IgnoreCurrent()
	seed := testseed.Get(t, dnsSeedEnv)
	r := newRnd(t, seed)
	t.Cleanup(r.close)
	deadline := time.Now().Add(rndBudget)
	for r.batch = 0; r.batch < rndBatches; r.batch++ {
		if time.Now().After(deadline) {
			t.Logf("time budget spent after %d batches", r.batch)
			break
		}
		if r.batch > 0 {
			r.mutate()
		}
		qs := r.genBatch()
		if fails := r.runBatch(qs); len(fails) > 0 {
			for _, f := range fails[:min(len(fails), rndMaxFailures)] {
				t.Error(f)
			}
			t.Fatalf("batch %d: %d of %d queries failed (seed %d: %s=%d replays it)",
				r.batch, len(fails), len(qs), seed, dnsSeedEnv, seed)
		}
	}
	r.close()
	goleak.VerifyNone(t, before)
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(r.stats)) {
		fmt.Fprintf(&b, " %s=%d", k, r.stats[k])
	}
	t.Logf("%d batches of %d queries;%s", r.batch, rndPerBatch, b.String())
}

// rnd is the state of one run: the servers, the model of the catalog and
// of the upstreams' names, and the clients.
type rnd struct {
	t       *testing.T
	rng     *rand.Rand
	batch   int
	servers []*rndServer
	ups     [2]*fakeUpstream
	dir     *rndDir
	catalog map[string]Entry
	ever    []string           // every service name used so far
	visible [2]map[string]bool // by tenant
	tenants [2]*rndTenant
	pool4   netip.Prefix
	pool6   netip.Prefix
	table   map[string]*upName // the upstreams' names, as the model knows them
	upTable atomicTable        // as the upstreams read them: a copy
	recent  []*rquery
	workers []*rndWorker
	stats   map[string]int
	closed  bool
}

// rndDir is the servers' Directory: tenant A, tenant B, no view.
type rndDir struct {
	mu    sync.RWMutex
	views [2]View
}

func (d *rndDir) View(c netip.Addr) View {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for i, v := range d.views {
		if c == rndClients[i] {
			return v
		}
	}
	return nil
}

var (
	rndPools4 = []string{"10.100.0.0/24", "10.100.0.0/22", "10.100.4.64/26", "10.100.0.0/16", "10.100.0.0/23", "10.100.8.0/28", "10.100.0.128/25"}
	rndPools6 = []string{"fd00:ab::/64", "fd00:ab::/118", "fd00:ab:0:1::/120", "fd00:ab::/56", "fd00:ab::/126"}
	rndZones  = []string{"ztna.internal.", "corp.example.", "a-1.b2.test.", "internal."}
)

func newRnd(t *testing.T, seed uint64) *rnd {
	r := &rnd{
		t: t, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), dir: &rndDir{},
		catalog: map[string]Entry{}, visible: [2]map[string]bool{{}, {}}, stats: map[string]int{},
	}
	r.pool4, r.pool6 = r.drawPools()
	r.table = map[string]*upName{}
	r.publishTable()
	for i := range r.ups {
		r.ups[i] = &fakeUpstream{idx: i, table: &r.upTable}
		startFakeUpstream(t, r.ups[i])
	}
	for range 8 + r.rng.IntN(8) {
		r.addService()
	}
	for range 20 {
		r.changeUpstreamName()
	}
	r.publishTable()
	r.servers = []*rndServer{r.newServer(0, true), r.newServer(1, false)}
	r.publishViews()
	for range rndWorkers {
		r.workers = append(r.workers, &rndWorker{conns: map[[2]int]*rndConn{}, stats: map[string]int{}})
	}
	return r
}

func pick[T any](r *rand.Rand, from []T) T { return from[r.IntN(len(from))] }

// drawPools returns pools for SetPools; either may be absent.
func (r *rnd) drawPools() (netip.Prefix, netip.Prefix) {
	var p4, p6 netip.Prefix
	if r.rng.IntN(8) > 0 {
		p4 = netip.MustParsePrefix(pick(r.rng, rndPools4))
	}
	if r.rng.IntN(2) == 0 {
		p6 = netip.MustParsePrefix(pick(r.rng, rndPools6))
	}
	return p4, p6
}

func (r *rnd) newServer(i int, fwd bool) *rndServer {
	t := r.t
	ttl := pick(r.rng, []time.Duration{0, time.Second, 30 * time.Second, 300 * time.Second, 24 * time.Hour})
	cfg := Config{
		Zone: pick(r.rng, rndZones), TTL: ttl, Pool: r.pool4, Pool6: r.pool6,
		MaxUDPSize:     pick(r.rng, []uint16{0, 512, 1232, 1400, 4096}),
		TCPIdleTimeout: time.Minute, ForwardTimeout: rndFwdTimeout,
		Readers: 1 + r.rng.IntN(2), CacheSize: pick(r.rng, []int{0, 0, 8, -1}),
	}
	switch r.rng.IntN(5) {
	case 0:
		cfg.NSAddr = netip.MustParseAddr("192.0.2.53")
	case 1:
		cfg.NSAddr = netip.MustParseAddr("fd00:53::1")
	}
	sv := &rndServer{fwd: fwd, zone: cfg.Zone, ttl: uint32(cmp.Or(ttl, DefaultTTL) / time.Second),
		maxUDP: int(cmp.Or(cfg.MaxUDPSize, DefaultMaxUDPSize)), nsAddr: cfg.NSAddr, pool4: r.pool4, pool6: r.pool6}
	if !sv.nsAddr.IsValid() && r.pool4.IsValid() {
		sv.nsAddr = r.pool4.Masked().Addr().Next()
	}
	if fwd {
		cfg.Upstreams = []netip.AddrPort{r.ups[0].addr, r.ups[1].addr}
	}
	sv.s = newTestServer(t, cfg, r.dir)
	sv.serial = sv.s.zone.Load().serial
	pc, l := listenBoth(t)
	sv.udp, sv.tcp = pc.LocalAddr().String(), l.Addr().String()
	if r.rng.IntN(2) == 0 {
		pc = struct{ net.PacketConn }{pc} // one datagram at a time, as a netstack's
	}
	sv.errs = make(chan error, 2)
	go func() { sv.errs <- sv.s.ServePacket(pc) }()
	go func() { sv.errs <- sv.s.ServeStream(l) }()
	r.t.Logf("server %d: zone %s ttl %ds max UDP %d ns %v pools %v %v readers %d cache %d forwards %v",
		i, sv.zone, sv.ttl, sv.maxUDP, sv.nsAddr, sv.pool4, sv.pool6, cfg.Readers, cfg.CacheSize, fwd)
	return sv
}

// close ends the run: client connections, servers (whose Serve calls must
// return nil) and upstreams.
func (r *rnd) close() {
	if r.closed {
		return
	}
	r.closed = true
	for _, w := range r.workers {
		w.closeAll()
	}
	for i, sv := range r.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := sv.s.Shutdown(ctx); err != nil {
			r.t.Errorf("server %d: Shutdown: %v", i, err)
		}
		cancel()
		for range 2 {
			if err := <-sv.errs; err != nil && !errors.Is(err, ErrServerClosed) {
				r.t.Errorf("server %d: Serve returned %v after Shutdown, want nil", i, err)
			}
		}
	}
	for _, u := range r.ups {
		if u != nil {
			u.stop()
		}
	}
}

// The catalog.

func (r *rnd) serviceNames() []string { return slices.Sorted(maps.Keys(r.catalog)) }

func (r *rnd) newLabel() string {
	const letters, more = "abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz0123456789-"
	n := 1 + r.rng.IntN(12)
	if r.rng.IntN(30) == 0 {
		n = 63
	}
	b := []byte{letters[r.rng.IntN(len(letters))]}
	for len(b) < n {
		b = append(b, more[r.rng.IntN(len(more))])
	}
	if b[len(b)-1] == '-' {
		b[len(b)-1] = 'z'
	}
	return string(b)
}

func (r *rnd) addService() {
	name := r.newLabel()
	if r.rng.IntN(25) == 0 {
		name = "ns" // never a service: the server's own name
	}
	if _, ok := r.catalog[name]; ok || len(r.catalog) >= 40 {
		return
	}
	e := Entry{Name: name, VIP: r.newVIP(true), Ports: r.newPorts()}
	if r.rng.IntN(2) == 0 {
		e.VIP6 = r.newVIP(false)
	}
	r.catalog[name] = e
	r.ever = append(r.ever, name)
	for i := range r.visible {
		r.visible[i][name] = r.rng.IntN(10) < 7-3*i
	}
}

// newVIP returns an address no service has, in the pool when there is one
// and mostly so.
func (r *rnd) newVIP(v4 bool) netip.Addr {
	used := map[netip.Addr]bool{}
	for _, e := range r.catalog {
		used[e.VIP], used[e.VIP6] = true, true
	}
	p, outside := r.pool4, netip.MustParsePrefix("10.99.0.0/16")
	if !v4 {
		p, outside = r.pool6, netip.MustParsePrefix("fd99::/64")
	}
	for range 20 {
		in := p
		if !p.IsValid() || r.rng.IntN(10) == 0 {
			in = outside
		}
		a := r.randomIn(in)
		if a != in.Masked().Addr() && a != in.Masked().Addr().Next() && !used[a] {
			return a
		}
	}
	for a := outside.Masked().Addr().Next().Next(); ; a = a.Next() {
		if !used[a] {
			return a
		}
	}
}

// randomIn returns a random address of p.
func (r *rnd) randomIn(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := range b {
		bit := i * 8
		if bit+8 <= p.Bits() {
			continue
		}
		mask := byte(0xff)
		if bit < p.Bits() {
			mask >>= p.Bits() - bit
		}
		b[i] |= byte(r.rng.IntN(256)) & mask
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (r *rnd) newPorts() []catalog.Port {
	var ports []catalog.Port
	seen := map[[2]int]bool{}
	add := func(p catalog.Port) {
		if k := [2]int{int(p.Protocol), int(p.Port)}; !seen[k] {
			seen[k] = true
			ports = append(ports, p)
		}
	}
	switch n := r.rng.IntN(20); {
	case n < 5:
	case n < 17:
		for range 1 + r.rng.IntN(3) {
			p := catalog.Port{Protocol: pick(r.rng, []catalog.Protocol{catalog.TCP, catalog.TCP, catalog.UDP}),
				Port: pick(r.rng, []uint16{22, 53, 80, 443, 5432, 8080, uint16(1 + r.rng.IntN(65535))})}
			if r.rng.IntN(2) == 0 {
				p.Name = pick(r.rng, []string{"http", "https", "dns", "db", "svc", "Web", "my-app"})
			}
			add(p)
		}
	default: // many ports of one name: answers that need truncating
		name := pick(r.rng, []string{"svc", ""})
		n := 8 + r.rng.IntN(8)
		if r.rng.IntN(2) == 0 {
			n = 16 + r.rng.IntN(70)
		}
		for i := range n {
			add(catalog.Port{Name: name, Protocol: catalog.TCP, Port: uint16(1000 + i)})
		}
	}
	return ports
}

// mutate changes the catalog, the tenants' views, the pools and the
// upstreams' names between two batches. The tenants get new Views only
// when what they see changed: a View the servers have cached answers for
// stays, across changes of the pools too.
func (r *rnd) mutate() {
	var did []string
	views := false
	// A third of the batches changes no View: the pools, the upstreams,
	// or nothing; the servers' cached answers for the Views must follow.
	kind := r.rng.IntN(6)
	ops := 1 + r.rng.IntN(3)
	if kind < 2 {
		ops = 0
	}
	for range ops {
		names := r.serviceNames()
		switch op := r.rng.IntN(8); {
		case op < 2:
			r.addService()
			did, views = append(did, "add"), true
		case op == 2 && len(names) > 0:
			delete(r.catalog, pick(r.rng, names))
			did, views = append(did, "remove"), true
		case op == 3 && len(names) > 0:
			e := r.catalog[pick(r.rng, names)]
			e.VIP = r.newVIP(true)
			r.catalog[e.Name] = e
			did, views = append(did, "vip"), true
		case op == 4 && len(names) > 0:
			e := r.catalog[pick(r.rng, names)]
			e.VIP6 = netip.Addr{}
			if r.rng.IntN(3) > 0 {
				e.VIP6 = r.newVIP(false)
			}
			r.catalog[e.Name] = e
			did, views = append(did, "vip6"), true
		case op == 5 && len(names) > 0:
			e := r.catalog[pick(r.rng, names)]
			e.Ports = r.newPorts()
			r.catalog[e.Name] = e
			did, views = append(did, "ports"), true
		case op == 6 && len(names) > 0:
			name := pick(r.rng, names)
			for i := range r.visible {
				r.visible[i][name] = r.rng.IntN(2) == 0
			}
			did, views = append(did, "tenants"), true
		}
	}
	if kind == 0 || kind > 2 && r.rng.IntN(3) == 0 {
		for range 1 + r.rng.IntN(5) {
			r.changeUpstreamName()
		}
		did = append(did, "upstream")
	}
	if kind == 1 || kind > 2 && r.rng.IntN(10) == 0 {
		r.pool4, r.pool6 = r.drawPools()
		for _, sv := range r.servers {
			sv.s.SetPools(r.pool4, r.pool6)
			sv.pool4, sv.pool6 = r.pool4, r.pool6
			sv.serial++
		}
		did = append(did, "pools")
	}
	r.publishTable()
	if views {
		r.publishViews()
	} else {
		r.rebuildZones() // the same Views, of other zones perhaps
	}
	for _, d := range did {
		r.stats["change:"+d]++
	}
}

// publishViews gives each tenant a new View of what it sees.
func (r *rnd) publishViews() {
	var views [2]View
	for i := range r.tenants {
		t := &rndTenant{}
		for _, name := range r.serviceNames() {
			if r.visible[i][name] {
				t.entries = append(t.entries, r.catalog[name])
			}
		}
		t.view = newTestView(t.entries...)
		r.tenants[i], views[i] = t, t.view
	}
	r.dir.mu.Lock()
	r.dir.views = views
	r.dir.mu.Unlock()
	r.rebuildZones()
}

func (r *rnd) rebuildZones() {
	for _, t := range r.tenants {
		t.zones = nil
		for _, sv := range r.servers {
			z := sv.serviceZone(t.entries)
			// RFC 8020: below a name that does not exist nothing does;
			// the model's zone is a tree, so its answers are consistent.
			for name := range z {
				if parent := name[strings.IndexByte(name, '.')+1:]; name != sv.zone && z[parent] == nil {
					r.t.Fatalf("model: %s exists, its parent %s does not", name, parent)
				}
			}
			t.zones = append(t.zones, z)
		}
	}
}

// The upstreams' names.

var rndTLDs = []string{"example.", "test.", "example.com.", "corp.example.net."}

func (r *rnd) upstreamNames() []string { return slices.Sorted(maps.Keys(r.table)) }

// changeUpstreamName adds, replaces or removes one of the upstreams' names.
func (r *rnd) changeUpstreamName() {
	names := r.upstreamNames()
	if len(names) > 30 || len(names) > 0 && r.rng.IntN(4) == 0 {
		delete(r.table, pick(r.rng, names))
		return
	}
	name := r.newLabel() + "." + pick(r.rng, rndTLDs)
	switch {
	case len(names) > 0 && r.rng.IntN(3) == 0:
		name = pick(r.rng, names) // the same name answers otherwise now
	case r.rng.IntN(5) == 0 && len(r.servers) > 0:
		name = r.nearZone(pick(r.rng, r.servers).zone)
	}
	r.table[name] = r.newUpName(name)
}

func (r *rnd) newUpName(name string) *upName {
	n := &upName{aa: r.rng.IntN(3) == 0, lowerEcho: r.rng.IntN(12) == 0, nx: r.rng.IntN(5) == 0, rrs: map[uint16][]dns.RR{}}
	weights := [numUpModes]int{upAnswer: 70, upServfail: 7, upRefused: 5, upTimeout: 4, upTruncated: 8, upStray: 6}
	for i := range n.modes {
		x := r.rng.IntN(100)
		for m, w := range weights {
			if x < w {
				n.modes[i] = upMode(m)
				break
			}
			x -= w
		}
	}
	ttl := func() uint32 { return pick(r.rng, []uint32{0, 1, 59, 300, 3600, 86400, 604800, 1<<31 - 1}) }
	parent := "example."
	if _, rest, ok := strings.Cut(name, "."); ok && rest != "" {
		parent = rest
	}
	n.soa = &dns.SOA{Hdr: dns.RR_Header{Name: parent, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl()},
		Ns: "ns1." + parent, Mbox: "admin." + parent, Serial: r.rng.Uint32(), Refresh: 7200, Retry: 900, Expire: 1209600, Minttl: ttl()}
	for _, typ := range upTypes {
		if r.rng.IntN(10) < 4 {
			continue
		}
		count := 1 + r.rng.IntN(4)
		if r.rng.IntN(8) == 0 {
			count = 20 + r.rng.IntN(60)
		}
		hdr := dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET, Ttl: ttl()}
		for i := range count {
			var rr dns.RR
			switch typ {
			case dns.TypeA:
				rr = &dns.A{Hdr: hdr, A: net.IPv4(192, 0, byte(2+i/256), byte(i))}
			case dns.TypeAAAA:
				rr = &dns.AAAA{Hdr: hdr, AAAA: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i), 14: byte(i >> 8)}).AsSlice()}
			case dns.TypeTXT:
				rr = &dns.TXT{Hdr: hdr, Txt: []string{fmt.Sprintf("%d-%s", i, strings.Repeat("x", r.rng.IntN(200)))}}
			case dns.TypeMX:
				rr = &dns.MX{Hdr: hdr, Preference: uint16(10 * i), Mx: under(fmt.Sprintf("mx%d", i), name)}
			}
			n.rrs[typ] = append(n.rrs[typ], rr)
		}
	}
	return n
}

// publishTable hands the upstreams a copy of the model's table.
func (r *rnd) publishTable() {
	tbl := maps.Clone(r.table)
	r.upTable.Store(&tbl)
}

// nearZone returns a name just outside zone.
func (r *rnd) nearZone(zone string) string {
	first, rest, _ := strings.Cut(zone, ".")
	switch r.rng.IntN(5) {
	case 0:
		if rest == "" {
			return "."
		}
		return rest
	case 1:
		return "x" + zone
	case 2:
		return first + "x." + rest
	case 3:
		return zone + "com."
	}
	if rest == "" {
		rest = "x."
	}
	return r.newLabel() + "." + first + "-" + rest
}

// Queries.

type rndShape int

const (
	shapeNormal rndShape = iota
	shapeOpcode
	shapeNoQuestion
	shapeTwoQuestions
	shapeBadOPTName // an OPT record not owned by the root
	shapeTwoOPT
	shapeExtraRR  // an A record in the additional section too
	shapeAnswerRR // a record in the answer section
	shapeShort    // shorter than a header: dropped
	shapeResponse // QR set: dropped
	shapeCut      // the question cut short
	numShapes
)

var shapeNames = [numShapes]string{"normal", "opcode", "no-question", "two-questions", "opt-not-root", "two-opt",
	"extra-rr", "answer-rr", "short", "response", "cut-question"}

// rquery is one query: what to send, where and how.
type rquery struct {
	srv, client int
	worker      int
	tcp         bool
	reconnect   bool // a new TCP connection for it
	id          uint16
	name        string // as sent
	kind        string // what the name is, for the statistics
	qtype       uint16
	qclass      uint16
	rd, cd      bool
	junk        bool // AA, TC, RA, AD and Z set in the query
	edns        bool
	size        uint16
	do          bool
	version     uint8
	cookie      bool
	shape       rndShape
	opcode      int
	short       []byte
	follow      *rquery   // sent after a message that is dropped
	burst       []*rquery // sent with it, before any reply is read
}

func (q *rquery) String() string {
	tr := "udp"
	if q.tcp {
		tr = "tcp"
	}
	s := fmt.Sprintf("server %d client %v %s id %d %q %s %s (%s) shape %s rd %v cd %v", q.srv, rndClients[q.client], tr, q.id, q.name,
		dns.TypeToString[q.qtype], dns.ClassToString[q.qclass], q.kind, shapeNames[q.shape], q.rd, q.cd)
	if q.shape == shapeOpcode {
		s += fmt.Sprintf(" opcode %d", q.opcode)
	}
	if q.junk {
		s += " junk-flags"
	}
	if q.edns {
		s += fmt.Sprintf(" edns size %d do %v version %d cookie %v", q.size, q.do, q.version, q.cookie)
	}
	return s
}

var rndTypes = []uint16{dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeSRV, dns.TypeTXT, dns.TypeMX, dns.TypeNS,
	dns.TypeSOA, dns.TypeCNAME, dns.TypeANY, dns.TypeHINFO}

var rndRareTypes = []uint16{dns.TypeAXFR, dns.TypeIXFR, dns.TypeCAA, dns.TypeHTTPS, dns.TypeDNSKEY, dns.TypeNULL, 65280, 0}

func (r *rnd) genBatch() []*rquery {
	qs := make([]*rquery, 0, rndPerBatch)
	for range rndPerBatch {
		var q *rquery
		if len(r.recent) > 0 && r.rng.IntN(4) == 0 {
			q = r.repeat(pick(r.rng, r.recent))
		} else {
			q = r.genQuery()
		}
		if q.shape == shapeShort || q.shape == shapeResponse {
			f := r.genQuery()
			for f.shape != shapeNormal {
				f = r.genQuery()
			}
			f.srv, f.client, f.tcp, f.reconnect = q.srv, q.client, q.tcp, false
			f.id = q.id ^ 0x8000
			q.follow = f
		}
		if q.follow == nil && r.rng.IntN(8) == 0 {
			r.addBurst(q)
		}
		q.worker = r.rng.IntN(rndWorkers)
		qs = append(qs, q)
		if r.recent = append(r.recent, q); len(r.recent) > rndRecent {
			r.recent = r.recent[len(r.recent)-rndRecent:]
		}
	}
	return qs
}

// addBurst gives q one to three more queries to send at once from its
// client to its server (before reading any reply: a stub asks for A and
// AAAA so, over UDP or TCP), each answered, in any order.
func (r *rnd) addBurst(q *rquery) {
	for i := range 1 + r.rng.IntN(3) {
		var b *rquery
		for b == nil || b.shape == shapeShort || b.shape == shapeResponse {
			if len(r.recent) > 0 && r.rng.IntN(2) == 0 {
				b = r.repeat(pick(r.rng, r.recent))
			} else {
				b = r.genQuery()
			}
		}
		b.srv, b.client, b.tcp, b.reconnect = q.srv, q.client, q.tcp, false
		b.id = q.id + uint16(i+1)*7919
		b.kind += "+burst"
		q.burst = append(q.burst, b)
	}
}

// repeat asks q again: with a new ID, perhaps in another letter case or
// over the other transport.
func (r *rnd) repeat(q *rquery) *rquery {
	c := *q
	c.id, c.follow, c.burst, c.reconnect = uint16(r.rng.Uint32()), nil, nil, false
	if r.rng.IntN(2) == 0 {
		c.name = r.randCase(strings.ToLower(c.name))
	}
	if r.rng.IntN(4) == 0 {
		c.tcp = !c.tcp
	}
	if c.shape == shapeShort || c.shape == shapeResponse {
		c.shape = shapeNormal
	}
	switch x := r.rng.IntN(10); {
	case x < 2: // another tenant's cached answer must not do
		c.client = r.rng.IntN(len(rndClients))
	case x < 3:
		c.srv = r.rng.IntN(len(r.servers))
	}
	c.kind += "+again"
	return &c
}

func (r *rnd) randCase(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' && r.rng.IntN(2) == 0 {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

func (r *rnd) genQuery() *rquery {
	q := &rquery{
		srv: r.rng.IntN(len(r.servers)), id: uint16(r.rng.Uint32()), tcp: r.rng.IntN(10) < 3,
		reconnect: r.rng.IntN(10) == 0, rd: r.rng.IntN(5) > 0, cd: r.rng.IntN(10) == 0, junk: r.rng.IntN(20) == 0,
		qclass: dns.ClassINET,
	}
	switch c := r.rng.IntN(20); {
	case c < 9:
		q.client = 0
	case c < 18:
		q.client = 1
	default:
		q.client = 2
	}
	sv := r.servers[q.srv]
	if len(r.servers) > 1 && r.rng.IntN(3) > 0 {
		sv, q.srv = r.servers[0], 0 // the one that forwards
	}
	var lname string
	var prefer uint16
	lname, q.kind, prefer = r.genName(sv)
	q.name = r.randCase(lname)
	switch x := r.rng.IntN(20); {
	case x < 9 && prefer != 0:
		q.qtype = prefer
	case x < 19:
		q.qtype = pick(r.rng, rndTypes)
	default:
		q.qtype = pick(r.rng, rndRareTypes)
	}
	if r.rng.IntN(10) == 0 {
		q.qclass = pick(r.rng, []uint16{dns.ClassCHAOS, dns.ClassHESIOD, dns.ClassANY, dns.ClassANY, dns.ClassNONE})
	}
	if r.rng.IntN(10) < 6 {
		q.edns = true
		q.size = pick(r.rng, []uint16{0, 1, 100, 511, 512, 513, 1000, 1232, 1400, 1500, 4096, 8192, 65535})
		q.do = r.rng.IntN(3) == 0
		q.cookie = r.rng.IntN(5) == 0
		if r.rng.IntN(20) == 0 {
			q.version = uint8(1 + r.rng.IntN(255))
		}
	}
	if r.rng.IntN(8) == 0 {
		q.shape = rndShape(1 + r.rng.IntN(int(numShapes)-1))
	}
	switch q.shape {
	case shapeOpcode:
		q.opcode = 1 + r.rng.IntN(15)
	case shapeBadOPTName, shapeTwoOPT:
		q.edns, q.version = true, 0
	case shapeShort:
		q.short = make([]byte, r.rng.IntN(headerLen))
		for i := range q.short {
			q.short[i] = byte(r.rng.Uint32())
		}
	}
	return q
}

// genName returns a name in lower case, what it is, and the type that
// suits it (0: none in particular).
func (r *rnd) genName(sv *rndServer) (string, string, uint16) {
	zone := sv.zone
	svc := r.pickService()
	proto := pick(r.rng, []string{"_tcp", "_udp", "_tcp", "_sctp"})
	switch x := r.rng.IntN(40); {
	case x < 3:
		return zone, "apex", pick(r.rng, []uint16{dns.TypeSOA, dns.TypeNS})
	case x < 11:
		return svc + "." + zone, "service", pick(r.rng, []uint16{dns.TypeA, dns.TypeAAAA})
	case x < 15:
		return "_" + r.portLabel(svc) + "." + proto + "." + svc + "." + zone, "srv", dns.TypeSRV
	case x < 16:
		return proto + "." + svc + "." + zone, "proto", dns.TypeSRV
	case x < 17:
		return pick(r.rng, []string{"x.", "a.b.", "x._http._tcp.", "_http."}) + svc + "." + zone, "below", 0
	case x < 18:
		return pick(r.rng, []string{"ns.", "x.ns.", "_53._udp.ns."}) + zone, "ns", dns.TypeA
	case x < 19: // wire lengths around the limit of 255 octets
		name, size := zone, 250+r.rng.IntN(10)
		for room := size - len(name) - 2; room > 0; room = size - len(name) - 2 {
			label := r.newLabel()
			name = label[:min(len(label), room)] + "." + name
		}
		return name, "long", 0
	case x < 22:
		return r.nearZone(zone), "near", 0
	case x < 30:
		return r.reverseName(sv), "reverse", dns.TypePTR
	case x < 37 && len(r.table) > 0:
		names := r.upstreamNames()
		name := pick(r.rng, names)
		if slices.Contains(r.table[name].modes[:], upTimeout) && r.rng.IntN(4) > 0 {
			name = pick(r.rng, names) // each costs the forward timeout: fewer
		}
		return name, "upstream", pick(r.rng, upTypes)
	case x < 39:
		return r.newLabel() + "." + pick(r.rng, rndTLDs), "unknown", 0
	}
	return ".", "root", dns.TypeNS
}

// pickService returns a service name: mostly one of the catalog, else one
// that was, one that never was, or the server's own.
func (r *rnd) pickService() string {
	names := r.serviceNames()
	switch x := r.rng.IntN(20); {
	case x < 14 && len(names) > 0:
		return pick(r.rng, names)
	case x < 17 && len(r.ever) > 0:
		return pick(r.rng, r.ever)
	case x < 19:
		return r.newLabel()
	}
	return "ns"
}

// portLabel returns the first label of an SRV name of svc, without its
// underscore: mostly one of its ports'.
func (r *rnd) portLabel(svc string) string {
	if e, ok := r.catalog[svc]; ok && len(e.Ports) > 0 && r.rng.IntN(4) > 0 {
		p := pick(r.rng, e.Ports)
		if p.Name != "" {
			return p.Name
		}
		return strconv.Itoa(int(p.Port))
	}
	return pick(r.rng, []string{"http", "80", "ftp", "53", "svc", "0", "https"})
}

// reverseName returns a name in or around the reverse zones.
func (r *rnd) reverseName(sv *rndServer) string {
	v4 := r.rng.IntN(3) > 0
	pool := sv.pool4
	if !v4 {
		pool = sv.pool6
	}
	if !pool.IsValid() {
		pool = netip.MustParsePrefix(map[bool]string{true: "10.100.0.0/24", false: "fd00:ab::/64"}[v4])
	}
	var a netip.Addr
	switch x := r.rng.IntN(20); {
	case x < 8:
		names := r.serviceNames()
		if len(names) == 0 {
			a = r.randomIn(pool)
			break
		}
		e := r.catalog[pick(r.rng, names)]
		a = e.VIP
		if !v4 && e.VIP6.IsValid() {
			a = e.VIP6
		}
	case x < 15:
		a = r.randomIn(pool)
	case x < 16 && sv.nsAddr.IsValid():
		a = sv.nsAddr
	default:
		a = r.randomIn(netip.MustParsePrefix(map[bool]string{true: "192.0.2.0/24", false: "2001:db8::/64"}[v4]))
	}
	name, _ := dns.ReverseAddr(a.String())
	labels := dns.SplitDomainName(name)
	switch x := r.rng.IntN(20); {
	case x < 12:
		return name
	case x < 17: // an apex, a name between it and an address, or above it
		return strings.Join(labels[1+r.rng.IntN(len(labels)-2):], ".") + "."
	case x < 18:
		return "1." + name
	case x < 19: // not canonical: a leading zero, two nibbles
		return "0" + name
	}
	return pick(r.rng, []string{"in-addr.arpa.", "ip6.arpa.", "arpa."})
}

// pack returns the query's message.
func (q *rquery) pack() ([]byte, error) {
	if q.shape == shapeShort {
		return q.short, nil
	}
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Id: q.id, Opcode: q.opcode, RecursionDesired: q.rd, CheckingDisabled: q.cd,
		Response: q.shape == shapeResponse}}
	if q.junk {
		m.Authoritative, m.Truncated, m.RecursionAvailable, m.AuthenticatedData, m.Zero = true, true, true, true, true
	}
	question := dns.Question{Name: q.name, Qtype: q.qtype, Qclass: q.qclass}
	switch q.shape {
	case shapeNoQuestion:
	case shapeTwoQuestions:
		m.Question = []dns.Question{question, {Name: under("other", q.name), Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	default:
		m.Question = []dns.Question{question}
	}
	a := &dns.A{Hdr: dns.RR_Header{Name: "x.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)}
	switch q.shape {
	case shapeExtraRR:
		m.Extra = append(m.Extra, a)
	case shapeAnswerRR:
		m.Answer = append(m.Answer, a)
	}
	if q.edns {
		opt := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		opt.SetUDPSize(q.size)
		opt.SetDo(q.do)
		opt.SetVersion(q.version)
		if q.cookie {
			opt.Option = append(opt.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		}
		switch q.shape {
		case shapeBadOPTName:
			opt.Hdr.Name = "opt."
		case shapeTwoOPT:
			m.Extra = append(m.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 1232}})
		}
		m.Extra = append(m.Extra, opt)
	}
	raw, err := m.Pack()
	if err != nil {
		return nil, err
	}
	if q.shape == shapeCut {
		end, _ := questionEnd(raw)
		raw = raw[:end-1-int(q.id)%(end-headerLen)]
	}
	return raw, nil
}

// under returns the name of label below name.
func under(label, name string) string {
	if name == "." {
		return label + "."
	}
	return label + "." + name
}

// limit is the largest UDP reply the query accepts.
func (q *rquery) limit(sv *rndServer) int {
	switch {
	case q.tcp:
		return maxMsgSize
	case !q.edns || q.shape == shapeBadOPTName || q.shape == shapeTwoOPT:
		return dns.MinMsgSize
	}
	return min(max(int(q.size), dns.MinMsgSize), sv.maxUDP)
}

// expect is the model: the reply q should get.
func (r *rnd) expect(q *rquery) *rndWant {
	sv := r.servers[q.srv]
	w := &rndWant{ra: sv.fwd}
	switch q.shape {
	case shapeShort, shapeResponse:
		w.drop = true
		return w
	case shapeCut:
		w.bare, w.rcode = true, dns.RcodeFormatError
		return w
	}
	// A header alone, and the OPT record when the query had one (RFC 6891
	// §6.1.1): for opcodes other than QUERY (NOTIMP), question counts other
	// than one and names longer than 255 octets (FORMERR, RFC 1035 §3.1).
	badOPT := q.shape == shapeBadOPTName || q.shape == shapeTwoOPT
	w.opt = q.edns && !badOPT
	w.do = w.opt && q.do
	switch {
	case q.shape == shapeOpcode && w.opt && q.version != 0: // the EDNS version first
		w.bare, w.rcode = true, dns.RcodeBadVers
		return w
	case q.shape == shapeOpcode:
		w.bare, w.rcode = true, dns.RcodeNotImplemented
		return w
	case q.shape == shapeNoQuestion || q.shape == shapeTwoQuestions || len(q.name)+1 > maxNameLen:
		w.bare, w.rcode = true, dns.RcodeFormatError
		return w
	}
	w.echo = q.name
	if badOPT { // RFC 6891 §6.1.1
		w.rcode = dns.RcodeFormatError
		return w
	}
	if q.edns && q.version != 0 { // RFC 6891 §6.1.3
		w.rcode = dns.RcodeBadVers
		return w
	}
	if q.client == 2 {
		w.rcode = dns.RcodeRefused
		return w
	}
	t := r.tenants[q.client]
	lname := strings.ToLower(q.name)
	if zw, ok := sv.zoneAnswer(t.zones[q.srv], t.view, lname, q.qtype); ok {
		if q.qclass != dns.ClassINET && q.qclass != dns.ClassANY || q.qtype == dns.TypeAXFR || q.qtype == dns.TypeIXFR {
			w.rcode = dns.RcodeRefused
			return w
		}
		w.rcode, w.aa, w.sections = zw.rcode, zw.aa, zw.sections
		// The server packs the names at the question as asked or in
		// lower case; compression differs.
		w.sizeLo = replySize(dns.Question{Name: lname, Qtype: q.qtype, Qclass: q.qclass}, w.sections, w.opt, "", "")
		w.sizeHi = replySize(dns.Question{Name: q.name, Qtype: q.qtype, Qclass: q.qclass}, w.sections, w.opt, lname, q.name)
		if w.sizeLo > w.sizeHi {
			w.sizeLo, w.sizeHi = w.sizeHi, w.sizeLo
		}
		return w
	}
	if !sv.fwd {
		w.rcode = dns.RcodeRefused
		return w
	}
	return r.forwarded(q, w, lname)
}

// forwarded is the reply relayed from the first upstream that answers.
func (r *rnd) forwarded(q *rquery, w *rndWant, lname string) *rndWant {
	n := r.table[lname]
	if n == nil {
		n = upDefault
	}
	for _, mode := range n.modes {
		switch mode {
		case upServfail, upRefused, upTimeout:
			continue
		}
		w.fwd, w.aa, w.ra = true, n.aa, true
		var ans, ns []dns.RR
		w.rcode, ans, ns = n.answer(q.qtype)
		w.sections = [3][]dns.RR{ans, ns, nil}
		w.upTC = mode == upTruncated && !q.tcp
		echo := q.name
		if n.lowerEcho {
			echo = lname
		}
		w.sizeLo = replySize(dns.Question{Name: echo, Qtype: q.qtype, Qclass: q.qclass}, w.sections, w.opt, "", "")
		w.sizeHi = w.sizeLo
		return w
	}
	w.rcode = dns.RcodeServerFailure
	w.ra = true
	return w
}

// replySize packs a reply with sections (owned by from renamed to to).
func replySize(question dns.Question, sections [3][]dns.RR, opt bool, from, to string) int {
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true}, Compress: true, Question: []dns.Question{question}}
	dst := [3]*[]dns.RR{&m.Answer, &m.Ns, &m.Extra}
	for i, s := range sections {
		for _, rr := range s {
			if from != "" && rr.Header().Name == from {
				rr = dns.Copy(rr)
				rr.Header().Name = to
			}
			*dst[i] = append(*dst[i], rr)
		}
	}
	if opt {
		m.SetEdns0(4096, false)
	}
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	return len(b)
}

// check compares a reply with the model's.
func (r *rnd) check(q *rquery, w *rndWant, raw []byte) []string {
	sv := r.servers[q.srv]
	var bad []string
	fail := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	var m dns.Msg
	if err := m.Unpack(raw); err != nil {
		return []string{fmt.Sprintf("reply does not parse: %v (%x)", err, raw)}
	}
	wantOpcode := 0
	if w.bare {
		wantOpcode = q.opcode
	}
	if !m.Response || m.Opcode != wantOpcode || m.Rcode != w.rcode {
		fail("QR %v opcode %d rcode %s, want true %d %s", m.Response, m.Opcode, dns.RcodeToString[m.Rcode], wantOpcode, dns.RcodeToString[w.rcode])
	}
	if m.Authoritative != w.aa || m.RecursionAvailable != w.ra || m.RecursionDesired != q.rd {
		fail("AA %v RA %v RD %v, want %v %v %v", m.Authoritative, m.RecursionAvailable, m.RecursionDesired, w.aa, w.ra, q.rd)
	}
	if !w.bare && m.CheckingDisabled != q.cd {
		fail("CD %v, want %v", m.CheckingDisabled, q.cd)
	}
	if m.Zero || m.AuthenticatedData {
		fail("Z %v AD %v in a reply", m.Zero, m.AuthenticatedData)
	}
	limit := q.limit(sv)
	if len(raw) > limit {
		fail("reply of %d bytes, the client accepts %d", len(raw), limit)
	}
	opt := m.IsEdns0()
	if w.bare {
		if len(m.Question)+len(m.Answer)+len(m.Ns) > 0 || len(m.Extra) > 0 && opt == nil || len(m.Extra) > 1 || m.Truncated {
			fail("a bare header wanted, got %d questions, %d/%d/%d records, TC %v", len(m.Question), len(m.Answer), len(m.Ns), len(m.Extra), m.Truncated)
		}
	} else if len(m.Question) != 1 || m.Question[0] != (dns.Question{Name: w.echo, Qtype: q.qtype, Qclass: q.qclass}) {
		fail("question %v, want %q %s %s", m.Question, w.echo, dns.TypeToString[q.qtype], dns.ClassToString[q.qclass])
	}
	switch {
	case (opt != nil) != w.opt:
		fail("OPT %v, want one: %v", opt, w.opt)
	case opt != nil:
		if opt.Hdr.Name != "." || opt.Version() != 0 || opt.Do() != w.do || !w.fwd && int(opt.UDPSize()) != sv.maxUDP {
			fail("OPT %v, want version 0, DO %v, size %d", opt, w.do, sv.maxUDP)
		}
	}
	if !w.bare {
		r.checkSections(q, w, &m, limit, fail)
	}
	return bad
}

// checkSections compares the records: all of them unless the reply is
// truncated, then a part, only where the whole would not fit.
func (r *rnd) checkSections(q *rquery, w *rndWant, m *dns.Msg, limit int, fail func(string, ...any)) {
	got := [3][]dns.RR{m.Answer, m.Ns, nil}
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			got[2] = append(got[2], rr)
		}
	}
	var complete [3]bool
	for i, name := range []string{"answer", "authority", "additional"} {
		g, want := rrSet(got[i]), rrSet(w.sections[i])
		if extra := setMinus(g, want); len(extra) > 0 {
			fail("%s: unexpected %v; want %v", name, extra, want)
		}
		missing := setMinus(want, g)
		complete[i] = len(missing) == 0
		// RFC 2181 §9: additional records may be left out without TC
		// when they do not fit; the answer and authority may not.
		if !complete[i] && !m.Truncated && (i < 2 || w.sizeHi <= limit) {
			fail("%s: missing %v without TC", name, missing)
		}
	}
	switch {
	case !m.Truncated:
	case q.tcp:
		fail("TC over TCP")
	case w.upTC:
	case w.sizeHi <= limit:
		fail("TC, but the whole reply (%d bytes) fits in %d", w.sizeHi, limit)
	case complete[0] && complete[1]:
		fail("TC with the whole answer and authority (RFC 2181 §9: not for additional records)")
	}
}

// rrSet renders records in lower case with single spaces, as a multiset.
func rrSet(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, strings.ToLower(strings.Join(strings.Fields(rr.String()), " ")))
	}
	slices.Sort(out)
	return out
}

// setMinus returns a without b (multisets, sorted).
func setMinus(a, b []string) []string {
	var out []string
	j := 0
	for _, s := range a {
		for j < len(b) && b[j] < s {
			j++
		}
		if j < len(b) && b[j] == s {
			j++
			continue
		}
		out = append(out, s)
	}
	return out
}

// Clients.

// rndWorker sends its share of a batch's queries one after the other.
type rndWorker struct {
	conns map[[2]int]*rndConn // by server and client
	stats map[string]int
}

type rndConn struct{ udp, tcp net.Conn }

func (w *rndWorker) closeAll() {
	for _, c := range w.conns {
		for _, nc := range []net.Conn{c.udp, c.tcp} {
			if nc != nil {
				nc.Close()
			}
		}
	}
	clear(w.conns)
}

func (r *rnd) runBatch(qs []*rquery) []string {
	var mu sync.Mutex
	var fails []string
	var wg sync.WaitGroup
	for i, wk := range r.workers {
		wg.Go(func() {
			for _, q := range qs {
				if q.worker != i {
					continue
				}
				if errs := r.ask(wk, q); len(errs) > 0 {
					mu.Lock()
					fails = append(fails, fmt.Sprintf("batch %d: %s:\n\t%s", r.batch, q, strings.Join(errs, "\n\t")))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for _, wk := range r.workers {
		for k, v := range wk.stats {
			r.stats[k] += v
		}
		clear(wk.stats)
	}
	return fails
}

// ask sends q (and the queries of its burst, or the query that follows a
// dropped one) and checks the replies.
func (r *rnd) ask(wk *rndWorker, q *rquery) []string {
	c, err := r.conn(wk, q)
	if err != nil {
		return []string{err.Error()}
	}
	group := append([]*rquery{q}, q.burst...)
	wk.stats["sent"] += len(group)
	var frames []byte
	for _, g := range group {
		raw, err := g.pack()
		if err != nil {
			return []string{fmt.Sprintf("pack %s: %v", g, err)}
		}
		if g.tcp { // one write for all: the server reads them one by one
			frames = append(binary.BigEndian.AppendUint16(frames, uint16(len(raw))), raw...)
			continue
		}
		if err := send(c, raw); err != nil {
			wk.drop(q)
			return []string{fmt.Sprintf("send: %v", err)}
		}
	}
	if frames != nil {
		if err := send(c, frames); err != nil {
			wk.drop(q)
			return []string{fmt.Sprintf("send: %v", err)}
		}
	}
	if r.expect(q).drop {
		wk.stats["dropped"]++
		if errs := r.ask(wk, q.follow); len(errs) > 0 {
			return append([]string{"the query after it: " + q.follow.String()}, errs...)
		}
		return nil
	}
	if len(q.burst) > 0 {
		wk.stats["bursts"]++
	}
	pending := map[uint16]*rquery{}
	for _, g := range group {
		pending[g.id] = g
	}
	var errs []string
	for range group {
		reply, err := receive(c, q.tcp)
		if err != nil {
			wk.drop(q)
			return append(errs, fmt.Sprintf("no reply (%d of %d missing): %v", len(pending), len(group), err))
		}
		g := pending[be16(reply)]
		if g == nil {
			return append(errs, fmt.Sprintf("a reply to no query in flight: %x", reply))
		}
		delete(pending, g.id)
		w := r.expect(g)
		if e := r.check(g, w, reply); len(e) > 0 {
			var m dns.Msg
			if m.Unpack(reply) == nil {
				e = append(e, "reply:\n"+m.String())
			}
			if n := r.table[strings.ToLower(g.name)]; n != nil && r.servers[g.srv].fwd {
				e = append(e, fmt.Sprintf("the upstreams: %v, %v", n.modes[0], n.modes[1]))
			}
			if g != q {
				e = append([]string{"in its burst: " + g.String()}, e...)
			}
			errs = append(errs, e...)
			continue
		}
		wk.count(g, w, reply)
	}
	return errs
}

func (wk *rndWorker) count(q *rquery, w *rndWant, reply []byte) {
	kind, again, _ := strings.Cut(q.kind, "+")
	wk.stats["kind:"+kind]++
	if again != "" {
		wk.stats["repeated"]++
	}
	rc := dns.RcodeToString[w.rcode]
	if w.rcode == dns.RcodeBadVers {
		rc = "BADVERS"
	}
	if w.fwd {
		rc = "fwd-" + rc
	}
	wk.stats["rcode:"+rc]++
	if be16(reply[2:])&flagTC != 0 {
		wk.stats["truncated"]++
	}
	if be16(reply[10:]) < uint16(len(w.sections[2])) {
		wk.stats["additional-cut"]++
	}
	if q.tcp {
		wk.stats["tcp"]++
	}
}

// conn returns the worker's connection to q's server from q's client.
func (r *rnd) conn(wk *rndWorker, q *rquery) (net.Conn, error) {
	sv := r.servers[q.srv]
	key := [2]int{q.srv, q.client}
	c := wk.conns[key]
	if c == nil {
		c = &rndConn{}
		wk.conns[key] = c
	}
	local := rndClients[q.client]
	var err error
	if !q.tcp {
		if c.udp == nil {
			c.udp, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(sv.udp)))
		}
		return c.udp, err
	}
	if q.reconnect && c.tcp != nil {
		c.tcp.Close()
		c.tcp = nil
	}
	if c.tcp == nil {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0)), Timeout: rndReplyWait}
		c.tcp, err = d.Dial("tcp", sv.tcp)
	}
	return c.tcp, err
}

// drop forgets q's connection after an error: it may hold half a reply.
func (wk *rndWorker) drop(q *rquery) {
	c := wk.conns[[2]int{q.srv, q.client}]
	nc := &c.udp
	if q.tcp {
		nc = &c.tcp
	}
	if *nc != nil {
		(*nc).Close()
		*nc = nil
	}
}

func send(c net.Conn, b []byte) error {
	if err := c.SetWriteDeadline(time.Now().Add(rndReplyWait)); err != nil {
		return err
	}
	_, err := c.Write(b)
	return err
}

// receive reads one reply.
func receive(c net.Conn, tcp bool) ([]byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(rndReplyWait)); err != nil {
		return nil, err
	}
	buf := make([]byte, maxMsgSize)
	var n int
	var err error
	if tcp {
		n, err = readTCPFrame(c, buf)
	} else {
		n, err = c.Read(buf)
	}
	if err != nil {
		return nil, err
	}
	if n < headerLen {
		return nil, fmt.Errorf("a reply shorter than a header: %x", buf[:n])
	}
	return buf[:n], nil
}
