package gateway

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/internal/testseed"
	"github.com/ztgate/ztgate/resolver"
	"github.com/ztgate/ztgate/resolver/resolvertest"
)

// TestAPIRandom drives the admin API's services at random against a model
// written from the documentation (configuration.md, operations.md):
// POST /v1/services with valid bodies (backends by address, from SRV
// records with backends_srv (the test's DNS server answers them), or
// both; vip and vip6 pins) and invalid ones
// (bad JSON, unknown keys, names taken by the API or the file, bad ports
// and addresses, bad backends_srv or no backends at all, vip and vip6
// pins outside their pool, on a reserved address, of the wrong family, on
// another service's VIP or pin or one held for another name, undeclared
// tenants, oversize bodies), DELETE /v1/services/{name} (of the API, of
// the file, unknown, escaped), drains and undrains of backends (by
// address, by an SRV backend's address:port, by the SRV name in any case,
// of an address the service lacks), POST /v1/reload of a rewritten file (its
// services, their vip and vip6 pins and tenants change; a file service
// named as an API service, pinned to another service's VIP or one held
// for another name, or a tenant an API service names removed, fails it),
// drains kept for later steps (with a deadline at times: the backend stays
// drained past it), a drained service removed and put back (by a reload,
// or DELETE and POST) while a flow to it runs, SRV answers that change
// (records added and removed, a port changed, the name gone and back;
// min_ttl is arMinTTL, and each service of the name follows within
// arSettle), the clock moving past the VIP hold-down, and restarts on the same state_dir (with the file a failed
// reload left, and with api-services.json corrupt, truncated or holding
// an entry that does not validate: each a clear error, then a start
// with the file put back). The seed is logged; ZTGATE_API_SEED=<seed>
// replays it.
//
// Two runs in three have tun.pool6 and IPv6 clients in every tenant.
//
// After every step: the status and the {"errors": [...]} of each answer;
// GET /v1/services (names, source, VIP and VIP6, tenants, ports, backends
// with their name, SRV port, origin, draining and healthy: a drain lasts
// until undrained, its backend leaves, its service leaves with no flow
// left, or a restart); each service keeps its VIPs
// across reloads and restarts, a pin moved by a reload holds the VIP it
// left for its service, and a name added back within vip_hold_down gets
// its VIPs back; DNS from each tenant, over IPv4 or IPv6 (A, AAAA and PTR
// of both VIPs of every name, NXDOMAIN where the tenant is not admitted)
// and nothing for a source in no tenant; a new TCP and UDP flow to a
// service, to its IPv4 or IPv6 VIP, reaches one of its backends not
// drained on the target port (an SRV backend on its record's port), and
// is refused for a tenant not admitted or with every backend drained; ztgate_vip_pool_used (services and held IPv4 VIPs)
// and ztgate_backend_healthy (a series for each backend, address:port for
// an SRV one, none of a service gone). A flow open to a service the API deletes lives on for
// drain_timeout and is closed then. No goroutine is left.
func TestAPIRandom(t *testing.T) {
	seed := testseed.Get(t, apiSeedEnv)
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	r := newAPIRand(t, seed)
	kinds := []struct {
		name   string
		weight int
		run    func()
	}{
		{"post", 30, r.post},
		{"post bad", 22, r.postBad},
		{"delete", 16, r.delete},
		{"drain", 8, r.drain},
		{"srv", 8, r.srvChange},
		{"flap", 4, r.flap},
		{"reload", 10, r.reload},
		{"clock", 4, r.tick},
		{"restart", 3, r.restart},
	}
	began := time.Now()
	for r.step = 1; r.step <= arSteps; r.step++ {
		if time.Since(began) > arBudget {
			t.Logf("stopping: the test's time budget of %v is spent", arBudget)
			break
		}
		i := testseed.Weighted(r.rng, len(kinds), func(i int) int { return kinds[i].weight })
		r.clk.advance(time.Millisecond) // holds made by two steps are told apart by time
		start := time.Now()
		kinds[i].run()
		r.stats[kinds[i].name]++
		r.spent[kinds[i].name] += time.Since(start)
		start = time.Now()
		r.check()
		r.spent["check"] += time.Since(start)
	}
	t.Logf("%d steps: %v; time spent: %v", r.step-1, r.stats, r.spent)
	r.gw.g.Close()
}

const (
	apiSeedEnv = "ZTGATE_API_SEED"
	arSteps    = 300
	arBudget   = 15 * time.Second
	arHoldDown = 30 * time.Second // vip_hold_down: dns.ttl's default
	// arMinTTL is discovery.min_ttl: the SRV records have TTL 0, so each
	// name is asked again every arMinTTL, and a name gone from DNS leaves
	// at its second NXDOMAIN, arMinTTL or more after the first.
	arMinTTL = 100 * time.Millisecond
	// arSettle bounds how long discovery takes to follow a change of the
	// records: a lookup each arMinTTL, two for a name gone, and a
	// backend's first health check (250ms) for a new one on probation.
	arSettle = 5 * time.Second
)

var (
	// arFileNames may be services of the file, arAPINames of the API:
	// they share two, so that either side may take the other's name.
	arFileNames = []string{"web", "db", "mail"}
	arAPINames  = []string{"chat", "git", "wiki", "web", "db"}
	arPool      = netip.MustParsePrefix("10.100.0.0/24")
	arPool6     = rrPools6[0] // tun.pool6 of a run with IPv6
	// arSRV are the SRV names an API service may discover its backends by
	// (backends_srv), served by the test's DNS server for the whole run:
	// the second puts two records on one address, on two ports; the third
	// does not exist (NXDOMAIN), so that a service of it alone has no
	// backend and refuses new flows.
	arSRV = []struct {
		name string
		recs []arSRVRec
	}{
		{"_a._tcp.srv.example", []arSRVRec{{0, 0}, {1, 1}}},
		{"_b._tcp.srv.example", []arSRVRec{{2, 0}, {2, 2}}},
		{"_none._tcp.srv.example", nil},
	}
)

// arSRVRec is an SRV record of arSRV: its target resolves to
// rrWorld.addrs[addr], its port is rrWorld.tcpPorts[port].
type arSRVRec struct{ addr, port int }

// arSRVTarget is the host name of rrWorld.addrs[i] in the SRV records.
func arSRVTarget(i int) string { return fmt.Sprintf("t%d.srv.example", i) }

// arSvc is a service of the model, of the file or of the API.
type arSvc struct {
	name      string
	api       bool
	tenants   []string
	pin, pin6 netip.Addr // invalid: none
	backends  []int      // indexes of rrWorld.addrs
	srv       int        // backends_srv: an index of arSRV, or -1
	// drained are the backends drained through the API, by label
	// (arBackend.label): until undrained, the backend left (a reload or
	// DNS took it away; with no flow, it comes back new), the service
	// left, or a restart.
	drained   map[string]bool
	ports     []rrPort   // TCP only with srv
	health    string     // of the API's body: "" for the default checks
	vip, vip6 netip.Addr // vip6 invalid without a pool6
}

func (s *arSvc) allows(tenant string) bool {
	return slices.Contains(s.tenants, "*") || slices.Contains(s.tenants, tenant)
}

// arHold is a VIP held for a name that left, or that a pin moved away
// from: IPv4 or IPv6 (a service that leaves holds one of each).
type arHold struct {
	name  string
	vip   netip.Addr
	since time.Time
}

func (h arHold) String() string {
	return fmt.Sprintf("%s for %s since %s", h.vip, h.name, h.since.Format("15:04:05.000"))
}

type apiRand struct {
	t     *testing.T
	seed  uint64
	step  int
	rng   *rand.Rand
	w     *rrWorld
	gen   *rrGen
	clk   *fakeNow
	state string // the state directory every run of the gateway shares
	gw    *rrGW

	file    *rrConfig // the file the gateway runs
	disk    string    // the file's text as on disk: another after a failed reload
	diskCfg *rrConfig // what disk says
	svcs    map[string]*arSvc
	v6      bool // the file has a pool6 and the tenants IPv6 prefixes
	dns     *resolvertest.Server
	srv     [][]arSRVRec // what each name of arSRV answers now: nil, NXDOMAIN
	holds   []arHold
	seen    map[string]bool
	full    bool // the next check opens flows to every service
	stats   map[string]int
	trail   []string // the last steps, for messages
	spent   map[string]time.Duration
}

