package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testseed"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/resolver/resolvertest"
	"github.com/ztgate/ztgate/tunnel"
)

// TestHealthRandom drives the health checks and the balancing of a
// gateway with steps drawn from a logged seed (ZTGATE_HEALTH_SEED replays
// one): four loopback hosts, each an HTTP server and a UDP server, turn
// healthy, wrong (an HTTP status other than the one expected, a UDP reply
// without the expected bytes), slow (an answer after the check's
// timeout) or refusing (nothing listens); the checks' clock steps;
// reloads add, remove and reorder backends and change check types,
// intervals, timeouts, thresholds, expectations, balancing and keys that
// have nothing to do with health; the name of a discovered service
// changes in DNS (other addresses, a name that is gone, a resolver that
// fails); backends are drained (with and without a deadline) and
// undrained; new TCP flows, UDP flows and pings come from four clients,
// and some are held open. A model of what the gateway must do is checked
// after every step:
//   - each backend's state, runs, last error and time of its last change
//     follow from its check results and failed dials by the rise/fall
//     hysteresis, with the thresholds in force at each result; a backend
//     discovered for a running service is on probation until it is up;
//   - a reload keeps the backends (the same objects, their state, drains
//     and checks) of the addresses it keeps; a check restarts only when
//     the service's [service.health] changed; a backend added back is the
//     one that left only while flows are still bound to it;
//   - new flows go only to backends the model calls usable, by the
//     service's balancing (round_robin and least_conn exactly, in turn;
//     source_hash keeps a client on its backend while that backend stays
//     a candidate and no other one joins), a failed dial counts as a
//     failed check and the flow tries another backend; with none usable a
//     flow is refused at once (RST, ICMP unreachable, no echo reply);
//   - GET /v1/services, ztgate_backend_healthy, ztgate_dial_errors_total,
//     ztgate_health_checks_total and ztgate_flows_refused_total agree
//     with the model; the checks' timers are due when the model says;
//   - a backend's check runs exactly while the backend is in its service
//     with checks on: no prober outlives its backend, and at the end none
//     is left, nor any flow or goroutine.
func TestHealthRandom(t *testing.T) {
	seed := testseed.Get(t, healthSeedEnv)
	r := newHealthRand(t, seed)
	kinds := []struct {
		name   string
		weight int
		run    func()
	}{
		{"host", 15, r.setMode},
		{"clock", 23, r.tick},
		{"tcp", 12, func() { r.tcpFlow(r.svcs[hrWeb]) }},
		{"tcp", 6, func() { r.tcpFlow(r.svcs[hrDisc]) }},
		{"udp", 11, r.udpFlow},
		{"ping", 3, r.ping},
		{"close", 4, r.closeFlows},
		{"reload", 12, r.reload},
		{"drain", 7, r.drain},
		{"dns", 7, r.rediscover},
	}
	for r.step = 1; r.step <= hrSteps; r.step++ {
		if time.Since(r.began) > hrBudget {
			r.logf("stopping: the test's time budget of %v is spent", hrBudget)
			break
		}
		i := testseed.Weighted(r.rng, len(kinds), func(i int) int { return kinds[i].weight })
		start := time.Now()
		kinds[i].run()
		r.spent[kinds[i].name] += time.Since(start)
		start = time.Now()
		r.check()
		r.spent["check"] += time.Since(start)
	}
	r.finish()
}

const (
	healthSeedEnv = "ZTGATE_HEALTH_SEED"
	hrSteps       = 400
	hrBudget      = 60 * time.Second // steps stop here on a machine far too slow
	hrHosts       = 4                // 127.0.0.1 to .4
	hrWait        = 5 * time.Second  // for what a step waits for: an answer, a flow to end
	hrFast        = 3 * time.Second  // a refusal comes within it (at once; loose for a loaded -race run)
	// hrSlowReply is how late a slow host answers a UDP check: after
	// every timeout the checks have (hrTimeouts).
	hrSlowReply = 600 * time.Millisecond
	hrName      = "pool.corp.example" // the discovered service's backends
)

// The services: web (TCP 80 → the HTTP servers, checked by HTTP or TCP),
// game (UDP 7 → the UDP servers, checked by UDP), disc (as web, its
// backends discovered from hrName) and other (TCP 7, no checks, present
// or not: reloads of it touch nothing of the others).
const (
	hrWeb = iota
	hrGame
	hrDisc
)

var (
	hrNames = [...]string{"web", "game", "disc"}
	hrVIPs  = [...]netip.AddrPort{
		netip.MustParseAddrPort("10.100.0.50:80"),
		netip.MustParseAddrPort("10.100.0.51:7"),
		netip.MustParseAddrPort("10.100.0.52:80"),
	}
	hrClients = []netip.Addr{
		netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("198.51.100.11"),
		netip.MustParseAddr("198.51.100.12"), netip.MustParseAddr("198.51.100.13"),
	}
	hrIntervals = []time.Duration{time.Second, 2 * time.Second, 5 * time.Second} // on the checks' fake clock
	// hrTimeouts are real time (a check's timeout is): long enough for a
	// loopback answer on a loaded machine, short enough that slow hosts
	// do not eat the test's time.
	hrTimeouts = []time.Duration{150 * time.Millisecond, 250 * time.Millisecond}
	hrStatuses = []int{204, 301, 404, 503} // what a wrong HTTP host answers
	hrExpects  = []int{0, 200, 204}        // expect_status
)

// hrMode is how a host behaves.
type hrMode uint8

const (
	hrHealthy hrMode = iota
	hrWrong          // /healthz answers its wrong status; a UDP check gets "nope"
	hrSlow           // /healthz and a UDP check answer after the timeout
	hrRefuse         // nothing listens: connections refused, ICMP port unreachable
)

func (m hrMode) String() string {
	return [...]string{"healthy", "wrong", "slow", "refusing"}[m]
}

// hrHostSet is the four hosts: on each address an HTTP server (port tcp)
// whose /healthz follows the host's mode and whose other paths answer the
// address, and a UDP server (port udp) that answers a check ("ping…") as
// its mode says and anything else with the address, a space and the
// datagram.
type hrHostSet struct {
	t        *testing.T
	addrs    [hrHosts]netip.Addr
	tcp, udp uint16

	mu      sync.Mutex
	modes   [hrHosts]hrMode
	status  [hrHosts]int // the wrong status
	ls      [hrHosts]net.Listener
	ucs     [hrHosts]*net.UDPConn
	servers []*http.Server
	badHost []string       // Host headers of checks that name neither the host's address nor hrName
	wg      sync.WaitGroup // servers, UDP readers, slow answers
}

func startHRHosts(t *testing.T) *hrHostSet {
	t.Helper()
	h := &hrHostSet{t: t}
	for i := range h.addrs {
		h.addrs[i] = netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)})
	}
	for range 20 {
		if h.bindAll() {
			t.Cleanup(h.close)
			return h
		}
	}
	t.Fatal("no TCP and UDP port free on 127.0.0.1 to .4")
	return nil
}

// bindAll binds one TCP and one UDP port, the same on every address,
// below the kernel's ephemeral ports (32768 and up): a refusing host binds
// its ports again later, and an outgoing socket of another program must
// not have taken one meanwhile.
func (h *hrHostSet) bindAll() bool {
	h.tcp, h.udp = uint16(20000+rand.IntN(12000)), uint16(20000+rand.IntN(12000))
	var ls []net.Listener
	var ucs []*net.UDPConn
	undo := func() bool {
		for _, l := range ls {
			l.Close()
		}
		for _, c := range ucs {
			c.Close()
		}
		return false
	}
	for _, a := range h.addrs {
		l, err := net.Listen("tcp", netip.AddrPortFrom(a, h.tcp).String())
		if err != nil {
			return undo()
		}
		ls = append(ls, l)
		h.tcp = uint16(l.Addr().(*net.TCPAddr).Port)
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, h.udp)))
		if err != nil {
			return undo()
		}
		ucs = append(ucs, c)
		h.udp = uint16(c.LocalAddr().(*net.UDPAddr).Port)
	}
	for i := range h.addrs {
		h.serve(i, ls[i], ucs[i])
	}
	return true
}

// serve starts the servers of host i on l and c. The caller holds h.mu or
// is alone.
func (h *hrHostSet) serve(i int, l net.Listener, c *net.UDPConn) {
	h.ls[i], h.ucs[i] = l, c
	srv := &http.Server{Handler: h.handler(i), ReadHeaderTimeout: hrWait}
	h.servers = append(h.servers, srv)
	h.wg.Go(func() { srv.Serve(l) })
	h.wg.Go(func() { h.serveUDP(i, c) })
}