func newAPIRand(t *testing.T, seed uint64) *apiRand {
	rng := rand.New(rand.NewPCG(seed, seed^0xa91))
	w := startRRWorld(t)
	r := &apiRand{
		t: t, seed: seed, rng: rng, w: w, gen: &rrGen{rng: rng, w: w}, clk: newFakeNow(),
		state: filepath.Join(t.TempDir(), "state"),
		svcs:  map[string]*arSvc{}, seen: map[string]bool{}, stats: map[string]int{}, spent: map[string]time.Duration{},
	}
	r.v6 = rng.IntN(3) != 0
	dns, err := resolvertest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dns.Close)
	r.dns = dns
	for i, a := range w.addrs {
		dns.SetHost(arSRVTarget(i), 300, a)
	}
	for i, x := range arSRV {
		r.srv = append(r.srv, nil)
		r.setSRV(i, slices.Clone(x.recs))
	}
	r.file = r.newFile()
	for _, s := range r.file.services {
		fs := r.fileSvc(r.file, s)
		fs.vip, fs.vip6 = fs.pin, fs.pin6 // the others are learnt
		r.svcs[s.name] = fs
	}
	r.disk, r.diskCfg = r.text(r.file), r.file
	if err := r.start(); err != nil {
		t.Fatalf("start: %v\n%s", err, r.disk)
	}
	t.Cleanup(func() { r.gw.g.Close() })
	r.learnVIPs()
	t.Logf("IPv6 (pool6 %s, IPv6 clients): %v", arPool6, r.v6)
	r.check()
	return r
}

func (r *apiRand) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("seed %d step %d: %s\nlast steps:\n%s\nfile:\n%s", r.seed, r.step, fmt.Sprintf(format, args...),
		strings.Join(r.trail, "\n"), r.disk)
}

// note keeps a line of what a step did, for the failure's message.
func (r *apiRand) note(format string, args ...any) {
	r.trail = append(r.trail, fmt.Sprintf("%d: ", r.step)+fmt.Sprintf(format, args...))
	if len(r.trail) > 25 {
		r.trail = r.trail[1:]
	}
}

// sources are the client addresses: two of each prefix, and their IPv6
// twins in a run with IPv6.
func (r *apiRand) sources() []netip.Addr {
	var out []netip.Addr
	for q := range rrPrefixes {
		out = append(out, rrSource(q, 0), rrSource(q, 1))
		if r.v6 {
			out = append(out, rrSource6(q, 0), rrSource6(q, 1))
		}
	}
	return out
}

func (r *apiRand) start() error {
	gw, err := startRRGateway(r.t, "gw", r.disk, true, r.sources(), r.clk)
	if err != nil {
		return err
	}
	r.gw = gw
	return nil
}

// text renders c with the shared state directory and the test's DNS
// server for backends_srv.
func (r *apiRand) text(c *rrConfig) string {
	api := "[api]\nlisten = \"off\"\n"
	text := strings.Replace(c.toml(r.w), api, api+fmt.Sprintf("[discovery]\nnameservers = [%q]\nmin_ttl = %q\n", r.dns.Addr(), arMinTTL), 1)
	return strings.ReplaceAll(text, "STATE", r.state)
}

// newFile returns a random file: one to three tenants, each on a prefix of
// its own, and some of arFileNames, none of them taken by the API.
func (r *apiRand) newFile() *rrConfig {
	c := &rrConfig{drain: r.gen.pick([]string{"0s", "700ms"}), v6: r.v6}
	if r.v6 {
		c.restart.pool6 = arPool6
	}
	names := r.gen.subset(len(rrTenantNames), 1+r.rng.IntN(len(rrTenantNames)))
	order := r.rng.Perm(len(rrPrefixes))
	for i, ni := range names {
		c.tenants = append(c.tenants, rrTenant{name: rrTenantNames[ni], prefixes: []int{order[i]}})
	}
	for _, name := range arFileNames {
		if r.rng.IntN(2) == 0 {
			continue
		}
		s := rrService{name: name, pin: -1, pin6: -1, tenants: r.tenants(c, false)}
		// Pins of the file: each of rrWorld's pins is one name's, so
		// that the file's pins differ; the API's pins and the clock
		// make them taken or held at times.
		if r.rng.IntN(3) == 0 {
			s.pin = r.rng.IntN(2)*len(arFileNames) + slices.Index(arFileNames, name)
		}
		if r.v6 && r.rng.IntN(3) == 0 {
			s.pin6 = r.rng.IntN(2)*len(arFileNames) + slices.Index(arFileNames, name)
		}
		s.backends = r.gen.subset(len(r.w.addrs), 1+r.rng.IntN(2))
		s.ports = []rrPort{{proto: "tcp", port: 80, target: r.rng.IntN(3)}, {proto: "udp", port: 53, target: r.rng.IntN(3)}}
		s.health = rrHealth{typ: "none"}
		if r.rng.IntN(3) == 0 {
			// Checks: a reload that adds, removes or changes them
			// restarts them, and keeps the service's drains.
			s.health = rrHealth{typ: "tcp", port: -1, rise: 1 + r.rng.IntN(2), fall: 1}
		}
		c.services = append(c.services, s)
	}
	return c
}

// tenants returns a service's tenants: "*" or some of c's (with bad, at
// times one c does not declare).
func (r *apiRand) tenants(c *rrConfig, bad bool) []string {
	if !bad && r.rng.IntN(4) == 0 {
		return []string{"*"}
	}
	var out []string
	for _, i := range r.gen.subset(len(c.tenants), 1+r.rng.IntN(len(c.tenants))) {
		out = append(out, c.tenants[i].name)
	}
	if bad {
		for _, n := range rrTenantNames {
			if !slices.Contains(c.tenantNames(), n) {
				return append(out, n)
			}
		}
		return append(out, "umbrella")
	}
	return out
}

func (r *apiRand) fileSvc(c *rrConfig, s rrService) *arSvc {
	return &arSvc{name: s.name, tenants: slices.Clone(s.tenants), backends: slices.Clone(s.backends), srv: -1, ports: slices.Clone(s.ports),
		pin: s.pinned(r.w), pin6: s.pinned6(r.w, c)}
}

// learnVIPs notes the VIPs GET /v1/services shows of services whose VIP
// the model does not know yet (at the first start).
func (r *apiRand) learnVIPs() {
	vips, vips6, err := r.gw.vips()
	if err != nil {
		r.fatalf("%v", err)
	}
	for n, s := range r.svcs {
		if !s.vip.IsValid() {
			s.vip = vips[n]
		}
		if r.v6 && !s.vip6.IsValid() {
			s.vip6 = vips6[n]
		}
	}
}

// --- the steps

// apiBody is a service as POST /v1/services takes it.
func (r *apiRand) apiBody(s *arSvc, health string) string {
	var ports []string
	for _, p := range s.ports {
		name := ""
		if p.name != "" {
			name = fmt.Sprintf(`"name": %q, `, p.name)
		}
		ports = append(ports, fmt.Sprintf(`{%s"protocol": %q, "port": %d, "target": %d}`, name, p.proto, p.port, r.w.port(p.proto, p.target)))
	}
	var backends []string
	for _, i := range s.backends {
		backends = append(backends, fmt.Sprintf("%q", r.w.addrs[i]))
	}
	tenants, _ := json.Marshal(s.tenants)
	b := fmt.Sprintf(`{"name": %q, "tenants": %s`, s.name, tenants)
	if len(backends) > 0 || r.rng.IntN(2) == 0 {
		b += fmt.Sprintf(`, "backends": [%s]`, strings.Join(backends, ", "))
	}
	if s.srv >= 0 {
		name := arSRV[s.srv].name
		if r.rng.IntN(3) == 0 {
			name = strings.ToUpper(name) // names are folded to lower case
		}
		b += fmt.Sprintf(`, "backends_srv": %q`, name)
	}
	b += fmt.Sprintf(`, "port": [%s]`, strings.Join(ports, ", "))
	if s.pin.IsValid() {
		b += fmt.Sprintf(`, "vip": %q`, s.pin)
	}
	if s.pin6.IsValid() {
		b += fmt.Sprintf(`, "vip6": %q`, s.pin6)
	}
	if health == "" {
		health = s.health // a body made again keeps its checks
	}
	if health != "" {
		b += `, "health": ` + health
	}
	if bal := r.gen.pick([]string{"", "round_robin", "least_conn", "source_hash"}); bal != "" {
		b += fmt.Sprintf(`, "balance": %q`, bal)
	}
	return b + "}"
}

// randomAPISvc is a valid service named name.
func (r *apiRand) randomAPISvc(name string) (*arSvc, string) {
	s := &arSvc{name: name, api: true, tenants: r.tenants(r.file, false), srv: -1}
	s.backends = r.gen.subset(len(r.w.addrs), 1+r.rng.IntN(3))
	k := r.rng.IntN(3)
	if r.rng.IntN(3) == 0 {
		// Backends from SRV records (whose port replaces every target:
		// TCP ports only), with or without addresses besides.
		s.srv = r.rng.IntN(len(arSRV))
		if r.rng.IntN(2) == 0 {
			s.backends = nil
		}
		k = 0
		if r.rng.IntN(2) == 0 {
			k = 3
		}
	}
	switch k {
	case 3:
		s.ports = []rrPort{{proto: "tcp", port: 443, target: r.rng.IntN(3), name: "https"}, {proto: "tcp", port: 80, target: r.rng.IntN(3)}}
	case 0:
		s.ports = []rrPort{{proto: "tcp", port: 80, target: r.rng.IntN(3)}}
	case 1:
		s.ports = []rrPort{{proto: "udp", port: 53, target: r.rng.IntN(3)}}
	default:
		s.ports = []rrPort{{proto: "tcp", port: 443, target: r.rng.IntN(3), name: "https"}, {proto: "udp", port: 5000, target: r.rng.IntN(3)}}
	}
	if r.rng.IntN(3) == 0 {
		s.pin = r.freeAddr(false)
	}
	if r.v6 && r.rng.IntN(3) == 0 {
		s.pin6 = r.freeAddr(true)
	}
	health := ""
	switch r.rng.IntN(3) {
	case 0:
		health = `{"type": "none"}`
	case 1:
		if s.ports[0].proto == "tcp" {
			health = `{"type": "tcp", "interval": "250ms", "rise": 1, "fall": 1}`
		}
	default:
		if s.srv >= 0 {
			// A backend discovered for a running service takes flows
			// once its checks bring it up: not the default checks' 5s
			// interval and rise of 2 (srvChange waits arSettle).
			health = `{"type": "none"}`
		}
	}
	s.health = health
	return s, r.apiBody(s, health)
}

// used reports whether a is the VIP of a service other than name, or
// held for a name other than name.
func (r *apiRand) used(a netip.Addr, name string) string {
	for _, s := range r.svcs {
		if (s.vip == a || s.vip6 == a) && s.name != name {
			return "the VIP of " + s.name
		}
	}
	for _, h := range r.liveHolds() {
		if h.vip == a && h.name != name {
			return "held for " + h.name
		}
	}
	return ""
}

// freeAddr is an address of the pool (pool6 when v6) no service has and
// none holds; near the file's pins, which may take it later.
func (r *apiRand) freeAddr(v6 bool) netip.Addr {
	for {
		a := netip.AddrFrom4([4]byte{10, 100, 0, byte(200 + r.rng.IntN(50))})
		if v6 {
			b := netip.MustParsePrefix(arPool6).Addr().As16()
			b[15] = byte(r.rng.IntN(50)) + 4 // not the anycast address, nor the gateway's
			a = netip.AddrFrom16(b)
		}
		if r.used(a, "") == "" {
			return a
		}
	}
}

// liveHolds are the holds the hold-down has not ended.
func (r *apiRand) liveHolds() []arHold {
	var out []arHold
	for _, h := range r.holds {
		if r.clk.now().Sub(h.since) < arHoldDown {
			out = append(out, h)
		}
	}
	return out
}

// heldFor is the VIP (IPv6 when v6) last held for name, if any.
func (r *apiRand) heldFor(name string, v6 bool) (netip.Addr, bool) {
	var best *arHold
	for _, h := range r.liveHolds() {
		if h.name == name && h.vip.Is6() == v6 && (best == nil || !h.since.Before(best.since)) {
			best = &h
		}
	}
	if best == nil {
		return netip.Addr{}, false
	}
	return best.vip, true
}

// release holds a leaving service's VIPs for it.
func (r *apiRand) release(s *arSvc) {
	r.hold(s.name, s.vip)
	r.hold(s.name, s.vip6)
	delete(r.svcs, s.name)
}

// hold holds vip for name from now, as when it leaves or a pin moves the
// service away from it.
func (r *apiRand) hold(name string, vip netip.Addr) {
	if vip.IsValid() {
		r.holds = append(r.holds, arHold{name: name, vip: vip, since: r.clk.now()})
	}
}

// take ends the holds of the VIPs a service now has.
func (r *apiRand) take(s *arSvc) {
	r.holds = slices.DeleteFunc(r.holds, func(h arHold) bool { return h.vip == s.vip || h.vip == s.vip6 })
	r.svcs[s.name] = s
	r.seen[s.name] = true
}

func (r *apiRand) call(method, path, body string) (int, string) {
	code, out := serveAPI(r.t, r.gw.api, method, path, body, "")
	if len(body) > 400 {
		body = body[:400] + "…"
	}
	r.note("%s %s %s: %d %.200s", method, path, body, code, strings.Join(strings.Fields(out), " "))
	return code, out
}

// wantErrors checks a refusal: the status and {"errors": [...]} naming
// what is wrong.
func (r *apiRand) wantErrors(what string, code int, body string, status int, contains string) {
	r.t.Helper()
	var e struct{ Errors []string }
	if err := json.Unmarshal([]byte(body), &e); err != nil || len(e.Errors) == 0 || code != status {
		r.fatalf("%s: %d %s, want %d with errors", what, code, body, status)
	}
	if !strings.Contains(strings.ToLower(strings.Join(e.Errors, "\n")), strings.ToLower(contains)) {
		r.fatalf("%s: errors %q do not say %q", what, e.Errors, contains)
	}
}

// post adds a valid service, or one whose pin the pool refuses.
func (r *apiRand) post() {
	name := arAPINames[r.rng.IntN(len(arAPINames))]
	s, body := r.randomAPISvc(name)
	if r.rng.IntN(6) == 0 {
		if other := testseed.Pick(r.rng, mapValues(r.svcs), func(*arSvc) bool { return true }); other != nil {
			if other.vip6.IsValid() && r.rng.IntN(2) == 0 {
				s.pin6 = other.vip6 // taken
			} else {
				s.pin = other.vip
			}
			body = r.apiBody(s, "")
		}
	}
	if h := testseed.Pick(r.rng, ptrs(r.liveHolds()), func(*arHold) bool { return true }); h != nil && r.rng.IntN(3) == 0 {
		// held: for another name, or for this one
		if h.vip.Is6() {
			s.pin6 = h.vip
		} else {
			s.pin = h.vip
		}
		body = r.apiBody(s, "")
	}
	code, out := r.call("POST", "/v1/services", body)
	what := "POST " + body
	if old, ok := r.svcs[name]; ok {
		want := "exists"
		if !old.api {
			want = name
		}
		r.wantErrors(what, code, out, http.StatusConflict, want)
		return
	}
	// Pins are validated with the other services' pins first, then the
	// pool refuses a VIP taken or held for another name.
	for _, pin := range []netip.Addr{s.pin, s.pin6} {
		if pin.IsValid() && slices.ContainsFunc(mapValues(r.svcs), func(o *arSvc) bool { return o.pin == pin || o.pin6 == pin }) {
			r.wantErrors(what+" (pinned by another)", code, out, http.StatusConflict, pin.String())
			return
		}
	}
	for _, pin := range []netip.Addr{s.pin, s.pin6} {
		if !pin.IsValid() {
			continue
		}
		if why := r.used(pin, name); why != "" {
			r.wantErrors(what+" ("+why+")", code, out, http.StatusConflict, pin.String())
			return
		}
	}
	if code != http.StatusCreated {
		r.fatalf("%s: %d %s, want 201", what, code, out)
	}
	var got apiService
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		r.fatalf("%s: %v %s", what, err, out)
	}
	vip, err := netip.ParseAddr(got.VIP)
	if err != nil || got.Name != name || got.Source != "api" {
		r.fatalf("%s: answered %s", what, out)
	}
	s.vip = r.wantVIP(what, name, vip, s.pin, false)
	switch {
	case r.v6:
		vip6, err := netip.ParseAddr(got.VIP6)
		if err != nil {
			r.fatalf("%s: vip6 %q, want one of pool6: %s", what, got.VIP6, out)
		}
		s.vip6 = r.wantVIP(what, name, vip6, s.pin6, true)
	case got.VIP6 != "":
		r.fatalf("%s: vip6 %q without a pool6", what, got.VIP6)
	}
	r.take(s)
	if s.srv >= 0 {
		r.stats["(added with backends_srv)"]++
	}
	if s.pin6.IsValid() {
		r.stats["(added with vip6)"]++
	}
}

// wantVIP checks the VIP (IPv6 when v6) a service named name got, pinned
// to pin or not, and returns it: the pin, else the VIP held for the name,
// else one of the pool no other service has and none holds for another.
func (r *apiRand) wantVIP(what, name string, vip, pin netip.Addr, v6 bool) netip.Addr {
	r.t.Helper()
	pool := arPool
	if v6 {
		pool = netip.MustParsePrefix(arPool6)
	}
	switch held, ok := r.heldFor(name, v6); {
	case pin.IsValid() && vip != pin:
		r.fatalf("%s: VIP %s, want the pin %s", what, vip, pin)
	case !pin.IsValid() && ok && vip != held:
		r.fatalf("%s: VIP %s, want %s, held for it since it left", what, vip, held)
	case r.used(vip, name) != "" || !pool.Contains(vip):
		r.fatalf("%s: VIP %s is %s (pool %s)", what, vip, r.used(vip, name), pool)
	}
	return vip
}