func (h *hrHostSet) handler(i int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			fmt.Fprint(w, h.addrs[i])
			return
		}
		// The Host of a check is the backend's host name, or its address
		// for one given by address.
		if host, _, err := net.SplitHostPort(r.Host); r.Host != hrName && (err != nil || host != h.addrs[i].String()) {
			h.mu.Lock()
			h.badHost = append(h.badHost, r.Host)
			h.mu.Unlock()
		}
		switch mode, status := h.mode(i); mode {
		case hrWrong:
			w.WriteHeader(status)
		case hrSlow:
			select { // until the check gives up
			case <-r.Context().Done():
			case <-time.After(hrWait):
			}
		default:
			fmt.Fprint(w, "ok")
		}
	})
}

func (h *hrHostSet) serveUDP(i int, c *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		p := string(buf[:n])
		if !strings.HasPrefix(p, "ping") {
			c.WriteToUDPAddrPort([]byte(h.addrs[i].String()+" "+p), from)
			continue
		}
		switch mode, _ := h.mode(i); mode {
		case hrHealthy:
			c.WriteToUDPAddrPort([]byte("pong "+h.addrs[i].String()), from)
		case hrWrong:
			c.WriteToUDPAddrPort([]byte("nope"), from)
		case hrSlow:
			h.wg.Go(func() {
				time.Sleep(hrSlowReply)
				c.WriteToUDPAddrPort([]byte("pong late"), from)
			})
		}
	}
}

func (h *hrHostSet) mode(i int) (hrMode, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.modes[i], h.status[i]
}

// setMode changes host i's mode; refusing closes its sockets, and leaving
// that mode binds them again, on the same ports.
func (h *hrHostSet) setMode(i int, m hrMode, status int) {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.modes[i]
	h.modes[i], h.status[i] = m, status
	switch {
	case m == hrRefuse && old != hrRefuse:
		h.ls[i].Close() // the connections it accepted go on
		h.ucs[i].Close()
	case m != hrRefuse && old == hrRefuse:
		var (
			l   net.Listener
			c   *net.UDPConn
			err error
		)
		for try := 0; try < 50; try++ { // another socket may hold a port for a moment
			if l == nil {
				l, err = net.Listen("tcp", netip.AddrPortFrom(h.addrs[i], h.tcp).String())
			}
			if c == nil && err == nil {
				c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(h.addrs[i], h.udp)))
			}
			if err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			h.t.Fatalf("host %v: bind its ports again: %v", h.addrs[i], err)
		}
		h.serve(i, l, c)
	}
}

func (h *hrHostSet) close() {
	h.mu.Lock()
	for i := range h.addrs {
		if h.modes[i] != hrRefuse {
			h.ls[i].Close()
			h.ucs[i].Close()
		}
	}
	for _, s := range h.servers {
		s.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// hrHealth is a service's [service.health] as the test writes it.
type hrHealth struct {
	typ          string // http, tcp, udp, none
	interval     time.Duration
	timeout      time.Duration
	rise, fall   int
	expectStatus int    // http
	expect       string // udp: "pong" or any reply
}

// norm drops what does not apply to the type, as the TOML leaves it out.
func (h hrHealth) norm() hrHealth {
	switch h.typ {
	case "none":
		return hrHealth{typ: "none"}
	case "http":
		h.expect = ""
	case "udp":
		h.expectStatus = 0
	default:
		h.expect, h.expectStatus = "", 0
	}
	return h
}

// hrSvcCfg is a service's configuration.
type hrSvcCfg struct {
	backends []int // host indexes in order (web, game)
	balance  string
	health   hrHealth
	idle     string // tcp_idle and udp_idle: not health's business
	maxFlows int    // nor this
}

type hrConfig struct {
	svcs  [3]hrSvcCfg
	other string // the other service's tenants, "" when it is absent
}

func (c hrConfig) clone() hrConfig {
	for i := range c.svcs {
		c.svcs[i].backends = slices.Clone(c.svcs[i].backends)
	}
	return c
}

// hrBackend is the model of one backend object of a service.
type hrBackend struct {
	addr       int      // host index
	gw         *backend // the gateway's object, once seen
	state      backendState
	okRun      int
	failRun    int
	lastErr    string
	lastChange time.Time
	draining   bool
	drainUntil time.Time
	drainDone  bool
	drainDue   time.Time // the armed deadline's timer; zero: none armed
	probation  bool
	dialErrs   int // its ztgate_dial_errors_total; -1: no series
	checking   bool
	due        time.Time // its next check
	flows      int       // live flows bound to it
}

func (b *hrBackend) usable() bool { return !b.draining && !b.probation && b.state != stateDown }

// record applies a check result (or a failed dial) as the documented
// state machine does.
func (b *hrBackend) record(ok bool, msg string, h hrHealth, now time.Time) {
	from := b.state
	if ok {
		b.okRun++
		b.failRun = 0
		if b.state != stateUp && b.okRun >= h.rise {
			b.state = stateUp
		}
		if b.state == stateUp {
			b.probation, b.lastErr = false, ""
		}
	} else {
		b.failRun++
		b.okRun = 0
		b.lastErr = msg
		if b.state != stateDown && b.failRun >= h.fall {
			b.state = stateDown
		}
	}
	if b.state != from {
		b.lastChange = now
	}
}

// hrService is the model of a service.
type hrService struct {
	i        int
	name     string
	vip      netip.AddrPort
	cfg      hrSvcCfg
	set      []*hrBackend
	departed map[int]*hrBackend // backends that left with flows bound, by host
	rr       uint64             // the picker's turn
	checks   [2]int             // ok, fail
	seen     map[*backend]bool  // every backend object it had
	hashed   map[hrHashKey]int  // source_hash: the host each client got among a set of candidates
}

type hrHashKey struct {
	client netip.Addr
	cands  uint8 // bit i: host i
}

func (s *hrService) at(addr int) *hrBackend {
	for _, b := range s.set {
		if b.addr == addr {
			return b
		}
	}
	return nil
}

func (s *hrService) byGW(gb *backend) *hrBackend {
	for _, b := range s.set {
		if b.gw == gb {
			return b
		}
	}
	return nil
}

// hrFlow is a live flow of the model.
type hrFlow struct {
	svc   *hrService
	b     *hrBackend
	proto string
	conn  net.Conn
}

type hrProbeResult struct {
	svc    string
	target netip.AddrPort
	err    error
	took   time.Duration
}

type hrDial struct {
	target netip.AddrPort
	err    error
}

// hrProber wraps the gateway's own prober of a check: it records each
// result and counts the probers alive.
type hrProber struct {
	inner prober
	svc   string
	r     *healthRand
}

func (p *hrProber) probe(ctx context.Context, target netip.AddrPort) error {
	start := time.Now()
	err := p.inner.probe(ctx, target)
	p.r.mu.Lock()
	p.r.results = append(p.r.results, hrProbeResult{p.svc, target, err, time.Since(start)})
	p.r.mu.Unlock()
	return err
}

func (p *hrProber) close() {
	p.inner.close()
	p.r.live[p.svc].Add(-1)
}

type healthRand struct {
	t      *testing.T
	rng    *rand.Rand
	step   int
	began  time.Time
	h      *fileHarness
	api    http.Handler
	clk    *fakeClock
	hosts  *hrHostSet
	dns    *resolvertest.Server
	pinger *recordingPinger
	logs   *syncLog

	cfg     hrConfig
	text    string // the configuration Reload reads
	svcs    [3]*hrService
	flows   []*hrFlow
	dnsUp   []int // the name's addresses; nil: NXDOMAIN
	dnsFail bool  // the resolver answers SERVFAIL
	refused map[[2]string]int
	port    uint16 // the last UDP client port
	// jitterAt is the checks' jitter (jitter); read by their goroutines,
	// written before they start.
	jitterAt int
	pings    uint16
	slow     int // checks a loaded machine made time out
	checks   int
	stats    map[string]int
	spent    map[string]time.Duration

	mu      sync.Mutex
	results []hrProbeResult
	dials   []hrDial
	live    map[string]*atomic.Int64 // probers alive per service
}

func newHealthRand(t *testing.T, seed uint64) *healthRand {
	// Registered first, so run last: after the gateway, the client stack,
	// the hosts and the resolver have stopped.
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	r := &healthRand{
		t:       t,
		rng:     rand.New(rand.NewPCG(seed, seed^0x4ea1)),
		began:   time.Now(),
		clk:     newFakeClock(),
		hosts:   startHRHosts(t),
		dns:     startDNS(t),
		pinger:  &recordingPinger{},
		logs:    &syncLog{},
		refused: map[[2]string]int{},
		port:    40000,
		stats:   map[string]int{},
		spent:   map[string]time.Duration{},
		live:    map[string]*atomic.Int64{},
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the gateway's last log lines:\n%s", lastLines(r.logs.String(), 40))
		}
	})
	for _, n := range hrNames {
		r.live[n] = &atomic.Int64{}
	}
	r.jitterAt = r.rng.IntN(3)
	r.dnsUp = r.randomHosts(1)
	r.setDNS()
	r.cfg = hrConfig{}
	for i := range r.cfg.svcs {
		c := &r.cfg.svcs[i]
		c.balance = randBalances[r.rng.IntN(len(randBalances))]
		c.health = r.randomHealth(i)
		c.idle = "24h"
		if i != hrDisc {
			c.backends = r.randomHosts(1)
		}
	}
	if r.rng.IntN(2) == 0 {
		r.cfg.other = `"acme"`
	}
	r.text = r.toml(r.cfg)
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.h = newFileHarnessWith(t, r.text, log, hrClients, func(g *Gateway) {
		// Reload reads the test's configuration, not the file, which never
		// changes: its watcher reloads nothing behind the test's back.
		g.readFile = func(string) ([]byte, error) {
			return []byte(strings.ReplaceAll(r.text, "STATE", filepath.Join(r.h.dir, "state"))), nil
		}
		g.dial = r.dial
		for _, n := range hrNames {
			st := g.stateOf(n)
			st.health.clock = r.clk
			st.health.randN = r.jitter
			st.health.newProber = r.newProber(n)
		}
	}, func(o *Options) {
		o.Now = r.clk.Now
		o.Pinger = r.pinger
	})
	r.api = r.h.gw.apiHandler("")
	now := r.clk.Now()
	for i, n := range hrNames {
		s := &hrService{i: i, name: n, vip: hrVIPs[i], cfg: r.cfg.svcs[i], departed: map[int]*hrBackend{},
			seen: map[*backend]bool{}, hashed: map[hrHashKey]int{}}
		addrs := s.cfg.backends
		if i == hrDisc {
			addrs = slices.Sorted(slices.Values(r.dnsUp)) // address order, not the answer's
		}
		for _, a := range addrs {
			b := &hrBackend{addr: a, dialErrs: -1}
			r.startCheck(s, b, now)
			s.set = append(s.set, b)
		}
		r.svcs[i] = s
	}
	r.logf("start: %s; %s answers %v; jitter %v", r.describe(r.cfg), hrName, r.dnsUp, []string{"least", "middle", "most"}[r.jitterAt])
	r.settle()
	r.check()
	return r
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (r *healthRand) logf(format string, args ...any) {
	r.t.Helper()
	r.t.Logf("step %d (%v, clock +%v): %s", r.step, time.Since(r.began).Round(time.Millisecond),
		r.clk.Now().Sub(newFakeClock().Now()), fmt.Sprintf(format, args...))
}

func (r *healthRand) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("step %d: %s", r.step, fmt.Sprintf(format, args...))
}