// postBad posts a body the gateway must refuse, and nothing changes. A
// body that does not parse or validate is 400 whatever its name: the
// name is looked at once the body is a service.
func (r *apiRand) postBad() {
	name := arAPINames[r.rng.IntN(len(arAPINames))]
	s, body := r.randomAPISvc(name)
	status, want := http.StatusBadRequest, ""
	edit := func(from, to, says string) {
		if !strings.Contains(body, from) {
			r.fatalf("%q is not in %s", from, body)
		}
		body, want = strings.Replace(body, from, to, 1), says
	}
	switch k := r.rng.IntN(12); k {
	case 0:
		edit(`"port": [`, `"port": [[`, "JSON")
	case 1:
		edit(`"port"`, `"colour": "blue", "port"`, "colour")
	case 2:
		edit(fmt.Sprintf(`"port": %d`, s.ports[0].port), `"port": `+r.gen.pick([]string{"0", "70000", "-1", `"80"`}), "port")
	case 3:
		edit(fmt.Sprintf(`"protocol": %q`, s.ports[0].proto), `"protocol": "sctp"`, "protocol")
	case 4:
		if len(s.backends) == 0 { // backends_srv alone
			edit(`"port": [`, `"backends": ["bad_host!"], "port": [`, "backends")
			break
		}
		edit(fmt.Sprintf(`"backends": [%q`, r.w.addrs[s.backends[0]]), `"backends": [`+r.gen.pick([]string{`"192.0.2.1:80"`, `"bad_host!"`, `""`}), "backends")
	case 5:
		pin := r.gen.pick([]string{"10.101.0.7", "10.100.0.0", "10.100.0.1", "10.100.0.255", "fd00::7", "10.100.0.300"})
		if s.pin.IsValid() {
			edit(fmt.Sprintf(`"vip": %q`, s.pin), fmt.Sprintf(`"vip": %q`, pin), "vip")
		} else {
			edit(`"port"`, fmt.Sprintf(`"vip": %q, "port"`, pin), "vip")
		}
	case 6:
		s.tenants = r.tenants(r.file, true)
		body, want = r.apiBody(s, ""), "tenant"
	case 7:
		edit(fmt.Sprintf(`"name": %q`, name), `"name": `+r.gen.pick([]string{`"ns"`, `"Bad Name!"`, `""`, `"-x"`}), "name")
	case 8:
		body = `{"name": "` + name + `", "tenants": ["*"], "backends": ["` + strings.Repeat("1", adminapi.MaxBodyBytes) + `"]}`
		status, want = http.StatusRequestEntityTooLarge, "large"
	case 9:
		body, want = body+` {}`, "JSON"
	case 10:
		// A vip6 pin outside pool6, reserved in it, not IPv6, or with no
		// pool6 at all.
		pin := r.gen.pick([]string{"fd00:ef::7", "10.100.0.7", "fd00:ab::", "fd00:ab::1", "fd00:ab::1:7", "::ffff:10.100.0.7"})
		if !r.v6 {
			pin = r.gen.pick([]string{"fd00:ab::7", pin})
		}
		if s.pin6.IsValid() {
			edit(fmt.Sprintf(`"vip6": %q`, s.pin6), fmt.Sprintf(`"vip6": %q`, pin), "vip6")
		} else {
			edit(`"port"`, fmt.Sprintf(`"vip6": %q, "port"`, pin), "vip6")
		}
	case 11:
		// backends_srv that is no SRV name, or neither backends nor
		// backends_srv.
		if s.srv >= 0 && r.rng.IntN(2) == 0 {
			body = strings.Replace(body, `"backends": [],`, "", 1)
			edit(`"backends_srv": "`, `"backends_srv": "x`, "backends_srv")
			break
		}
		body = fmt.Sprintf(`{"name": %q, "tenants": ["*"], "port": [{"protocol": "tcp", "port": 80}]}`, name)
		if r.rng.IntN(2) == 0 {
			body = strings.Replace(body, `"port"`, `"backends": [], "port"`, 1)
		}
		want = "backends"
	}
	code, out := r.call("POST", "/v1/services", body)
	if len(body) > 300 {
		body = body[:300] + "…"
	}
	r.wantErrors("POST "+body, code, out, status, want)
}

// delete deletes a service of the API (at times with its name escaped or
// in upper case, at times with a flow open), of the file, or none.
func (r *apiRand) delete() {
	switch k := r.rng.IntN(8); {
	case k < 5:
		s := testseed.Pick(r.rng, mapValues(r.svcs), func(s *arSvc) bool { return s.api })
		if s == nil {
			break
		}
		r.deleteAPI(s)
		return
	case k == 5:
		if s := testseed.Pick(r.rng, mapValues(r.svcs), func(s *arSvc) bool { return !s.api }); s != nil {
			code, out := r.call("DELETE", "/v1/services/"+s.name, "")
			r.wantErrors("DELETE "+s.name, code, out, http.StatusConflict, "configuration file")
			return
		}
	}
	path := r.gen.pick([]string{"nope", "web%2Fx", "%2e%2e", "chat%00", "%20chat", "chat%20", "c%68at.x", "*"})
	code, out := r.call("DELETE", "/v1/services/"+path, "")
	if code == http.StatusNoContent || code < 400 || code > 499 || !json.Valid([]byte(out)) {
		r.fatalf("DELETE %s: %d %s, want a 4xx with errors", path, code, out)
	}
	r.wantErrors("DELETE "+path, code, out, code, "")
}

func (r *apiRand) deleteAPI(s *arSvc) {
	name := s.name
	switch r.rng.IntN(3) {
	case 0:
		name = strings.ToUpper(name)
	case 1:
		name = fmt.Sprintf("%%%02x%s", name[0], name[1:])
	}
	var flow net.Conn
	var src netip.Addr
	if tcp := s.port("tcp"); tcp != nil && len(r.dsts(s, *tcp)) > 0 && r.rng.IntN(2) == 0 {
		if src = r.admitted(s); src.IsValid() {
			res, c := r.gw.open("tcp", src, netip.AddrPortFrom(s.vip, tcp.port))
			if c == nil {
				r.fatalf("flow to %s before it is deleted: %s", s.name, res)
			}
			flow = c
		}
	}
	deleted := time.Now()
	code, out := r.call("DELETE", "/v1/services/"+name, "")
	if code != http.StatusNoContent {
		r.fatalf("DELETE %s: %d %s, want 204", name, code, out)
	}
	r.release(s)
	// No new flow reaches a backend through the VIP it left.
	if src := r.admitted(s); src.IsValid() {
		p := s.ports[0]
		if res, c := r.gw.open(p.proto, src, netip.AddrPortFrom(s.vip, p.port)); c != nil {
			c.Close()
			r.fatalf("a new %s flow to %s, deleted, reached %s", p.proto, s.vip, res)
		}
	}
	if flow != nil {
		r.drained(s, flow, "DELETE", deleted, r.file.drainTimeout())
	}
}

// drain drains backends of a service through the API, or undrains them:
// named by an address (every backend on it, an SRV one too), by an SRV
// backend's address:port (that one alone), by the SRV name in any case
// (all of its backends), or by an address the service has no backend on
// (404). A drain is undrained at once, or kept for later steps (the
// checks after each step see it); an undrain lifts what is drained. While
// drained they are shown draining and not healthy, their
// ztgate_backend_healthy is 0, and new flows go to the others (refused
// when none is left).
func (r *apiRand) drain() {
	// A service with a drain to lift at times, else one with SRV
	// backends, and one of those, more often than not.
	s := testseed.Pick(r.rng, mapValues(r.svcs), func(s *arSvc) bool { return len(s.drained) > 0 })
	undrainOnly := s != nil && r.rng.IntN(2) == 0
	if !undrainOnly {
		s = testseed.Pick(r.rng, mapValues(r.svcs), func(s *arSvc) bool { return s.srv >= 0 && len(r.backendsOf(s)) > 0 })
		if s == nil || r.rng.IntN(3) == 0 {
			s = testseed.Pick(r.rng, mapValues(r.svcs), func(s *arSvc) bool { return len(r.backendsOf(s)) > 0 })
		}
	}
	if s == nil {
		return
	}
	bs := r.backendsOf(s)
	b := bs[r.rng.IntN(len(bs))]
	if undrainOnly {
		for _, o := range bs {
			if s.drained[o.label()] {
				b = o
				break
			}
		}
	} else if r.rng.IntN(2) == 0 {
		b = bs[len(bs)-1] // the last is of SRV when there is one
	}
	path, named, by := b.addr.String(), map[string]bool{}, "address"
	k := r.rng.IntN(4)
	switch {
	case k == 1 && b.port != 0:
		path, by = b.label(), "address:port"
		named[b.label()] = true
	case k == 2 && b.origin != "":
		var sb strings.Builder
		for _, c := range b.origin {
			if r.rng.IntN(2) == 0 {
				c = []rune(strings.ToUpper(string(c)))[0]
			}
			sb.WriteRune(c)
		}
		path, by = sb.String(), "SRV name"
		for _, o := range bs {
			named[o.label()] = named[o.label()] || o.origin == b.origin
		}
	case k == 3 && !undrainOnly:
		path = "127.0.0.9"
		code, out := r.call("POST", "/v1/services/"+s.name+"/backends/"+path+"/drain", "")
		r.wantErrors("drain "+path, code, out, http.StatusNotFound, "no backend")
		return
	default:
		for _, o := range bs {
			named[o.label()] = named[o.label()] || o.addr == b.addr
		}
	}
	verbs := []string{"drain", "undrain"}
	switch {
	case undrainOnly:
		verbs = verbs[1:]
	case r.rng.IntN(2) == 0:
		verbs = verbs[:1] // kept for the next steps
		r.stats["(drain kept)"]++
	}
	what := fmt.Sprintf("%v %s of %s", verbs, path, s.name)
	for _, verb := range verbs {
		query := ""
		if verb == "drain" && r.rng.IntN(3) == 0 {
			// A deadline closes the backend's flows (it has none
			// between steps); it stays drained after it, until undrained.
			query = "?deadline=" + r.gen.pick([]string{"30ms", "1h"})
			r.stats["(drained with a deadline)"]++
		}
		code, out := r.call("POST", "/v1/services/"+s.name+"/backends/"+path+"/"+verb+query, "")
		var got apiService
		if err := json.Unmarshal([]byte(out), &got); code != http.StatusOK || err != nil {
			r.fatalf("%s: %s: %d %s, want 200", what, verb, code, out)
		}
		drained := maps.Clone(s.drained)
		if drained == nil {
			drained = map[string]bool{}
		}
		for l, ok := range named {
			if !ok {
				continue
			}
			if verb == "drain" {
				drained[l] = true
			} else {
				delete(drained, l)
			}
		}
		s.drained = drained
		for _, ab := range got.Backends {
			if d := drained[ab.Backend]; (ab.State == "draining") != d || ab.Healthy == d {
				r.fatalf("%s: %s: backend %s is %s, healthy %v; want draining %v", what, verb, ab.Backend, ab.State, ab.Healthy, d)
			}
			if v := metricValue(r.t, r.gw.g, "ztgate_backend_healthy", "backend", ab.Backend, "service", s.name); v != map[bool]float64{true: 0, false: 1}[drained[ab.Backend]] {
				r.fatalf("%s: %s: ztgate_backend_healthy{backend=%q} = %v", what, verb, ab.Backend, v)
			}
		}
		if verb == "undrain" {
			break
		}
		src := r.admitted(s)
		if !src.IsValid() {
			continue
		}
		for _, p := range s.ports {
			want := r.dsts(s, p)
			res, c := r.gw.open(p.proto, src, netip.AddrPortFrom(s.vip, p.port))
			if c != nil {
				c.Close()
			}
			if !slices.Contains(want, res) && (len(want) > 0 || res != "refused") {
				r.fatalf("%s: a %s flow to port %d: %s, want one of %v (or refused without any)", what, p.proto, p.port, res, want)
			}
		}
	}
	r.stats["(drained by "+by+")"]++
}

// keptDrains are the drains of old that s keeps: those of the backends it
// still has.
func (r *apiRand) keptDrains(s *arSvc, old map[string]bool) map[string]bool {
	var out map[string]bool
	for _, b := range r.backendsOf(s) {
		if old[b.label()] {
			if out == nil {
				out = map[string]bool{}
			}
			out[b.label()] = true
		}
	}
	return out
}

// setSRV makes SRV name i of arSRV answer recs (TTL 0: asked again at
// every min_ttl), NXDOMAIN when there are none.
func (r *apiRand) setSRV(i int, recs []arSRVRec) {
	var rrs []resolver.SRV
	for _, rec := range recs {
		rrs = append(rrs, resolver.SRV{Target: arSRVTarget(rec.addr) + ".", Port: r.w.tcpPorts[rec.port], Priority: 10, Weight: 10})
	}
	r.srv[i] = recs
	r.dns.SetSRV(arSRV[i].name, 0, rrs...) // none: the name is removed
}