func (r *healthRand) newProber(svc string) func(catalog.Health, uint16, string, string) prober {
	return func(h catalog.Health, port uint16, host, zone string) prober {
		p := newProber(h, port, host, zone)
		if p == nil {
			return nil
		}
		r.live[svc].Add(1)
		return &hrProber{inner: p, svc: svc, r: r}
	}
}

// dial is the gateway's dialer of backends: it records each dial.
func (r *healthRand) dial(ctx context.Context, network, address string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	c, err := d.DialContext(ctx, network, address)
	r.mu.Lock()
	r.dials = append(r.dials, hrDial{netip.MustParseAddrPort(address), err})
	r.mu.Unlock()
	return c, err
}

func (r *healthRand) takeDials() []hrDial {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.dials
	r.dials = nil
	return d
}

func (r *healthRand) takeResults() []hrProbeResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := r.results
	r.results = nil
	return res
}

// randomHosts is a random nonempty list of at least min hosts, in random
// order.
func (r *healthRand) randomHosts(min int) []int {
	return r.rng.Perm(hrHosts)[:min+r.rng.IntN(hrHosts-min+1)]
}

func (r *healthRand) randomHealth(svc int) hrHealth {
	h := hrHealth{
		interval: hrIntervals[r.rng.IntN(len(hrIntervals))],
		timeout:  hrTimeouts[r.rng.IntN(len(hrTimeouts))],
		rise:     1 + r.rng.IntN(3),
		fall:     1 + r.rng.IntN(3),
	}
	switch {
	case r.rng.IntN(10) == 0:
		h.typ = "none"
	case svc == hrGame:
		h.typ = "udp"
	case r.rng.IntN(3) == 0:
		h.typ = "tcp"
	default:
		h.typ = "http"
	}
	h.expectStatus = hrExpects[r.rng.IntN(len(hrExpects))]
	if r.rng.IntN(2) == 0 {
		h.expect = "pong"
	}
	return h.norm()
}