// srvChange changes the answer of an SRV name: a record added, one
// removed, one's port changed, the name gone (NXDOMAIN) or back. Once
// discovery has followed it (within arSettle), each service of the name
// lists the backends of the new answer: new ones up (after their first
// health check when they have checks), gone ones gone (none has a flow),
// a drained one that stays still drained, one whose port changed a new
// backend (not drained).
func (r *apiRand) srvChange() {
	// A name a service discovers by, more often than not.
	i := r.rng.IntN(len(arSRV))
	if s := testseed.Pick(r.rng, mapValues(r.svcs), func(s *arSvc) bool { return s.srv >= 0 }); s != nil && r.rng.IntN(4) != 0 {
		i = s.srv
	}
	recs := slices.Clone(r.srv[i])
	has := func(rec arSRVRec) bool { return slices.Contains(recs, rec) }
	var what string
	switch k := r.rng.IntN(5); {
	case len(recs) == 0:
		what = "back"
		for range 1 + r.rng.IntN(2) {
			if rec := (arSRVRec{r.rng.IntN(len(r.w.addrs)), r.rng.IntN(len(r.w.tcpPorts))}); !has(rec) {
				recs = append(recs, rec)
			}
		}
	case k == 0:
		what = "gone"
		recs = nil
	case k == 1 && len(recs) > 1:
		what = "a record removed"
		j := r.rng.IntN(len(recs))
		recs = slices.Delete(recs, j, j+1)
	case k == 2:
		j := r.rng.IntN(len(recs))
		rec := recs[j]
		rec.port = (rec.port + 1 + r.rng.IntN(len(r.w.tcpPorts)-1)) % len(r.w.tcpPorts)
		if has(rec) {
			return
		}
		what = "a port changed"
		recs[j] = rec
	default:
		rec := arSRVRec{r.rng.IntN(len(r.w.addrs)), r.rng.IntN(len(r.w.tcpPorts))}
		if has(rec) {
			return
		}
		what = "a record added"
		recs = append(recs, rec)
	}
	r.note("SRV %s: %s: %v", arSRV[i].name, what, recs)
	r.stats["(SRV "+what+")"]++
	r.setSRV(i, recs)
	for _, s := range mapValues(r.svcs) {
		if s.srv == i {
			r.stats["(SRV change followed by a service)"]++
			if len(s.drained) > 0 {
				r.stats["(SRV change of a drained service)"]++
			}
			kept := r.keptDrains(s, s.drained)
			if len(kept) < len(s.drained) {
				r.stats["(drained backend left DNS)"]++
			}
			s.drained = kept
		}
	}
	r.full = true
	deadline := time.Now().Add(arSettle)
	for {
		diff := r.listDiff(func(s *arSvc) bool { return s.srv == i })
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			r.fatalf("SRV %s changed (%s) %v ago: %s", arSRV[i].name, what, arSettle, diff)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// drained checks that a flow of a service deleted at deleted (or whose
// backend was drained then with deadline drain: by says which) lives on
// for drain and is closed then.
func (r *apiRand) drained(s *arSvc, c net.Conn, by string, deleted time.Time, drain time.Duration) {
	defer c.Close()
	rd := bufio.NewReader(c)
	// echo sends a line: nil when it comes back, os.ErrDeadlineExceeded
	// when nothing comes in time, another error once the flow is closed.
	echo := func(d time.Duration) error {
		c.SetDeadline(time.Now().Add(d))
		if _, err := fmt.Fprintf(c, "still\n"); err != nil {
			return err
		}
		line, err := rd.ReadString('\n')
		if err == nil && !strings.HasSuffix(line, " still\n") {
			err = fmt.Errorf("echo %q", line)
		}
		return err
	}
	if drain > 0 {
		if err := echo(time.Second); err != nil && time.Since(deleted) < drain {
			r.fatalf("a flow of %s ended %v after %s, before %v: %v", s.name, time.Since(deleted), by, drain, err)
		}
	}
	for {
		err := echo(100 * time.Millisecond)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			if early := time.Since(deleted); early < drain-50*time.Millisecond {
				r.fatalf("a flow of %s was closed %v after %s, before %v: %v", s.name, early, by, drain, err)
			}
			return
		}
		if time.Since(deleted) > drain+3*time.Second {
			r.fatalf("a flow of %s lives on %v after %s, which ends it at %v", s.name, time.Since(deleted), by, drain)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *arSvc) port(proto string) *rrPort {
	for i := range s.ports {
		if s.ports[i].proto == proto {
			return &s.ports[i]
		}
	}
	return nil
}

// admitted is a client address of a tenant s admits, if any.
func (r *apiRand) admitted(s *arSvc) netip.Addr {
	for _, tn := range r.file.tenants {
		if s.allows(tn.name) {
			return rrSource(tn.prefixes[0], r.rng.IntN(2))
		}
	}
	return netip.Addr{}
}

// reload rewrites the file and reloads it through the API.
func (r *apiRand) reload() {
	next := r.newFile()
	if r.rng.IntN(3) == 0 {
		// The services stay, their checks, backends or targets changed
		// at times: each keeps the drains of the backends it keeps.
		next = r.file.clone()
		for i := range next.services {
			fs := &next.services[i]
			switch r.rng.IntN(5) {
			case 0:
				if fs.health.typ == "none" {
					fs.health = rrHealth{typ: "tcp", port: -1, rise: 1, fall: 1}
				} else {
					fs.health = rrHealth{typ: "none"}
				}
			case 1:
				if b := r.rng.IntN(len(r.w.addrs)); !slices.Contains(fs.backends, b) {
					fs.backends = append(fs.backends, b)
				}
			case 2:
				if len(fs.backends) > 1 {
					fs.backends = slices.Delete(fs.backends, 0, 1)
				}
			case 3:
				fs.ports[0].target = (fs.ports[0].target + 1) % 3
			}
		}
	}
	if r.rng.IntN(3) == 0 {
		// The tenants stay: only the services change.
		next.tenants = slices.Clone(r.file.tenants)
		for i := range next.services {
			next.services[i].tenants = r.tenants(next, false)
		}
	}
	if r.rng.IntN(4) == 0 {
		// A file service named as an API service.
		if s := testseed.Pick(r.rng, mapValues(r.svcs), func(s *arSvc) bool { return s.api }); s != nil && !slices.ContainsFunc(next.services, func(x rrService) bool { return x.name == s.name }) {
			next.services = append(next.services, rrService{name: s.name, pin: -1, pin6: -1, tenants: []string{"*"}, backends: []int{0},
				ports: []rrPort{{proto: "tcp", port: 80}}, health: rrHealth{typ: "none"}})
		}
	}
	if len(next.services) > 0 && r.rng.IntN(5) == 0 {
		// A file service pinned to another service's VIP, or to one held
		// for a name.
		fs := &next.services[r.rng.IntN(len(next.services))]
		var vips []netip.Addr
		for _, s := range mapValues(r.svcs) {
			vips = append(vips, s.vip, s.vip6)
		}
		for _, h := range r.liveHolds() {
			vips = append(vips, h.vip)
		}
		vips = slices.DeleteFunc(vips, func(a netip.Addr) bool { return !a.IsValid() })
		if len(vips) > 0 {
			a := vips[r.rng.IntN(len(vips))]
			if a.Is6() {
				// rrService pins IPv6 by index: make a's index.
				if i := slices.Index(r.w.pins6[arPool6], a); i >= 0 {
					fs.pin6 = i
				}
			} else {
				fs.pinVIP = a
			}
		}
	}
	r.reloadTo(next)
}

// reloadTo writes next to the file and reloads it through the API.
func (r *apiRand) reloadTo(next *rrConfig) {
	prev := r.file
	bad := r.refusal(next)
	r.note("reload to tenants %v services %v (refusal %q)", next.tenantNames(), next.serviceNames(), bad)
	r.disk = r.text(next)
	if err := r.gw.write(r.disk); err != nil {
		r.t.Fatal(err)
	}
	code, out := r.call("POST", "/v1/reload", "")
	r.diskCfg = next
	if bad != "" {
		r.wantErrors("reload", code, out, http.StatusBadRequest, bad)
		if _, err := netip.ParseAddr(bad); err == nil {
			r.stats["(reload refused for a pin)"]++
		}
		return
	}
	var d Diff
	if err := json.Unmarshal([]byte(out), &d); code != http.StatusOK || err != nil {
		r.fatalf("reload: %d %s, want 200", code, out)
	}
	var added, removed []string
	for _, s := range next.services {
		if _, ok := r.svcs[s.name]; !ok {
			added = append(added, s.name)
		}
	}
	for n, s := range r.svcs {
		if !s.api && next.service(n) == nil {
			removed = append(removed, n)
			if len(s.drained) > 0 {
				r.stats["(drained service removed by reload)"]++
			}
			r.release(s)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	if !slices.Equal(slices.Sorted(slices.Values(d.Added)), added) || !slices.Equal(slices.Sorted(slices.Values(d.Removed)), removed) {
		r.fatalf("reload: added %v removed %v, want %v and %v", d.Added, d.Removed, added, removed)
	}
	r.file = next
	r.full = true
	vips, vips6, err := r.gw.vips()
	if err != nil {
		r.fatalf("%v", err)
	}
	// A service that stays keeps its VIPs, or moves to a new pin and
	// holds the VIP it leaves for itself; one added gets its pin, the VIP
	// held for its name, or a free one.
	for _, s := range next.services {
		ns := r.fileSvc(next, s)
		old, ok := r.svcs[s.name]
		switch {
		case !ok:
			ns.vip = r.wantVIP("reload: "+s.name+" added", s.name, vips[s.name], ns.pin, false)
		case ns.pin.IsValid() && ns.pin != old.vip:
			r.stats["(pin moved by reload)"]++
			r.hold(s.name, old.vip)
			ns.vip = ns.pin
		default:
			ns.vip = old.vip
		}
		if ok {
			// Reloads keep a drain, of each backend the service keeps:
			// one the file removes has no flow, and comes back new.
			ns.drained = r.keptDrains(ns, old.drained)
			if len(ns.drained) > 0 {
				r.stats["(drain kept by reload)"]++
				if was := prev.service(s.name); was != nil && was.health != s.health {
					r.stats["(drain kept by a reload that changes the checks)"]++
				}
			}
			if len(ns.drained) < len(old.drained) {
				r.stats["(drained backend left by reload)"]++
			}
		}
		switch {
		case !r.v6:
		case !ok:
			ns.vip6 = r.wantVIP("reload: "+s.name+" added", s.name, vips6[s.name], ns.pin6, true)
		case ns.pin6.IsValid() && ns.pin6 != old.vip6:
			r.hold(s.name, old.vip6)
			ns.vip6 = ns.pin6
		default:
			ns.vip6 = old.vip6
		}
		r.take(ns)
	}
}

// refusal is what a gateway with the API's services says of file c, or
// "" when it takes it.
func (r *apiRand) refusal(c *rrConfig) string {
	// The file is validated first: two of its services on one pin.
	pins := map[netip.Addr]bool{}
	for _, s := range c.services {
		for _, pin := range []netip.Addr{s.pinned(r.w), s.pinned6(r.w, c)} {
			if pins[pin] {
				return pin.String()
			}
			if pin.IsValid() {
				pins[pin] = true
			}
		}
	}
	// The stored services are checked against the file first.
	for _, n := range slices.Sorted(maps.Keys(r.svcs)) {
		s := r.svcs[n]
		for _, tn := range s.tenants {
			if s.api && tn != "*" && !slices.Contains(c.tenantNames(), tn) {
				return fmt.Sprintf("unknown tenant %q", tn)
			}
		}
	}
	for _, s := range c.services {
		if old := r.svcs[s.name]; old != nil && old.api {
			return fmt.Sprintf("service %q is defined in the file and through the API", s.name)
		}
	}
	// The pool refuses a pin on another service's VIP (one the file
	// removes is held for it) or on one held for another name.
	for _, s := range c.services {
		for _, pin := range []netip.Addr{s.pinned(r.w), s.pinned6(r.w, c)} {
			if pin.IsValid() && r.used(pin, s.name) != "" {
				return pin.String()
			}
		}
	}
	return ""
}

// tick moves the clock past the hold-down: every held VIP is free.
func (r *apiRand) tick() {
	r.note("the clock passes the hold-down")
	r.clk.advance(arHoldDown + 5*time.Second)
	r.holds = nil
}

// restart stops the gateway and starts it again on the same state
// directory, with the file on disk (refused when a reload refused it),
// at times with api-services.json damaged first (refused, then put back).
func (r *apiRand) restart() {
	r.note("restart")
	r.gw.g.Close()
	store := filepath.Join(r.state, apiServicesFile)
	saved, err := os.ReadFile(store)
	if err != nil && !os.IsNotExist(err) {
		r.t.Fatal(err)
	}
	if r.diskCfg != r.file {
		// A failed reload left its file: a start with it fails alike
		// (if the API's services still conflict with it).
		if bad := r.refusal(r.diskCfg); bad != "" {
			r.wantStartError(bad)
		}
		r.disk, r.diskCfg = r.text(r.file), r.file
	}
	if saved != nil && r.rng.IntN(2) == 0 {
		damaged, says := saved[:len(saved)/2], "not a version 1 file"
		switch r.rng.IntN(4) {
		case 1:
			damaged = []byte("garbage\x00")
		case 2:
			damaged = []byte(`{"version": 2, "services": []}`)
		case 3:
			damaged, says = []byte(`{"version": 1, "services": [{"name": "chat", "tenants": ["*"]}]}`), "entry 0"
		}
		if err := os.WriteFile(store, damaged, 0o600); err != nil {
			r.t.Fatal(err)
		}
		r.wantStartError(says)
		if err := os.WriteFile(store, saved, 0o600); err != nil {
			r.t.Fatal(err)
		}
	}
	if err := r.start(); err != nil {
		r.fatalf("restart: %v", err)
	}
	for _, s := range r.svcs {
		s.drained = nil // a drain lasts until a restart
	}
	r.full = true
}

// wantStartError starts a gateway that must refuse to start, saying says.
func (r *apiRand) wantStartError(says string) {
	r.t.Helper()
	gw, err := startRRGateway(r.t, "refused", r.disk, true, r.sources(), r.clk)
	if err == nil {
		gw.g.Close()
		r.fatalf("a gateway started where it must say %q", says)
	}
	if !strings.Contains(err.Error(), says) {
		r.fatalf("start: %v; want it to say %q", err, says)
	}
}

// --- the checks

func (r *apiRand) check() {
	r.t.Helper()
	for _, c := range []struct {
		name string
		run  func()
	}{{"list", r.checkList}, {"dns", r.checkDNS}, {"flows", r.checkFlows}, {"metrics", r.checkMetrics}} {
		start := time.Now()
		c.run()
		r.spent["check "+c.name] += time.Since(start)
	}
}

// checkList compares GET /v1/services with the model.
func (r *apiRand) checkList() {
	if diff := r.listDiff(nil); diff != "" {
		r.fatalf("%s", diff)
	}
}

// listDiff says how GET /v1/services differs from the model, "" when it
// does not: of the services match picks (nil: of all, and the names).
func (r *apiRand) listDiff(match func(*arSvc) bool) string {
	got, err := r.gw.services()
	if err != nil {
		r.fatalf("%v", err)
	}
	var names []string
	for _, as := range got {
		names = append(names, as.Name)
		s := r.svcs[as.Name]
		if s == nil || (match != nil && !match(s)) {
			continue
		}
		source := "file"
		if s.api {
			source = "api"
		}
		var ports, backends, wantPorts, wantBackends, states []string
		for _, p := range as.Ports {
			ports = append(ports, fmt.Sprintf("%s/%d>%d", p.Protocol, p.Port, p.Target))
		}
		for _, p := range s.ports {
			wantPorts = append(wantPorts, fmt.Sprintf("%s/%d>%d", p.proto, p.port, r.w.port(p.proto, p.target)))
		}
		for _, b := range as.Backends {
			backends = append(backends, fmt.Sprintf("%s/%s/%d/%s draining=%v healthy=%v", b.Address, b.Backend, b.Port, b.Origin, b.State == "draining", b.Healthy))
			states = append(states, fmt.Sprintf("%s: %s %q", b.Backend, b.State, b.LastError))
		}
		for _, b := range r.backendsOf(s) {
			d := s.drained[b.label()]
			wantBackends = append(wantBackends, fmt.Sprintf("%s/%s/%d/%s draining=%v healthy=%v", b.addr, b.label(), b.port, b.origin, d, !d))
		}
		slices.Sort(backends)
		slices.Sort(wantBackends)
		vip6 := ""
		if s.vip6.IsValid() {
			vip6 = s.vip6.String()
		}
		if as.Source != source || as.VIP != s.vip.String() || as.VIP6 != vip6 || !slices.Equal(as.Tenants, s.tenants) ||
			!slices.Equal(ports, wantPorts) || !slices.Equal(backends, wantBackends) {
			return fmt.Sprintf("GET /v1/services: %s is %s %s %q %v %v %v, want %s %s %q %v %v %v (backend states: %v)", as.Name,
				as.Source, as.VIP, as.VIP6, as.Tenants, ports, backends, source, s.vip, vip6, s.tenants, wantPorts, wantBackends, states)
		}
	}
	if want := slices.Sorted(maps.Keys(r.svcs)); match == nil && !slices.Equal(names, want) {
		return fmt.Sprintf("GET /v1/services lists %v, want %v", names, want)
	}
	return ""
}

// arBackend is a backend of the model: an address of rrWorld.addrs (port
// 0), or one of an SRV record (its port).
type arBackend struct {
	addr   netip.Addr
	port   uint16
	origin string // the SRV name; "" for an address
}

// label names the backend as the API and the metrics do.
func (b arBackend) label() string {
	if b.port == 0 {
		return b.addr.String()
	}
	return netip.AddrPortFrom(b.addr, b.port).String()
}

// backendsOf are the backends of s.
func (r *apiRand) backendsOf(s *arSvc) []arBackend {
	var out []arBackend
	for _, i := range s.backends {
		out = append(out, arBackend{addr: r.w.addrs[i]})
	}
	if s.srv >= 0 {
		for _, rec := range r.srv[s.srv] {
			out = append(out, arBackend{addr: r.w.addrs[rec.addr], port: r.w.tcpPorts[rec.port], origin: arSRV[s.srv].name})
		}
	}
	return out
}

// dsts are where a new flow to port p of s may go: its target on each
// backend given by address, the record's port on an SRV one; none that is
// drained.
func (r *apiRand) dsts(s *arSvc, p rrPort) []string {
	var out []string
	for _, b := range r.backendsOf(s) {
		if s.drained[b.label()] {
			continue // no new flow
		}
		port := b.port
		if port == 0 {
			port = r.w.port(p.proto, p.target)
		}
		out = append(out, netip.AddrPortFrom(b.addr, port).String())
	}
	return out
}

// checkDNS asks from a source of each tenant for every name ever seen,
// and from a source in no tenant.
func (r *apiRand) checkDNS() {
	// A query from a source in no tenant waits for an answer that must
	// not come: one such prefix at times.
	silent := r.rng.IntN(6) == 0
	// From one tenant's source, from each after a step that changed more.
	asked := r.rng.Perm(len(rrPrefixes))[0]
	for q := range rrPrefixes {
		tenant := r.file.tenantOf(q)
		src := rrSource(q, r.rng.IntN(2))
		if tenant == "" {
			if !silent {
				continue
			}
			silent = false
			if got := r.gw.dropped(src, netip.AddrPortFrom(rrGatewayAddr, 53)); got != "dropped" {
				r.fatalf("DNS from %s, in no tenant: %s", src, got)
			}
			continue
		}
		if !r.full && q != asked {
			continue
		}
		server := netip.MustParseAddrPort("10.100.0.1:53")
		if r.v6 && r.rng.IntN(2) == 0 {
			// An IPv6 client asks at the gateway's address in pool6.
			src, server = rrTwin6(src), netip.AddrPortFrom(rrGateway6(arPool6), 53)
		}
		c, err := r.gw.client.DialUDP(src, server)
		if err != nil {
			r.fatalf("DNS from %s: %v", src, err)
		}
		names := append(slices.Collect(maps.Keys(r.seen)), arFileNames...)
		for _, n := range slices.Compact(slices.Sorted(slices.Values(names))) {
			s := r.svcs[n]
			fq := n + ".ztna.internal."
			want := "NXDOMAIN []"
			if s != nil && s.allows(tenant) {
				want = fmt.Sprintf("NOERROR [%s\t30\tIN\tA\t%s]", fq, s.vip)
			}
			if got := r.ask(c, fq, "A"); got != want {
				c.Close()
				r.fatalf("DNS %s A from %s (%s): %s, want %s", fq, src, tenant, got, want)
			}
			// AAAA: the IPv6 VIP, none without a pool6.
			switch {
			case s == nil || !s.allows(tenant):
			case s.vip6.IsValid():
				want = fmt.Sprintf("NOERROR [%s\t30\tIN\tAAAA\t%s]", fq, s.vip6)
			default:
				want = "NOERROR []"
			}
			if got := r.ask(c, fq, "AAAA"); got != want {
				c.Close()
				r.fatalf("DNS %s AAAA from %s (%s): %s, want %s", fq, src, tenant, got, want)
			}
			if s == nil {
				continue
			}
			for _, vip := range []netip.Addr{s.vip, s.vip6} {
				if !vip.IsValid() {
					continue
				}
				want = "NXDOMAIN []"
				if s.allows(tenant) {
					want = fmt.Sprintf("NOERROR [%s\t30\tIN\tPTR\t%s]", rrReverse(vip), fq)
				}
				if got := r.ask(c, vip.String(), "PTR"); got != want {
					c.Close()
					r.fatalf("DNS PTR %s from %s (%s): %s, want %s", vip, src, tenant, got, want)
				}
			}
		}
		c.Close()
	}
}

func (r *apiRand) ask(c net.Conn, name, qtype string) string {
	rep, err := resolvertest.Exchange(c, name, qtype)
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("%s %v", rep.Rcode, rep.Answer)
}

// checkFlows opens a new flow of each protocol to each service from a
// source of a tenant it admits, and a TCP one from a tenant it does not.
func (r *apiRand) checkFlows() {
	names := slices.Sorted(maps.Keys(r.svcs))
	if !r.full && len(names) > 2 {
		// Two of them: every step that changes more checks them all.
		r.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
		names = names[:2]
	}
	r.full = false
	for _, n := range names {
		s := r.svcs[n]
		for _, tn := range r.file.tenants {
			src, vip := rrSource(tn.prefixes[0], r.rng.IntN(2)), s.vip
			if s.vip6.IsValid() && r.rng.IntN(2) == 0 {
				src, vip = rrTwin6(src), s.vip6 // an IPv6 client to the IPv6 VIP
			}
			for _, p := range s.ports {
				if !s.allows(tn.name) && p.proto == "udp" {
					continue
				}
				res, c := r.gw.open(p.proto, src, netip.AddrPortFrom(vip, p.port))
				if c != nil {
					c.Close()
				}
				ok := slices.Contains(r.dsts(s, p), res)
				if !s.allows(tn.name) || len(r.dsts(s, p)) == 0 {
					ok = res == "refused"
				}
				if !ok {
					r.fatalf("a %s flow from %s (%s) to %s %s: %s, want one of %v", p.proto, src, tn.name, n, netip.AddrPortFrom(vip, p.port), res, r.dsts(s, p))
				}
			}
		}
	}
	// Their flows are closed: none counts against the next step.
	deadline := time.Now().Add(5 * time.Second)
	for r.gw.g.flows.len() > 0 {
		if time.Now().After(deadline) {
			r.fatalf("%d flows left after closing every one", r.gw.g.flows.len())
		}
		r.gw.call("DELETE", "/v1/flows?all=true")
		time.Sleep(5 * time.Millisecond)
	}
}

// checkMetrics compares ztgate_vip_pool_used and ztgate_backend_healthy
// with the model.
func (r *apiRand) checkMetrics() {
	mfs, err := r.gw.g.m.reg.Gather()
	if err != nil {
		r.fatalf("%v", err)
	}
	used := -1.0
	var got, want []string
	for _, mf := range mfs {
		if mf.GetName() == "ztgate_vip_pool_used" {
			used = value(mf.GetMetric()[0])
		}
		if mf.GetName() != "ztgate_backend_healthy" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetValue())
			}
			got = append(got, fmt.Sprintf("%s=%v", strings.Join(labels, ","), value(m)))
		}
	}
	for n, s := range r.svcs {
		for _, b := range r.backendsOf(s) {
			want = append(want, fmt.Sprintf("%s,%s=%d", b.label(), n, map[bool]int{false: 1, true: 0}[s.drained[b.label()]]))
		}
	}
	// Live: a hold stops counting when its hold-down ends, with no change
	// of the table. IPv4 VIPs only.
	holds4 := slices.DeleteFunc(r.liveHolds(), func(h arHold) bool { return h.vip.Is6() })
	if want := float64(len(r.svcs) + len(holds4)); used != want {
		r.fatalf("ztgate_vip_pool_used = %v, want %v (%d services, holds %v)", used, want, len(r.svcs), holds4)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		r.fatalf("ztgate_backend_healthy: %v, want %v", got, want)
	}
}

func mapValues[V any](m map[string]V) []V {
	var out []V
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}

func ptrs[T any](xs []T) []*T {
	out := make([]*T, len(xs))
	for i := range xs {
		out[i] = &xs[i]
	}
	return out
}

// flap removes a service with a drained backend, from the file and puts
// it back in the next reload, or through the API (DELETE, then POST of
// it again), while a flow to it runs (drain_timeout is 700ms): it is the
// same service again, its VIPs, flow and drains with it (of the backends
// it keeps: at times a file service comes back with one more, or one
// fewer). A drain made while the flow runs covers its backend too: the
// flow goes on.
func (r *apiRand) flap() {
	drain := r.file.drainTimeout()
	s := testseed.Pick(r.rng, mapValues(r.svcs), func(s *arSvc) bool {
		tcp := s.port("tcp")
		return tcp != nil && len(r.dsts(s, *tcp)) > 0 && r.admitted(s).IsValid()
	})
	if s == nil || drain == 0 || r.diskCfg != r.file {
		return
	}
	tcp := *s.port("tcp")
	res, c := r.gw.open("tcp", r.admitted(s), netip.AddrPortFrom(s.vip, tcp.port))
	if c == nil {
		r.fatalf("flap: a flow to %s: %s", s.name, res)
	}
	defer c.Close()
	// Drain a backend (at times the flow's own), or the flow's own with a
	// deadline: the flow is closed at the deadline, the service's
	// removal and return between.
	bs := r.backendsOf(s)
	b := bs[r.rng.IntN(len(bs))]
	query, deadline := "", time.Duration(0)
	if r.rng.IntN(3) == 0 {
		ap, err := netip.ParseAddrPort(res)
		if err != nil {
			r.fatalf("flap: a flow to %s went to %q", s.name, res)
		}
		b = bs[slices.IndexFunc(bs, func(o arBackend) bool { return o.addr == ap.Addr() })]
		query, deadline = "?deadline=300ms", 300*time.Millisecond
	}
	drainedAt := time.Now()
	if code, out := r.call("POST", "/v1/services/"+s.name+"/backends/"+b.addr.String()+"/drain"+query, ""); code != http.StatusOK {
		r.fatalf("flap: drain %s of %s: %d %s", b.addr, s.name, code, out)
	}
	s.drained = maps.Clone(s.drained)
	if s.drained == nil {
		s.drained = map[string]bool{}
	}
	for _, o := range bs {
		if o.addr == b.addr {
			s.drained[o.label()] = true // every backend on the address
		}
	}
	if diff := r.listDiff(nil); diff != "" {
		r.fatalf("flap: after the drain: %s", diff)
	}
	removed := time.Now()
	var ns *arSvc
	if s.api {
		ns = r.flapAPI(s)
	} else {
		ns = r.flapFile(s)
	}
	if !r.flapCheck(s, ns, removed, drain) {
		return
	}
	if deadline > 0 {
		r.stats["(flapped with a drain deadline)"]++
		r.drained(s, c, "its backend's drain with a deadline", drainedAt, deadline)
		return
	}
	// The flow lives on: the service is the same one again.
	c.SetDeadline(time.Now().Add(2 * time.Second))
	rd := bufio.NewReader(c)
	if _, err := fmt.Fprintf(c, "still\n"); err != nil {
		r.fatalf("flap: the flow to %s, back: %v", s.name, err)
	}
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasSuffix(line, " still\n") {
		r.fatalf("flap: the flow to %s, back %v after it left: %q %v", s.name, time.Since(removed), line, err)
	}
}

// flapFile reloads a file without file service s, then one with it; it
// returns the model's service then.
func (r *apiRand) flapFile(s *arSvc) *arSvc {
	old := r.file
	without := old.clone()
	without.services = slices.DeleteFunc(without.services, func(x rrService) bool { return x.name == s.name })
	r.reloadTo(without)
	if r.svcs[s.name] != nil {
		r.fatalf("flap: %s is still in the model after a reload without it", s.name)
	}
	if diff := r.listDiff(nil); diff != "" {
		r.fatalf("flap: %s removed: %s", s.name, diff)
	}
	back := old.clone()
	fs := &back.services[slices.IndexFunc(back.services, func(x rrService) bool { return x.name == s.name })]
	switch r.rng.IntN(3) {
	case 0:
		if i := r.rng.IntN(len(r.w.addrs)); !slices.Contains(fs.backends, i) {
			fs.backends = append(fs.backends, i)
		}
	case 1:
		if len(fs.backends) > 1 {
			fs.backends = fs.backends[1:]
		}
	}
	r.reloadTo(back)
	return r.svcs[s.name]
}

// flapAPI deletes API service s and posts it again; it returns the model's
// service then.
func (r *apiRand) flapAPI(s *arSvc) *arSvc {
	if code, out := r.call("DELETE", "/v1/services/"+s.name, ""); code != http.StatusNoContent {
		r.fatalf("flap: DELETE %s: %d %s, want 204", s.name, code, out)
	}
	r.release(s)
	ns := *s
	ns.drained = nil
	if code, out := r.call("POST", "/v1/services", r.apiBody(&ns, "")); code != http.StatusCreated {
		r.fatalf("flap: POST %s again: %d %s, want 201", s.name, code, out)
	}
	r.take(&ns)
	return &ns
}

// flapCheck checks service ns, s back: its VIPs, and its drains when it
// came back before drain_timeout. false: it may have come back new.
func (r *apiRand) flapCheck(s, ns *arSvc, removed time.Time, drain time.Duration) bool {
	if ns == nil || ns.vip != s.vip || ns.vip6 != s.vip6 {
		r.fatalf("flap: %s back: %+v, want its VIPs %s %s", s.name, ns, s.vip, s.vip6)
	}
	if time.Since(removed) >= drain {
		// Its flow may have ended before it came back: then it is a
		// new service, without drains. Whichever GET says.
		r.stats["(flap slower than drain_timeout)"]++
		if r.listDiff(func(x *arSvc) bool { return x == ns }) == "" {
			return false
		}
	}
	ns.drained = r.keptDrains(ns, s.drained)
	if diff := r.listDiff(nil); diff != "" {
		r.fatalf("flap: %s back %v after it left, before drain_timeout %v, with its flow: %s", s.name, time.Since(removed), drain, diff)
	}
	r.stats[fmt.Sprintf("(drained service flapped with a flow; API %v)", s.api)]++
	return true
}