func (r *healthRand) toml(c hrConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
[gateway]
state_dir = "STATE"
drain_timeout = "1h"
[api]
listen = "off"
[discovery]
nameservers = ["%s"]
min_ttl = "50ms"
max_ttl = "1s"
%s`, r.dns.Addr(), acmeTenant)
	for i, s := range c.svcs {
		port, proto := hrVIPs[i].Port(), "tcp"
		target := r.hosts.tcp
		if i == hrGame {
			proto, target = "udp", r.hosts.udp
		}
		backends := `"` + hrName + `"`
		if i != hrDisc {
			var q []string
			for _, a := range s.backends {
				q = append(q, strconv.Quote(r.hosts.addrs[a].String()))
			}
			backends = strings.Join(q, ", ")
		}
		fmt.Fprintf(&b, "[[service]]\nname = %q\ntenants = [\"acme\"]\nvip = %q\nbackends = [%s]\nbalance = %q\nmax_flows = %d\n",
			hrNames[i], hrVIPs[i].Addr(), backends, s.balance, s.maxFlows)
		fmt.Fprintf(&b, "  [[service.port]]\n  protocol = %q\n  port = %d\n  target = %d\n", proto, port, target)
		h := s.health
		fmt.Fprintf(&b, "  [service.health]\n  type = %q\n", h.typ)
		if h.typ != "none" {
			fmt.Fprintf(&b, "  interval = %q\n  timeout = %q\n  rise = %d\n  fall = %d\n", h.interval, h.timeout, h.rise, h.fall)
		}
		switch h.typ {
		case "http":
			b.WriteString("  path = \"/healthz\"\n")
			if h.expectStatus != 0 {
				fmt.Fprintf(&b, "  expect_status = %d\n", h.expectStatus)
			}
		case "udp":
			b.WriteString("  send = \"ping\"\n")
			if h.expect != "" {
				fmt.Fprintf(&b, "  expect = %q\n", h.expect)
			}
		}
		fmt.Fprintf(&b, "  [service.timeouts]\n  tcp_idle = %q\n  udp_idle = %q\n", s.idle, s.idle)
	}
	if c.other != "" {
		fmt.Fprintf(&b, "[[service]]\nname = \"other\"\ntenants = [%s]\nvip = \"10.100.0.53\"\nbackends = [\"127.0.0.1\"]\n"+
			"  [[service.port]]\n  protocol = \"tcp\"\n  port = 7\n  target = %d\n  [service.health]\n  type = \"none\"\n", c.other, r.hosts.tcp)
	}
	return b.String()
}

func (r *healthRand) describe(c hrConfig) string {
	var parts []string
	for i, s := range c.svcs {
		h := s.health
		parts = append(parts, fmt.Sprintf("%s{%v %s %s %v/%v rise %d fall %d expect %d%q idle %s max %d}",
			hrNames[i], s.backends, s.balance, h.typ, h.interval, h.timeout, h.rise, h.fall, h.expectStatus, h.expect, s.idle, s.maxFlows))
	}
	return strings.Join(parts, " ") + " other " + c.other
}

func (r *healthRand) setDNS() {
	if r.dnsFail {
		r.dns.SetServFail(hrName, true)
		return
	}
	r.dns.SetServFail(hrName, false)
	var addrs []netip.Addr
	for _, a := range r.dnsUp {
		addrs = append(addrs, r.hosts.addrs[a])
	}
	r.dns.SetHost(hrName, 0, addrs...) // none: NXDOMAIN
}

// startCheck starts b's check (or none) as syncChecks does with the
// service's health settings now.
func (r *healthRand) startCheck(s *hrService, b *hrBackend, now time.Time) {
	h := s.cfg.health
	if h.typ == "none" {
		b.checking = false
		if b.state != stateUnknown {
			b.lastChange = now
		}
		// Checks turned off forget the state and the last error: the
		// backend is as at a start (configuration.md, [service.health]).
		b.state, b.okRun, b.failRun, b.probation, b.lastErr = stateUnknown, 0, 0, false, ""
		return
	}
	b.checking, b.due = true, now.Add(r.firstDelay(h.interval))
}

// jitter is the checks' random source, randN: per seed, it always draws
// the least, the middle or the most, so that the model knows when each
// check comes.
func (r *healthRand) jitter(n int64) int64 {
	return [...]int64{0, n / 2, n - 1}[r.jitterAt]
}

// firstDelay is when a new check first fires: at a random point within
// the interval.
func (r *healthRand) firstDelay(interval time.Duration) time.Duration {
	d := time.Duration(r.jitter(int64(interval)))
	if d < 0 || d >= interval {
		r.fatalf("first check %v after its start, not within the interval %v", d, interval)
	}
	return d
}

// nextDelay is when a check fires after the last: the interval ± 10%.
func (r *healthRand) nextDelay(interval time.Duration) time.Duration {
	spread := interval / 10
	d := interval - spread + time.Duration(r.jitter(int64(2*spread+1)))
	if d < interval-spread || d > interval+spread {
		r.fatalf("next check %v after the last, not the interval %v ± 10%%", d, interval)
	}
	return d
}

// setMode changes a host's behaviour.
func (r *healthRand) setMode() {
	i := r.rng.IntN(hrHosts)
	m := hrMode([]int{0, 0, 0, 1, 1, 2, 3, 3}[r.rng.IntN(8)])
	status := hrStatuses[r.rng.IntN(len(hrStatuses))]
	r.hosts.setMode(i, m, status)
	r.logf("host %v: %s (status %d)", r.hosts.addrs[i], m, status)
	r.stats["host "+m.String()]++
}

// tick moves the checks' clock and follows each check that comes due.
func (r *healthRand) tick() {
	var d time.Duration
	switch x := r.rng.IntN(10); {
	case x < 3:
		d = time.Duration(r.rng.Int64N(int64(time.Second)))
	case x < 9:
		d = time.Duration(r.rng.Int64N(int64(4 * time.Second)))
	default:
		d = 8 * time.Second
	}
	slow := slices.ContainsFunc(r.hosts.addrs[:], func(a netip.Addr) bool {
		m, _ := r.hosts.mode(slices.Index(r.hosts.addrs[:], a))
		return m == hrSlow
	})
	if slow {
		// Each check of a slow host takes its timeout in real time: a slow
		// host is slow for one short step of the clock, then healthy.
		d = min(d, 2*time.Second)
	}
	r.logf("clock +%v", d)
	r.advance(d)
	r.stats["clock steps"]++
	for i := range r.hosts.addrs {
		if m, status := r.hosts.mode(i); m == hrSlow {
			r.hosts.setMode(i, hrHealthy, status)
			r.logf("host %v: healthy again", r.hosts.addrs[i])
		}
	}
}

// advance moves the clock by d, one due time after the other: at each,
// the timers due fire, and the checks that fired are waited for (their
// results reported, their next check armed) before the clock moves on.
func (r *healthRand) advance(d time.Duration) {
	end := r.clk.Now().Add(d)
	for {
		now := r.clk.Now()
		next, ok := r.nextDue()
		if got, armed := r.clk.nextDeadline(); armed != ok || ok && now.Add(got) != next {
			r.fatalf("the clock's next timer is due in %v (armed %v); the model's at %v (%v)", got, armed, next.Sub(now), ok)
		}
		if !ok || next.After(end) {
			r.clk.Advance(end.Sub(now))
			return
		}
		var fired []*hrBackend
		var drained []*hrBackend
		for _, s := range r.svcs {
			for _, b := range s.set {
				if b.checking && b.due.Equal(next) {
					fired = append(fired, b)
				}
				if !b.drainDue.IsZero() && b.drainDue.Equal(next) {
					drained = append(drained, b)
				}
			}
		}
		r.clk.Advance(next.Sub(now)) // fires the drains' deadlines synchronously
		for _, b := range drained {
			r.drainPassed(b)
		}
		r.clk.waitPending(r.t, r.pending())
		r.results2model(next, fired)
		if len(drained) > 0 {
			r.settleFlows()
		}
	}
}

// nextDue is when the model's next timer fires.
func (r *healthRand) nextDue() (time.Time, bool) {
	var next time.Time
	consider := func(at time.Time) {
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	for _, s := range r.svcs {
		for _, b := range s.set {
			if b.checking {
				consider(b.due)
			}
			if !b.drainDue.IsZero() {
				consider(b.drainDue)
			}
		}
	}
	return next, !next.IsZero()
}

// pending is how many timers the model has armed once every check waits
// for its next time.
func (r *healthRand) pending() int {
	n := 0
	for _, s := range r.svcs {
		for _, b := range s.set {
			if b.checking {
				n++
			}
			if !b.drainDue.IsZero() {
				n++
			}
		}
	}
	return n
}

// results2model takes the results of the checks fired at now: each as
// the host's mode says (or a timeout the machine caused), applied to the
// model; and the next check an interval later.
func (r *healthRand) results2model(now time.Time, fired []*hrBackend) {
	res := r.takeResults()
	if len(res) != len(fired) {
		r.fatalf("%d checks fired, %d results: %v", len(fired), len(res), res)
	}
	for _, s := range r.svcs {
		for _, b := range s.set {
			if !slices.Contains(fired, b) {
				continue
			}
			i := slices.IndexFunc(res, func(x hrProbeResult) bool { return x.svc == s.name && x.target.Addr() == r.hosts.addrs[b.addr] })
			if i < 0 {
				r.fatalf("no check result of %s %v: %v", s.name, r.hosts.addrs[b.addr], res)
			}
			x := res[i]
			h := s.cfg.health
			mode, status := r.hosts.mode(b.addr)
			want := r.predict(h, mode, status)
			got := x.err == nil
			r.checks++
			if got != want {
				if !want || x.took < h.timeout-5*time.Millisecond {
					r.fatalf("%s check of %v (%s, status %d, %s): %v after %v, want ok %v", s.name, x.target, mode, status, h.typ, x.err, x.took, want)
				}
				r.slow++ // a check of a host that answers, timed out: the machine is loaded
				r.logf("%s check of %v (%s) took %v, over its timeout: %v", s.name, x.target, mode, x.took, x.err)
			}
			msg := ""
			if x.err != nil {
				msg = x.err.Error()
				s.checks[1]++
			} else {
				s.checks[0]++
			}
			b.record(got, msg, h, now)
			b.due = now.Add(r.nextDelay(h.interval))
		}
	}
	if r.slow > 5+r.checks/20 {
		r.fatalf("%d of %d checks of answering hosts timed out: the machine is too slow for this test", r.slow, r.checks)
	}
}

// predict is what a check of a host in mode m says.
func (r *healthRand) predict(h hrHealth, m hrMode, status int) bool {
	switch h.typ {
	case "tcp":
		return m != hrRefuse // the kernel accepts what the server is slow to answer
	case "http":
		code := 200
		switch m {
		case hrSlow, hrRefuse:
			return false
		case hrWrong:
			code = status
		}
		if h.expectStatus != 0 {
			return code == h.expectStatus
		}
		return code >= 200 && code <= 299
	case "udp":
		return m == hrHealthy || m == hrWrong && h.expect == ""
	}
	r.fatalf("a check of type %s", h.typ)
	return false
}

// drainPassed applies a drain deadline that passed: the flows still bound
// to the backend are closed.
func (r *healthRand) drainPassed(b *hrBackend) {
	b.drainDue, b.drainDone = time.Time{}, true
	r.closeModelFlows(func(f *hrFlow) bool { return f.b == b })
	r.stats["drain deadlines passed"]++
}

func (r *healthRand) closeModelFlows(match func(*hrFlow) bool) int {
	n := 0
	r.flows = slices.DeleteFunc(r.flows, func(f *hrFlow) bool {
		if !match(f) {
			return false
		}
		f.conn.Close()
		f.b.flows--
		n++
		return true
	})
	return n
}

// candidates are the backends of s a new flow may go to: usable, not
// tried yet.
func (s *hrService) candidates(tried []*hrBackend) []*hrBackend {
	var out []*hrBackend
	for _, b := range s.set {
		if b.usable() && !slices.Contains(tried, b) {
			out = append(out, b)
		}
	}
	return out
}

// pickOf checks that got (nil: no backend) is what s's balancing picks
// for a new flow of client, other than tried, and takes the picker's turn
// as the gateway does.
func (r *healthRand) pickOf(s *hrService, client netip.Addr, tried []*hrBackend, got *hrBackend, what string) {
	r.t.Helper()
	cands := s.candidates(tried)
	name := func(b *hrBackend) string {
		if b == nil {
			return "none"
		}
		return r.hosts.addrs[b.addr].String()
	}
	if len(cands) == 0 || got == nil {
		if len(cands) != 0 || got != nil {
			r.fatalf("%s of %v to %s: went to %s; the usable backends not tried: %s", what, client, s.name, name(got), r.names(cands))
		}
		return
	}
	var want *hrBackend
	switch s.cfg.balance {
	case "round_robin":
		s.rr++
		want = cands[s.rr%uint64(len(cands))]
	case "least_conn":
		least := slices.MinFunc(cands, func(a, b *hrBackend) int { return a.flows - b.flows }).flows
		ties := slices.DeleteFunc(slices.Clone(cands), func(b *hrBackend) bool { return b.flows != least })
		s.rr++
		want = ties[s.rr%uint64(len(ties))]
	case "source_hash":
		if !slices.Contains(cands, got) {
			r.fatalf("%s of %v to %s: went to %s, not one of %s", what, client, s.name, name(got), r.names(cands))
		}
		var mask uint8
		for _, b := range cands {
			mask |= 1 << b.addr
		}
		// Rendezvous: a client's backend among some candidates stays its
		// backend among any fewer that keep it.
		for k, a := range s.hashed {
			if k.client == client && k.cands&mask == mask && mask&(1<<a) != 0 && a != got.addr {
				r.fatalf("%s of %v to %s: went to %s among %s; among %04b it went to %v", what, client, s.name, name(got), r.names(cands), k.cands, r.hosts.addrs[a])
			}
		}
		s.hashed[hrHashKey{client, mask}] = got.addr
		want = got
	}
	if got != want {
		r.fatalf("%s of %v to %s (%s, turn %d): went to %s, want %s among %s", what, client, s.name, s.cfg.balance, s.rr, name(got), name(want), r.names(cands))
	}
}

func (r *healthRand) names(bs []*hrBackend) string {
	var out []string
	for _, b := range bs {
		out = append(out, fmt.Sprintf("%v(%d flows)", r.hosts.addrs[b.addr], b.flows))
	}
	return "[" + strings.Join(out, " ") + "]"
}

func (r *healthRand) client() netip.Addr { return hrClients[r.rng.IntN(len(hrClients))] }

func (r *healthRand) refuse(proto, reason string) { r.refused[[2]string{proto, reason}]++ }

// tcpFlow opens a TCP flow to s: the dials the gateway made must be the
// model's picks, a refused dial counts as a failed check and the flow
// tries another backend; the flow reaches the backend of the last dial,
// or is refused at once. Some flows are held open.
func (r *healthRand) tcpFlow(s *hrService) {
	client := r.client()
	hold := r.rng.IntN(3) == 0
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), hrWait)
	defer cancel()
	c, err := r.h.client.DialTCP(ctx, client, s.vip)
	took := time.Since(start)
	dials := r.takeDials()
	var tried []*hrBackend
	now := r.clk.Now()
	for _, d := range dials {
		b := s.at(slices.Index(r.hosts.addrs[:], d.target.Addr()))
		if b == nil || d.target.Port() != r.hosts.tcp {
			r.fatalf("TCP flow of %v to %s dialled %v, not a backend of the service", client, s.name, d.target)
		}
		r.pickOf(s, client, tried, b, "TCP flow")
		tried = append(tried, b)
		mode, _ := r.hosts.mode(b.addr)
		if (d.err != nil) != (mode == hrRefuse) {
			r.fatalf("TCP flow of %v to %s: dial of %v (%s): %v", client, s.name, d.target, mode, d.err)
		}
		if d.err == nil {
			continue
		}
		b.dialErrs = max(b.dialErrs, 0) + 1
		msg := fmt.Sprintf("dial: %v", unwrapOp(d.err))
		if s.cfg.health.typ == "none" {
			b.lastErr = msg // nothing could bring it back up: only the error is kept
		} else {
			b.record(false, msg, s.cfg.health, now)
		}
	}
	accepted := len(dials) > 0 && dials[len(dials)-1].err == nil
	if !accepted && len(dials) < 3 {
		r.pickOf(s, client, tried, nil, "TCP flow") // no backend was left to try
	}
	r.logf("TCP flow of %v to %s (%s): dials %v, hold %v: %v", client, s.name, s.cfg.balance, dials, hold, err)
	if !accepted {
		if err == nil {
			c.Close()
			r.fatalf("TCP flow of %v to %s accepted without a backend", client, s.name)
		}
		if !strings.Contains(err.Error(), "refused") || took > hrFast {
			r.fatalf("TCP flow of %v to %s: %v after %v, want refused at once", client, s.name, err, took)
		}
		if len(dials) == 0 {
			r.refuse("tcp", refuseNoBackend)
			r.stats["TCP flows refused without a usable backend"]++
		} else {
			r.refuse("tcp", refuseDial)
			r.stats["TCP flows refused after failed dials"]++
		}
		return
	}
	if err != nil {
		r.fatalf("TCP flow of %v to %s: %v after its backend accepted", client, s.name, err)
	}
	b := tried[len(tried)-1]
	if who := r.get(c, hold); who != r.hosts.addrs[b.addr].String() {
		c.Close()
		r.fatalf("TCP flow of %v to %s answered by %q, want %v", client, s.name, who, r.hosts.addrs[b.addr])
	}
	r.stats[fmt.Sprintf("TCP flows (%d dials)", len(dials))]++
	if !hold {
		c.Close()
		r.settleFlows()
		return
	}
	r.flows = append(r.flows, &hrFlow{svc: s, b: b, proto: "tcp", conn: c})
	b.flows++
	r.settleFlows()
}

// get asks who answers on c; the backend closes the connection after
// its answer unless keep is set.
func (r *healthRand) get(c net.Conn, keep bool) string {
	r.t.Helper()
	req := "GET /who HTTP/1.1\r\nHost: svc\r\n"
	if !keep {
		req += "Connection: close\r\n"
	}
	c.SetDeadline(time.Now().Add(hrWait))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return "write: " + err.Error()
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "read: " + err.Error()
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "read: " + err.Error()
	}
	return string(body)
}

// udpFlow opens a UDP flow to game from a new client port: it is bound
// to the model's pick and answered by that host unless it refuses, or
// refused at once when no backend is usable.
func (r *healthRand) udpFlow() {
	s := r.svcs[hrGame]
	r.port++
	src := netip.AddrPortFrom(r.client(), r.port)
	c, err := r.h.client.DialUDPFrom(src, s.vip)
	if err != nil {
		r.fatalf("client socket %v: %v", src, err)
	}
	p := fmt.Sprintf("data %d", r.step)
	if _, err := c.Write([]byte(p)); err != nil {
		r.fatalf("%v: write: %v", src, err)
	}
	if len(s.candidates(nil)) == 0 {
		res, ok := readAnswer(c, time.Now().Add(hrFast))
		c.Close()
		if !ok || !res.refused {
			r.fatalf("UDP flow of %v to game without a usable backend: answer %q, refused %v; want ICMP unreachable at once", src, res.data, res.refused)
		}
		r.pickOf(s, src.Addr(), nil, nil, "UDP flow")
		r.refuse("udp", refuseNoBackend)
		r.logf("UDP flow of %v refused", src)
		r.stats["UDP flows refused"]++
		return
	}
	var f *flow
	waitFor(r.t, hrWait, "the UDP flow of "+src.String(), func() bool {
		fs := r.h.gw.flows.list(func(f *flow) bool { return f.client == src })
		if len(fs) == 1 {
			f = fs[0]
		}
		return f != nil
	})
	b := s.byGW(f.backend)
	if b == nil {
		r.fatalf("UDP flow of %v bound to %v, not a backend of game", src, f.target)
	}
	r.pickOf(s, src.Addr(), nil, b, "UDP flow")
	mode, _ := r.hosts.mode(b.addr)
	r.logf("UDP flow of %v to game (%s): %v (%s)", src, s.cfg.balance, r.hosts.addrs[b.addr], mode)
	r.flows = append(r.flows, &hrFlow{svc: s, b: b, proto: "udp", conn: c})
	b.flows++
	if mode == hrRefuse {
		r.stats["UDP flows to a refusing host"]++
		return
	}
	res, ok := readAnswer(c, time.Now().Add(hrWait))
	if want := r.hosts.addrs[b.addr].String() + " " + p; !ok || string(res.data) != want {
		r.fatalf("UDP flow of %v: answer %q (refused %v), want %q", src, res.data, res.refused, want)
	}
	r.stats["UDP flows"]++
}

// ping sends an echo request to web or disc: it goes to the model's pick,
// or gets no reply when no backend is usable.
func (r *healthRand) ping() {
	s := r.svcs[[]int{hrWeb, hrDisc}[r.rng.IntN(2)]]
	client := r.client()
	r.pings++
	before := len(r.pinger.sent())
	none := len(s.candidates(nil)) == 0
	wait := hrWait
	if none {
		wait = 100 * time.Millisecond // a reply, had one been sent, would be back by then
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := r.h.client.Ping(ctx, r.h.gw.lan, client, s.vip.Addr(), 0x4e, r.pings, []byte("hr"))
	sent := r.pinger.sent()[before:]
	r.logf("ping of %v to %s: %v, sent to %v", client, s.name, err, sent)
	if none {
		if err != netstacktest.ErrNoReply || len(sent) != 0 {
			r.fatalf("ping of %v to %s without a usable backend: %v, sent to %v; want no reply", client, s.name, err, sent)
		}
		r.pickOf(s, client, nil, nil, "ping")
		r.refuse("icmp", refuseNoBackend)
		r.stats["pings without a reply"]++
		return
	}
	if err != nil || len(sent) != 1 {
		r.fatalf("ping of %v to %s: %v, sent to %v", client, s.name, err, sent)
	}
	b := s.at(slices.Index(r.hosts.addrs[:], sent[0]))
	if b == nil {
		r.fatalf("ping of %v to %s went to %v, not a backend", client, s.name, sent[0])
	}
	r.pickOf(s, client, nil, b, "ping")
	r.stats["pings"]++
}

// closeFlows ends held flows: a TCP flow by its client, or game's UDP
// flows to one address through the API.
func (r *healthRand) closeFlows() {
	if len(r.flows) == 0 {
		return
	}
	f := r.flows[r.rng.IntN(len(r.flows))]
	if f.proto == "tcp" {
		r.logf("TCP flow to %s %v closed by its client", f.svc.name, r.hosts.addrs[f.b.addr])
		r.closeModelFlows(func(x *hrFlow) bool { return x == f })
		r.settleFlows()
		return
	}
	addr := r.hosts.addrs[f.b.addr]
	var got struct{ Closed int }
	if code := call(r.t, r.api, "DELETE", "/v1/flows?service=game&backend="+addr.String(), "", &got); code != http.StatusOK {
		r.fatalf("DELETE /v1/flows: %d", code)
	}
	n := r.closeModelFlows(func(x *hrFlow) bool { return x.svc == f.svc && x.b.addr == f.b.addr })
	r.logf("game's flows to %v closed through the API: %d", addr, got.Closed)
	if got.Closed != n {
		r.fatalf("DELETE /v1/flows closed %d of game's flows to %v, want %d", got.Closed, addr, n)
	}
	r.settleFlows()
}

// settleFlows waits until the gateway's flows are the model's, each bound
// to its backend object.
func (r *healthRand) settleFlows() {
	r.t.Helper()
	want := map[*backend]int{}
	for _, f := range r.flows {
		if f.b.gw != nil {
			want[f.b.gw]++
		}
	}
	deadline := time.Now().Add(hrWait)
	for {
		got := map[*backend]int{}
		for _, f := range r.h.gw.flows.list(nil) {
			got[f.backend]++
		}
		active := true
		for gb, n := range want {
			active = active && gb.active.Load() == int64(n)
		}
		if fmt.Sprint(got) == fmt.Sprint(want) && active && len(got) == len(want) {
			return
		}
		if time.Now().After(deadline) {
			r.fatalf("the gateway's flows by backend: %v, want %v", got, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// reload changes the configuration one or two ways and reloads it.
func (r *healthRand) reload() { r.reloadOf(3) }

// reloadOf reloads a configuration changed in the first n services (and
// other); with n < 3, disc's settings stay, and its discovery may be
// changing meanwhile: the caller waits for that, then for the checks.
func (r *healthRand) reloadOf(n int) {
	next := r.cfg.clone()
	var what []string
	for range 1 + r.rng.IntN(2) {
		what = append(what, r.mutate(&next, n))
	}
	r.text = r.toml(next)
	if _, err := r.h.gw.Reload(); err != nil {
		r.fatalf("reload (%s): %v", strings.Join(what, ", "), err)
	}
	r.logf("reload: %s: %s", strings.Join(what, ", "), r.describe(next))
	r.cfg = next
	now := r.clk.Now()
	for i, s := range r.svcs {
		old := s.cfg.health
		s.cfg = next.svcs[i]
		addrs := next.svcs[i].backends
		if i == hrDisc {
			addrs = r.addrsOf(s)
		}
		r.setBackends(s, addrs, false, old != s.cfg.health, now)
	}
	r.stats["reloads"]++
	if n == 3 {
		r.settle() // new checks arm their first timer as they start
	}
}

func (r *healthRand) addrsOf(s *hrService) []int {
	var out []int
	for _, b := range s.set {
		out = append(out, b.addr)
	}
	return out
}

// mutate makes one change to c and says what it was.
func (r *healthRand) mutate(c *hrConfig, n int) string {
	i := r.rng.IntN(n)
	s := &c.svcs[i]
	h := &s.health
	name := hrNames[i]
	switch r.rng.IntN(10) {
	case 0, 1:
		if i == hrDisc { // its backends come from DNS
			i = r.rng.IntN(2)
			s, name = &c.svcs[i], hrNames[i]
		}
		switch x := r.rng.IntN(3); {
		case x == 0 && len(s.backends) > 1:
			j := r.rng.IntN(len(s.backends))
			s.backends = slices.Delete(s.backends, j, j+1)
		case x == 1 && len(s.backends) < hrHosts:
			var free []int
			for a := range hrHosts {
				if !slices.Contains(s.backends, a) {
					free = append(free, a)
				}
			}
			s.backends = slices.Insert(s.backends, r.rng.IntN(len(s.backends)+1), free[r.rng.IntN(len(free))])
		default:
			r.rng.Shuffle(len(s.backends), func(a, b int) { s.backends[a], s.backends[b] = s.backends[b], s.backends[a] })
		}
		return fmt.Sprintf("%s backends %v", name, s.backends)
	case 2:
		s.balance = randBalances[r.rng.IntN(len(randBalances))]
		return name + " balance " + s.balance
	case 3:
		n := r.randomHealth(i)
		if h.typ != "none" && n.typ != "none" { // the type alone changes
			n.interval, n.timeout, n.rise, n.fall = h.interval, h.timeout, h.rise, h.fall
		}
		*h = n
		return name + " health type " + h.typ
	case 4:
		h.interval = hrIntervals[r.rng.IntN(len(hrIntervals))]
		h.timeout = hrTimeouts[r.rng.IntN(len(hrTimeouts))]
		*h = h.norm()
		return fmt.Sprintf("%s interval %v timeout %v", name, h.interval, h.timeout)
	case 5, 6:
		h.rise, h.fall = 1+r.rng.IntN(3), 1+r.rng.IntN(3)
		*h = h.norm()
		return fmt.Sprintf("%s rise %d fall %d", name, h.rise, h.fall)
	case 7:
		h.expectStatus = hrExpects[r.rng.IntN(len(hrExpects))]
		h.expect = []string{"", "pong"}[r.rng.IntN(2)]
		*h = h.norm()
		return fmt.Sprintf("%s expect %d %q", name, h.expectStatus, h.expect)
	case 8:
		s.idle = []string{"24h", "48h"}[r.rng.IntN(2)]
		s.maxFlows = []int{0, 500}[r.rng.IntN(2)]
		return fmt.Sprintf("%s idle %s max_flows %d", name, s.idle, s.maxFlows)
	default:
		c.other = []string{"", `"acme"`, `"*"`}[r.rng.IntN(3)]
		return "other " + c.other
	}
}

// setBackends makes addrs the backends of s, as a reload (probation
// false) or discovery (probation when checked) does: kept addresses keep
// their backend; a backend that left is taken up again while flows are
// bound to it; others are new. Then the checks are synced as syncChecks
// does: a new or returned backend gets a new check, a kept one a new one
// only when the health settings changed.
func (r *healthRand) setBackends(s *hrService, addrs []int, probation, healthChanged bool, now time.Time) {
	var next []*hrBackend
	for _, a := range addrs {
		b := s.at(a)
		if b != nil && !healthChanged {
			next = append(next, b)
			continue
		}
		if b == nil {
			b = s.departed[a]
			delete(s.departed, a)
			if b == nil || b.flows == 0 {
				b = &hrBackend{addr: a, probation: probation, dialErrs: -1}
			}
		}
		if b.draining && !b.drainUntil.IsZero() && !b.drainDone && b.drainDue.IsZero() {
			b.drainDue = b.drainUntil
			if b.drainDue.Before(now) {
				b.drainDue = now
			}
		}
		r.startCheck(s, b, now)
		next = append(next, b)
	}
	for _, b := range s.set {
		if slices.Contains(next, b) {
			continue
		}
		b.checking, b.drainDue, b.dialErrs = false, time.Time{}, -1
		if b.flows > 0 {
			s.departed[b.addr] = b
		}
	}
	s.set = next
}

// drain drains or undrains a backend of a service through the API, by
// address (one not in the service: 404) or, for disc, by its name.
func (r *healthRand) drain() {
	s := r.svcs[r.rng.IntN(3)]
	a := r.rng.IntN(hrHosts)
	name := r.hosts.addrs[a].String()
	targets := []*hrBackend{s.at(a)}
	if s.i == hrDisc && r.rng.IntN(3) == 0 {
		name, targets = hrName, s.set
	}
	if len(targets) == 0 || targets[0] == nil {
		code, _ := serveAPI(r.t, r.api, "POST", "/v1/services/"+s.name+"/backends/"+name+"/drain", "", "")
		if code != http.StatusNotFound {
			r.fatalf("drain of %s, not a backend of %s: %d, want 404", name, s.name, code)
		}
		return
	}
	now := r.clk.Now()
	if r.rng.IntN(3) == 0 {
		if code := call(r.t, r.api, "POST", "/v1/services/"+s.name+"/backends/"+name+"/undrain", "", nil); code != http.StatusOK {
			r.fatalf("undrain of %s %s: %d", s.name, name, code)
		}
		for _, b := range targets {
			b.draining, b.drainUntil, b.drainDone, b.drainDue = false, time.Time{}, false, time.Time{}
		}
		r.logf("undrain %s %s", s.name, name)
		r.stats["undrains"]++
		return
	}
	var deadline time.Duration
	body := ""
	if r.rng.IntN(2) == 0 {
		deadline = time.Duration(1+r.rng.IntN(15)) * time.Second
		body = fmt.Sprintf(`{"deadline": %q}`, deadline)
	}
	if code := call(r.t, r.api, "POST", "/v1/services/"+s.name+"/backends/"+name+"/drain", body, nil); code != http.StatusOK {
		r.fatalf("drain of %s %s: %d", s.name, name, code)
	}
	for _, b := range targets {
		b.draining, b.drainDone, b.drainUntil, b.drainDue = true, false, time.Time{}, time.Time{}
		if deadline > 0 {
			b.drainUntil, b.drainDue = now.Add(deadline), now.Add(deadline)
		}
	}
	r.logf("drain %s %s, deadline %v", s.name, name, deadline)
	r.stats["drains"]++
}

// rediscover changes what the resolver says of the discovered name and
// waits until the gateway has applied it.
func (r *healthRand) rediscover() {
	s := r.svcs[hrDisc]
	before := r.dns.Queries()
	switch x := r.rng.IntN(10); {
	case x < 7:
		r.dnsUp, r.dnsFail = r.randomHosts(1), false
	case x < 8:
		r.dnsUp, r.dnsFail = nil, false
	default:
		r.dnsFail = true
	}
	r.setDNS()
	r.logf("%s: answers %v, fails %v", hrName, r.dnsUp, r.dnsFail)
	if r.rng.IntN(3) == 0 {
		// A reload races the watcher: it may build disc's set from the
		// answer the watcher stored before the watcher applies it. New
		// addresses are on probation either way.
		r.reloadOf(2)
	}
	// A name's addresses are in address order, whatever the answer's:
	// resolvers rotate their answers.
	want := slices.Sorted(slices.Values(r.dnsUp))
	if r.dnsFail {
		want = r.addrsOf(s) // a failed lookup keeps the addresses
	}
	// Seen once two more lookups (each of A and AAAA) were answered, and
	// the set is what they said.
	waitFor(r.t, hrWait, "two more lookups", func() bool { return r.dns.Queries() >= before+4 })
	var got []int
	deadline := time.Now().Add(hrWait)
	for got = r.discSet(); !slices.Equal(got, want); got = r.discSet() {
		if time.Now().After(deadline) {
			r.fatalf("disc's backends are %v, want %v", got, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !slices.Equal(want, r.addrsOf(s)) {
		r.setBackends(s, want, s.cfg.health.typ != "none", false, r.clk.Now())
		r.stats["discovery changes"]++
	}
	r.settle()
}

// discSet is the hosts of disc's backends, in the set's order.
func (r *healthRand) discSet() []int {
	var got []int
	for _, b := range r.h.gw.stateOf("disc").backends.Load().list {
		got = append(got, slices.Index(r.hosts.addrs[:], b.addr))
	}
	return got
}

// settle waits until what the gateway does after a change of a service's
// backends (starting and stopping checks, drain deadlines) is done.
func (r *healthRand) settle() {
	r.t.Helper()
	waitFor(r.t, hrWait, "the checks to be synced", func() bool {
		if r.clk.pending() != r.pending() {
			return false
		}
		for _, s := range r.svcs {
			if r.live[s.name].Load() != int64(r.checking(s)) || r.gauges(s) != len(s.set) {
				return false
			}
		}
		return true
	})
}

func (r *healthRand) checking(s *hrService) int {
	n := 0
	for _, b := range s.set {
		if b.checking {
			n++
		}
	}
	return n
}

// gauges counts the ztgate_backend_healthy series of s.
func (r *healthRand) gauges(s *hrService) int {
	return len(series(r.gather(), "ztgate_backend_healthy", "service", s.name))
}

func (r *healthRand) gather() []*dto.MetricFamily {
	mfs, err := r.h.gw.m.reg.Gather()
	if err != nil {
		r.fatalf("gather: %v", err)
	}
	return mfs
}

// series returns the values of a metric's series whose label key is val,
// by their other labels' values.
func series(mfs []*dto.MetricFamily, name, key, val string) map[string]float64 {
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match, other := false, []string{}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == key {
					match = lp.GetValue() == val
				} else {
					other = append(other, lp.GetValue())
				}
			}
			if match {
				out[strings.Join(other, ",")] = value(m)
			}
		}
	}
	return out
}

// value is a metric's value: a gauge's or counter's, a histogram's count
// of samples; -1 for another kind.
func value(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return -1
}

// check compares the gateway with the model.
func (r *healthRand) check() {
	r.t.Helper()
	var list struct {
		Services []apiService `json:"services"`
	}
	call(r.t, r.api, "GET", "/v1/services", "", &list)
	names := []string{}
	for _, as := range list.Services {
		names = append(names, as.Name)
	}
	wantNames := []string{"disc", "game", "web"}
	if r.cfg.other != "" {
		wantNames = []string{"disc", "game", "other", "web"}
	}
	if !slices.Equal(names, wantNames) {
		r.fatalf("GET /v1/services lists %v, want %v", names, wantNames)
	}
	mfs := r.gather()
	infos := r.h.gw.serviceInfos() // what a relay is told
	for _, s := range r.svcs {
		r.checkService(s, list.Services[slices.Index(names, s.name)], mfs)
		i := slices.IndexFunc(infos, func(si tunnel.ServiceInfo) bool { return si.Name == s.name })
		if want := len(s.candidates(nil)) > 0; i < 0 || infos[i].Healthy != want {
			r.fatalf("the relay is told %s is healthy: %+v, want %v", s.name, infos, want)
		}
	}
	for _, proto := range []string{"tcp", "udp", "icmp"} {
		refused := series(mfs, "ztgate_flows_refused_total", "protocol", proto)
		for _, reason := range []string{refuseNoBackend, refuseDial} {
			if got, want := refused[reason], r.refused[[2]string{proto, reason}]; got != float64(want) {
				r.fatalf("ztgate_flows_refused_total{protocol=%q, reason=%q} %v, want %d", proto, reason, got, want)
			}
		}
	}
	if n := r.clk.pending(); n != r.pending() {
		r.fatalf("%d timers armed, want %d", n, r.pending())
	}
	r.hosts.mu.Lock()
	bad := r.hosts.badHost
	r.hosts.mu.Unlock()
	if len(bad) > 0 {
		r.fatalf("HTTP checks sent the Host headers %q", bad)
	}
	var due, wantDue []time.Time
	r.clk.mu.Lock()
	for _, tm := range r.clk.timers {
		if tm.active {
			due = append(due, tm.when)
		}
	}
	r.clk.mu.Unlock()
	for _, s := range r.svcs {
		for _, b := range s.set {
			if b.checking {
				wantDue = append(wantDue, b.due)
			}
			if !b.drainDue.IsZero() {
				wantDue = append(wantDue, b.drainDue)
			}
		}
	}
	slices.SortFunc(due, time.Time.Compare)
	slices.SortFunc(wantDue, time.Time.Compare)
	if !slices.EqualFunc(due, wantDue, time.Time.Equal) {
		r.fatalf("timers due at %v, want %v", due, wantDue)
	}
}

func (r *healthRand) checkService(s *hrService, as apiService, mfs []*dto.MetricFamily) {
	r.t.Helper()
	st := r.h.gw.stateOf(s.name)
	set := st.backends.Load().list
	if len(set) != len(s.set) {
		r.fatalf("%s has %d backends, want %d (%v)", s.name, len(set), len(s.set), r.addrsOf(s))
	}
	healthy := false
	gauges := series(mfs, "ztgate_backend_healthy", "service", s.name)
	dialErrs := series(mfs, "ztgate_dial_errors_total", "service", s.name)
	wantGauges := map[string]float64{}
	wantDialErrs := map[string]float64{}
	st.health.mu.Lock()
	entries := len(st.health.entries)
	st.health.mu.Unlock()
	if entries != len(s.set) {
		r.fatalf("%s: %d health entries, want one per backend (%d)", s.name, entries, len(s.set))
	}
	if len(as.Backends) != len(s.set) {
		r.fatalf("GET /v1/services: %s has %d backends, want %d", s.name, len(as.Backends), len(s.set))
	}
	for i, b := range s.set {
		gb := set[i]
		addr := r.hosts.addrs[b.addr]
		if gb.addr != addr {
			var gs []netip.Addr
			for _, x := range set {
				gs = append(gs, x.addr)
			}
			r.fatalf("%s backend %d is %v, want %v (set %v, gateway %v)", s.name, i, gb.addr, addr, r.addrsOf(s), gs)
		}
		switch {
		case b.gw == nil && s.seen[gb]:
			r.fatalf("%s %v: the backend that left came back; want a new one (its flows had ended)", s.name, addr)
		case b.gw == nil:
			b.gw = gb
			s.seen[gb] = true
		case b.gw != gb:
			r.fatalf("%s %v: a new backend; want the one it had (kept, or back while flows are bound to it)", s.name, addr)
		}
		r.checkBackend(s, b, gb)
		st.health.mu.Lock()
		e := st.health.entries[gb]
		running := e != nil && e.cancel != nil
		armed := e != nil && e.drain != nil
		st.health.mu.Unlock()
		if running != b.checking || armed != !b.drainDue.IsZero() {
			r.fatalf("%s %v: check running %v, drain deadline armed %v; want %v, %v", s.name, addr, running, armed, b.checking, !b.drainDue.IsZero())
		}
		ab := as.Backends[i]
		state := b.state.String()
		if b.draining {
			state = "draining"
		}
		if ab.Address != addr.String() || ab.Healthy != b.usable() || ab.State != state || ab.LastError != b.lastErr ||
			!ab.LastChange.Equal(b.lastChange) || ab.ActiveFlows != int64(b.flows) || !ab.DrainUntil.Equal(b.drainUntil) {
			r.fatalf("GET /v1/services: %s backend %+v; want healthy %v, state %s, last error %q, last change %v, %d flows, drain until %v",
				s.name, ab, b.usable(), state, b.lastErr, b.lastChange, b.flows, b.drainUntil)
		}
		healthy = healthy || b.usable()
		wantGauges[addr.String()] = map[bool]float64{false: 0, true: 1}[b.usable()]
		if b.dialErrs >= 0 {
			wantDialErrs[addr.String()] = float64(b.dialErrs)
		}
	}
	if as.Healthy != healthy {
		r.fatalf("GET /v1/services: %s healthy %v, want %v", s.name, as.Healthy, healthy)
	}
	if fmt.Sprint(gauges) != fmt.Sprint(wantGauges) {
		r.fatalf("ztgate_backend_healthy of %s: %v, want %v", s.name, gauges, wantGauges)
	}
	if fmt.Sprint(dialErrs) != fmt.Sprint(wantDialErrs) {
		r.fatalf("ztgate_dial_errors_total of %s: %v, want %v", s.name, dialErrs, wantDialErrs)
	}
	checks := series(mfs, "ztgate_health_checks_total", "service", s.name)
	for i, res := range []string{"ok", "fail"} {
		if got, ok := checks[res]; ok && got != float64(s.checks[i]) || !ok && s.checks[i] != 0 {
			r.fatalf("ztgate_health_checks_total{service=%q, result=%q}: %v, want %d", s.name, res, checks, s.checks[i])
		}
	}
	if got, want := series(mfs, "ztgate_health_check_duration_seconds", "service", s.name)[""], s.checks[0]+s.checks[1]; got != float64(want) && (want > 0 || got != 0) {
		r.fatalf("ztgate_health_check_duration_seconds{service=%q} counts %v checks, want %d", s.name, got, want)
	}
	if n := r.live[s.name].Load(); n != int64(r.checking(s)) {
		r.fatalf("%s: %d probers alive, want %d (one per checked backend)", s.name, n, r.checking(s))
	}
}

// checkBackend compares a backend's state with the model's.
func (r *healthRand) checkBackend(s *hrService, b *hrBackend, gb *backend) {
	r.t.Helper()
	gb.mu.Lock()
	got := fmt.Sprintf("state %s ok %d fail %d err %q changed %v draining %v until %v done %v probation %v untracked %v",
		gb.state, gb.okRun, gb.failRun, gb.lastErr, gb.lastChange.Format(time.StampMilli), gb.draining,
		gb.drainUntil.Format(time.StampMilli), gb.drainDone, gb.probation, gb.untracked)
	gb.mu.Unlock()
	want := fmt.Sprintf("state %s ok %d fail %d err %q changed %v draining %v until %v done %v probation %v untracked %v",
		b.state, b.okRun, b.failRun, b.lastErr, b.lastChange.Format(time.StampMilli), b.draining,
		b.drainUntil.Format(time.StampMilli), b.drainDone, b.probation, false)
	if got != want {
		r.fatalf("%s %v: %s\nwant %s", s.name, r.hosts.addrs[b.addr], got, want)
	}
	if n := gb.active.Load(); n != int64(b.flows) {
		r.fatalf("%s %v: %d flows, want %d", s.name, r.hosts.addrs[b.addr], n, b.flows)
	}
}

// finish closes the flows and the gateway: no prober, flow or goroutine
// may be left (the goroutines are checked last, by the cleanup).
func (r *healthRand) finish() {
	r.closeModelFlows(func(*hrFlow) bool { return true })
	if code := call(r.t, r.api, "DELETE", "/v1/flows?all=true", "", nil); code != http.StatusOK {
		r.fatalf("DELETE /v1/flows: %d", code)
	}
	r.settleFlows()
	r.h.gw.Close()
	for _, n := range hrNames {
		if v := r.live[n].Load(); v != 0 {
			r.t.Errorf("%s: %d probers alive after Close", n, v)
		}
	}
	if n := r.h.gw.flows.len(); n != 0 {
		r.t.Errorf("%d flows after Close", n)
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.stats)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, r.stats[k]))
	}
	r.t.Logf("time spent: %v", r.spent)
	r.t.Logf("%d steps in %v: %d checks (%d of them timed out on a loaded machine); %s", r.step-1,
		time.Since(r.began).Round(time.Millisecond), r.checks, r.slow, strings.Join(parts, ", "))
}
