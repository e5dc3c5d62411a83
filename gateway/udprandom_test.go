package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testseed"

	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/internal/monoclock"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// TestUDPFlowsAcrossReloadsRandom interleaves at random, from a logged
// seed (ZTGATE_UDP_SEED makes the same choices again, as far as the
// machine's timing, which decides when drains end flows, lets it): new
// UDP flows of two tenants' clients to services they may or may not
// reach, datagrams of every size on the flows open, client sockets closed
// with an answer on its way (the client reports its port unreachable, and
// may open it again), reloads that add and remove services and change
// their backends, tenants, ports, balancing, idle timeouts and echo, some
// of them raced by new flows, steps of the flows' clock, and pings to the
// VIPs. The backends are UDP echoes that put their own tag before each
// answer. A model of what the gateway must do checks every answer and
// the gateway's flow table:
//   - a flow's answers come from the backend it was bound to at creation,
//     whatever reloads did since, and reach only the client that opened
//     it, each datagram once and intact;
//   - a new flow, or a ping, of a tenant the running configuration does
//     not let reach the service is refused (ICMP unreachable), with no
//     flow made;
//   - the flows of a removed service or backend go on until
//     drain_timeout, unless it came back first, and end then; a flow
//     ends once its clock says it was idle for its timeout, not before;
//   - new flows racing a reload are refused, or bound, as the
//     configuration before or the one after says;
//   - at the end, with every service removed, no flow, backend socket,
//     service state or goroutine is left.
func TestUDPFlowsAcrossReloadsRandom(t *testing.T) {
	seed := testseed.Get(t, "ZTGATE_UDP_SEED")
	r := newRandUDP(t, seed)
	for r.step = 1; r.step <= randSteps; r.step++ {
		switch x := r.rng.IntN(100); {
		case x < 30:
			r.newFlow()
		case x < 58:
			r.useFlow()
		case x < 62:
			r.abandon()
		case x < 70:
			r.reload(false)
		case x < 74:
			r.reload(true)
		case x < 83:
			r.advance()
		case x < 95:
			r.ping()
		default:
			r.sweep()
		}
	}
	r.finish()
}

const (
	randSteps    = 300
	randServices = 4                       // s0..s3 on 10.100.0.40-43; 10.100.0.44 never has a service
	randDrain    = 1500 * time.Millisecond // drain_timeout
	// randDrainUse is how long after a reload began a flow it drains is
	// still used, and its removal may still be undone: long enough before
	// drain_timeout that the answers, or the reload, come first however
	// slow the machine. (Should a drain come first all the same, the
	// flow's end is checked as the drain's.)
	randDrainUse = 600 * time.Millisecond
	// randLate bounds how late a drain that must close a flow may do so.
	randLate    = 5 * time.Second
	randWait    = 5 * time.Second // for an answer, an ICMP error, a flow to end
	randMTU     = 1420            // the client's link (netstacktest.NewClient)
	randMaxUp   = randMTU - 28    // the largest datagram a client sends in one packet
	randTagLen  = 2
	randTagByte = 0xec
	randPorts   = 16 // client ports 42000-42015 of each client address
)

// randIdles are the short idle timeouts a service may have; 0 is the
// defaults (2 min, 30 s on port 53), which never pass within the test.
var randIdles = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 0}

var randBalances = []string{"round_robin", "least_conn", "source_hash"}

var randTenants = []struct {
	name string
	addr netip.Addr
}{{"acme", acmeClient}, {"globex", globexClient}}

// taggedEchoes are UDP echoes on 127.0.0.1, .2 and .3, each on the same
// two ports. Each answers with its tag, [randTagByte, id], then the
// datagram.
type taggedEchoes struct {
	addrs [3]netip.Addr
	ports [2]uint16
}

func startTaggedEchoes(t *testing.T) *taggedEchoes {
	t.Helper()
	e := &taggedEchoes{addrs: [3]netip.Addr{
		netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"),
	}}
	for pi := range e.ports {
		conns := e.listen(t)
		e.ports[pi] = uint16(conns[0].LocalAddr().(*net.UDPAddr).Port)
		for ai, pc := range conns {
			serveUDPEcho(t, pc, []byte{randTagByte, e.id(ai, pi)})
		}
	}
	return e
}

// listen binds one port on each address, trying other ports while the
// first address's is taken on another.
func (e *taggedEchoes) listen(t *testing.T) []*net.UDPConn {
	t.Helper()
	for range 20 {
		var conns []*net.UDPConn
		for _, a := range e.addrs {
			port := 0
			if len(conns) > 0 {
				port = conns[0].LocalAddr().(*net.UDPAddr).Port
			}
			pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, uint16(port))))
			if err != nil {
				break
			}
			conns = append(conns, pc)
		}
		if len(conns) == len(e.addrs) {
			return conns
		}
		for _, pc := range conns {
			pc.Close()
		}
	}
	t.Fatal("no port free on 127.0.0.1, .2 and .3")
	return nil
}

func (e *taggedEchoes) id(addr, port int) byte { return byte(addr*len(e.ports) + port) }

// target is the address and port of the echo with tag id.
func (e *taggedEchoes) target(id byte) netip.AddrPort {
	return netip.AddrPortFrom(e.addrs[int(id)/len(e.ports)], e.ports[int(id)%len(e.ports)])
}

// randService is a service's configuration.
type randService struct {
	tenants  []string       // "*" or tenant names
	backends []int          // indexes of taggedEchoes.addrs, ascending
	targets  map[uint16]int // VIP port (7, 53) → index of taggedEchoes.ports
	idle     time.Duration  // 0: the defaults
	icmp     bool
	balance  string
}

func (s *randService) allows(tenant string) bool {
	return slices.Contains(s.tenants, "*") || slices.Contains(s.tenants, tenant)
}

// idleFor is the idle timeout of a flow to port.
func (s *randService) idleFor(port uint16) time.Duration {
	switch {
	case s.idle > 0:
		return s.idle
	case port == 53:
		return 30 * time.Second
	}
	return 2 * time.Minute
}

func (s *randService) clone() *randService {
	c := *s
	c.tenants = slices.Clone(s.tenants)
	c.backends = slices.Clone(s.backends)
	c.targets = make(map[uint16]int, len(s.targets))
	for k, v := range s.targets {
		c.targets[k] = v
	}
	return &c
}

func randVIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 100, 0, byte(40 + i)}) }

// randKey is a flow: client address and port, VIP and port.
type randKey struct{ src, dst netip.AddrPort }

// randFlow is the model of a live flow.
type randFlow struct {
	randKey
	tenant string
	svc    int
	tag    byte // its backend's
	idle   time.Duration
	last   time.Time // the flows' clock when a datagram of it last moved: the gateway's is no earlier
	gw     *flow
	// up and down are the payload bytes it moved; lossy: they are not
	// known (it ended with datagrams on their way, or the model took it
	// in as found in the gateway's table).
	up, down int64
	lossy    bool
	drains   []randDrainOf
	// unsure: whether a drain closes it depends on which came first, the
	// drain or a reload that undid it; it is no longer used.
	unsure bool
}

// randDrainOf is a drain of a flow that a reload started, between start
// (before the configuration was written) and end (Reload returned).
type randDrainOf struct {
	reason     string // service_removed, backend_removed
	start, end time.Time
}

// usable reports whether datagrams may be sent on the flow: it is not
// about to be drained.
func (f *randFlow) usable() bool {
	if f.unsure {
		return false
	}
	for _, d := range f.drains {
		if time.Since(d.start) >= randDrainUse {
			return false
		}
	}
	return true
}

// recordingPinger answers every ping and records where it went.
type recordingPinger struct {
	mu   sync.Mutex
	dsts []netip.Addr
}

func (p *recordingPinger) Ping(_ context.Context, dst netip.Addr, _ []byte) error {
	p.mu.Lock()
	p.dsts = append(p.dsts, dst)
	p.mu.Unlock()
	return nil
}

func (p *recordingPinger) Close() error { return nil }

func (p *recordingPinger) sent() []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.dsts)
}

// randSock is a client socket, connected to dst.
type randSock struct {
	c   net.Conn
	dst netip.AddrPort
}

type randUDP struct {
	t      *testing.T
	rng    *rand.Rand
	step   int
	h      *fileHarness
	clk    *fakeNow
	echoes *taggedEchoes
	pinger *recordingPinger

	cfg   map[int]*randService         // the running configuration
	last  map[int][]int                // each service's backends in the last configuration that had it
	flows map[randKey]*randFlow        // the live flows
	socks map[netip.AddrPort]*randSock // the client sockets, by client address and port
	id    uint32                       // of the last datagram sent
	pings uint16
	began time.Time
	stats map[string]int // what happened, logged at the end
}

func newRandUDP(t *testing.T, seed uint64) *randUDP {
	// Registered first, so run last: after the gateway, the client stack
	// and the echoes have stopped.
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	r := &randUDP{
		t:      t,
		rng:    rand.New(rand.NewPCG(seed, seed^0x5eed)),
		clk:    newFakeNow(),
		echoes: startTaggedEchoes(t),
		pinger: &recordingPinger{},
		cfg:    map[int]*randService{},
		last:   map[int][]int{},
		flows:  map[randKey]*randFlow{},
		socks:  map[netip.AddrPort]*randSock{},
		began:  time.Now(),
		stats:  map[string]int{},
	}
	for i := range randServices {
		if r.rng.IntN(4) > 0 {
			r.cfg[i] = r.randomService()
			r.last[i] = r.cfg[i].backends
		}
	}
	r.h = newFileHarness(t, r.toml(r.cfg), withClock(r.clk), func(o *Options) { o.Pinger = r.pinger })
	t.Cleanup(func() {
		for _, s := range r.socks {
			s.c.Close()
		}
	})
	r.logf("start: %s", r.describe(r.cfg))
	return r
}

func (r *randUDP) logf(format string, args ...any) {
	r.t.Helper()
	r.t.Logf("step %d (%v): %s", r.step, time.Since(r.began).Round(time.Millisecond), fmt.Sprintf(format, args...))
}

func (r *randUDP) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("step %d: %s", r.step, fmt.Sprintf(format, args...))
}

func (r *randUDP) randomService() *randService {
	s := &randService{targets: map[uint16]int{7: r.rng.IntN(2)}, icmp: r.rng.IntN(4) > 0}
	s.tenants = [][]string{{"*"}, {"acme"}, {"globex"}, {"acme", "globex"}}[r.rng.IntN(4)]
	s.backends = r.randomBackends()
	if r.rng.IntN(2) == 0 {
		s.targets[53] = r.rng.IntN(2)
	}
	s.idle = randIdles[r.rng.IntN(len(randIdles))]
	s.balance = randBalances[r.rng.IntN(len(randBalances))]
	return s
}

// randomBackends is one or two of the three addresses.
func (r *randUDP) randomBackends() []int {
	a := r.rng.Perm(3)[:1+r.rng.IntN(2)]
	slices.Sort(a)
	return a
}

func (r *randUDP) toml(cfg map[int]*randService) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n[gateway]\nstate_dir = \"STATE\"\ndrain_timeout = %q\n[api]\nlisten = \"off\"\n%s", randDrain, twoTenants)
	for i := range randServices {
		s := cfg[i]
		if s == nil {
			continue
		}
		var tenants, backends []string
		for _, tn := range s.tenants {
			tenants = append(tenants, strconv.Quote(tn))
		}
		for _, a := range s.backends {
			backends = append(backends, strconv.Quote(r.echoes.addrs[a].String()))
		}
		fmt.Fprintf(&b, "[[service]]\nname = \"s%d\"\ntenants = [%s]\nvip = %q\nbackends = [%s]\nicmp = %v\nbalance = %q\n",
			i, strings.Join(tenants, ", "), randVIP(i), strings.Join(backends, ", "), s.icmp, s.balance)
		for _, port := range []uint16{7, 53} {
			if ti, ok := s.targets[port]; ok {
				fmt.Fprintf(&b, "  [[service.port]]\n  protocol = \"udp\"\n  port = %d\n  target = %d\n", port, r.echoes.ports[ti])
			}
		}
		b.WriteString("  [service.health]\n  type = \"none\"\n")
		if s.idle > 0 {
			fmt.Fprintf(&b, "  [service.timeouts]\n  udp_idle = %q\n", s.idle)
		}
	}
	return b.String()
}

func (r *randUDP) describe(cfg map[int]*randService) string {
	var parts []string
	for i := range randServices {
		s := cfg[i]
		if s == nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("s%d{tenants %v backends %v targets %v idle %v icmp %v %s}", i, s.tenants, s.backends, s.targets, s.idle, s.icmp, s.balance))
	}
	return strings.Join(parts, " ")
}

// svcAt is the index of the service on vip, or -1.
func svcAt(vip netip.Addr) int {
	if i := int(vip.As4()[3]) - 40; i >= 0 && i < randServices {
		return i
	}
	return -1
}

// backendAddr is the index of the address of the backend with tag id.
func (r *randUDP) backendAddr(id byte) int { return int(id) / len(r.echoes.ports) }

// randomKey is a flow of a random client of either tenant to a random
// VIP and port.
func (r *randUDP) randomKey() randKey {
	tn := randTenants[r.rng.IntN(len(randTenants))]
	src := netip.AddrPortFrom(tn.addr, uint16(42000+r.rng.IntN(randPorts)))
	dst := netip.AddrPortFrom(randVIP(r.rng.IntN(randServices+1)), []uint16{7, 53}[r.rng.IntN(2)])
	return randKey{src, dst}
}

func tenantOf(a netip.Addr) string {
	for _, tn := range randTenants {
		if tn.addr == a {
			return tn.name
		}
	}
	return ""
}

// newFlow sends datagrams on a random flow, most often a new one.
func (r *randUDP) newFlow() {
	k := r.randomKey()
	if f := r.flows[k]; f != nil && !f.usable() {
		return
	}
	r.send(k)
}

// useFlow sends datagrams on a live flow.
func (r *randUDP) useFlow() {
	fs := r.usableFlows()
	if len(fs) == 0 {
		r.newFlow()
		return
	}
	r.send(fs[r.rng.IntN(len(fs))].randKey)
}

// usableFlows are the live flows that may be used, in a stable order.
func (r *randUDP) usableFlows() []*randFlow {
	var fs []*randFlow
	for _, f := range r.sortedFlows() {
		if f.usable() {
			fs = append(fs, f)
		}
	}
	return fs
}

// abandon closes the client socket of a live flow, and sends a datagram
// on the flow from its client address and port all the same (as a packet,
// past the client's stack): its answer finds the port closed, and the
// client's stack reports the port unreachable to the gateway. The flow
// goes on: the next socket on the port gets its answers.
func (r *randUDP) abandon() {
	r.t.Helper()
	fs := r.usableFlows()
	if len(fs) == 0 {
		return
	}
	f := fs[r.rng.IntN(len(fs))]
	if s := r.socks[f.src]; s != nil {
		r.quiet(s)
		s.c.Close()
		delete(r.socks, f.src)
	}
	closed := r.h.client.ClosedPortDatagrams()
	p := r.payload(r.rng.IntN(64))
	r.logf("flow %v -> %v: the client's socket closed, %d bytes sent", f.src, f.dst, len(p))
	r.h.gw.lan.Deliver(netstacktest.UDPDatagram(f.src, f.dst, p))
	// Its answer must not reach the next socket on the port.
	waitFor(r.t, randWait, "the answer to reach the closed port", func() bool { return r.h.client.ClosedPortDatagrams() > closed })
	f.up += int64(len(p))
	f.down += int64(randTagLen + len(p))
	f.last = r.clk.now()
	r.stats["sockets closed with an answer on its way"]++
}

// randomSize is a datagram size: empty, tiny, the largest whose answer
// fits the client's link, the largest the client sends in one packet
// (its answer is fragmented), or any size between.
func (r *randUDP) randomSize() int {
	switch r.rng.IntN(10) {
	case 0:
		return 0
	case 1:
		return 1 + r.rng.IntN(8)
	case 2:
		return randMaxUp - randTagLen
	case 3:
		return randMaxUp
	}
	return r.rng.IntN(randMaxUp + 1)
}

// payload is a datagram of size n: its number (when it fits), then
// random bytes.
func (r *randUDP) payload(n int) []byte {
	r.id++
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.rng.Uint32())
	}
	if n >= 4 {
		binary.BigEndian.PutUint32(p, r.id)
	}
	return p
}

// sock returns the client socket from k.src to k.dst, opening it (and
// closing the one of k.src to another VIP, once it holds nothing).
func (r *randUDP) sock(k randKey) net.Conn {
	r.t.Helper()
	if s := r.socks[k.src]; s != nil {
		r.quiet(s)
		if s.dst == k.dst {
			return s.c
		}
		s.c.Close()
		delete(r.socks, k.src)
	}
	c, err := r.h.client.DialUDPFrom(k.src, k.dst)
	if err != nil {
		r.fatalf("client socket %v -> %v: %v", k.src, k.dst, err)
	}
	r.socks[k.src] = &randSock{c: c, dst: k.dst}
	return c
}

// quiet checks that nothing waits on s: no datagram (a duplicate, or one
// for another client) and no ICMP error.
func (r *randUDP) quiet(s *randSock) {
	r.t.Helper()
	s.c.SetReadDeadline(time.Now().Add(2 * time.Millisecond))
	buf := make([]byte, 2048)
	n, err := s.c.Read(buf)
	if err == nil {
		r.fatalf("client %v got a datagram it did not wait for (%d bytes %x): a duplicate, or another client's",
			s.c.LocalAddr(), n, buf[:min(n, 16)])
	}
	if !isTimeout(err) {
		r.fatalf("client %v: %v with nothing sent", s.c.LocalAddr(), err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// readResult is what a client socket read: a datagram, or a refusal.
type readResult struct {
	data    []byte
	refused bool
}

// readAnswer waits, up to until, for a datagram or an ICMP error on c. An
// error wakes no reader (gVisor notifies it as EventErr only): the reads
// are short, and the next finds it.
func readAnswer(c net.Conn, until time.Time) (readResult, bool) {
	buf := make([]byte, 2048)
	for time.Now().Before(until) {
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		n, err := c.Read(buf)
		switch {
		case err == nil:
			return readResult{data: slices.Clone(buf[:n])}, true
		case strings.Contains(err.Error(), "refused"):
			return readResult{refused: true}, true
		case !isTimeout(err):
			return readResult{}, false
		}
	}
	return readResult{}, false
}

// send sends one to four datagrams on k and checks what comes back
// against the model.
func (r *randUDP) send(k randKey) {
	r.t.Helper()
	tenant := tenantOf(k.src.Addr())
	f := r.flows[k]
	if f != nil && !r.settle(f) {
		f = nil // ended meanwhile: this is a new flow
	}
	var svc *randService
	si := svcAt(k.dst.Addr())
	if si >= 0 {
		svc = r.cfg[si]
	}
	mapped := false
	if svc != nil {
		_, mapped = svc.targets[k.dst.Port()]
	}
	allowed := f != nil || (svc != nil && mapped && svc.allows(tenant))
	n := 1
	if allowed {
		n += r.rng.IntN(4)
	}
	c := r.sock(k)
	want := map[string]int{} // answers without the tag
	var sizes []int
	for range n {
		p := r.payload(r.randomSize())
		sizes = append(sizes, len(p))
		want[string(p)]++
		if _, err := c.Write(p); err != nil {
			r.fatalf("%v -> %v: write: %v", k.src, k.dst, err)
		}
	}
	what := "new flow"
	if f != nil {
		what = fmt.Sprintf("flow to backend %v", r.echoes.target(f.tag))
	}
	r.logf("%s %v -> %v (%s), %d datagrams %v, allowed %v", what, k.src, k.dst, tenant, n, sizes, allowed)
	sentAt := r.clk.now()

	if !allowed {
		res, ok := readAnswer(c, time.Now().Add(randWait))
		switch {
		case !ok:
			r.fatalf("%s may not reach %v: no ICMP unreachable within %v", tenant, k.dst, randWait)
		case !res.refused:
			r.fatalf("%s may not reach %v, and got an answer %x", tenant, k.dst, res.data[:min(len(res.data), 16)])
		}
		if gw := r.gwFlows(k); len(gw) > 0 {
			r.fatalf("%s may not reach %v, and has a flow to %v", tenant, k.dst, gw[0].target)
		}
		r.stats["flows refused"]++
		return
	}

	tag, tags := -1, map[byte]bool{}
	if f != nil {
		tag = int(f.tag)
	} else {
		for _, a := range svc.backends {
			tags[r.echoes.id(a, svc.targets[k.dst.Port()])] = true
		}
	}
	var down int64
	until := time.Now().Add(randWait)
	for got := 0; got < n; got++ {
		res, ok := readAnswer(c, until)
		if !ok || res.refused {
			if f != nil && r.endedInFlight(f) {
				return
			}
			r.fatalf("%v -> %v: answer %d of %d: refused %v, or none within %v", k.src, k.dst, got+1, n, res.refused, randWait)
		}
		d := res.data
		if len(d) < randTagLen || d[0] != randTagByte {
			r.fatalf("%v -> %v: an answer without a tag: %x", k.src, k.dst, d[:min(len(d), 16)])
		}
		if tag < 0 {
			if !tags[d[1]] {
				r.fatalf("new flow %v -> %v answered by %v, not by a backend of the service %v", k.src, k.dst, r.echoes.target(d[1]), tags)
			}
			tag = int(d[1])
		}
		if int(d[1]) != tag {
			r.fatalf("%v -> %v: answer from %v, but the flow is bound to %v", k.src, k.dst, r.echoes.target(d[1]), r.echoes.target(byte(tag)))
		}
		if want[string(d[randTagLen:])] == 0 {
			r.fatalf("%v -> %v: answer %d (%d bytes %x) is none of the datagrams sent, or one already answered",
				k.src, k.dst, got+1, len(d), d[:min(len(d), 16)])
		}
		want[string(d[randTagLen:])]--
		down += int64(len(d))
		r.stats["answers"]++
		switch len(d) - randTagLen {
		case 0:
			r.stats["empty answers"]++
		case randMaxUp - randTagLen:
			r.stats["answers filling the link"]++
		case randMaxUp:
			r.stats["answers past the link's MTU"]++
		}
	}
	var up int64
	for _, s := range sizes {
		up += int64(s)
	}

	gw := r.gwFlows(k)
	if f == nil {
		if len(gw) != 1 {
			r.fatalf("new flow %v -> %v answered, with %d flows in the gateway's table", k.src, k.dst, len(gw))
		}
		g := gw[0]
		if g.peer.tenant != tenant || g.svc.spec.Name != fmt.Sprintf("s%d", si) || g.target != r.echoes.target(byte(tag)) {
			r.fatalf("new flow %v -> %v: the gateway bound it to tenant %s, service %s, backend %v; answers came from %v",
				k.src, k.dst, g.peer.tenant, g.svc.spec.Name, g.target, r.echoes.target(byte(tag)))
		}
		f = &randFlow{randKey: k, tenant: tenant, svc: si, tag: byte(tag), idle: svc.idleFor(k.dst.Port()), gw: g}
		r.flows[k] = f
		r.stats["flows"]++
	} else if len(gw) != 1 || gw[0] != f.gw {
		r.fatalf("flow %v -> %v: the gateway's table has %d flows for it, not the one it was", k.src, k.dst, len(gw))
	}
	f.up += up
	f.down += down
	f.last = sentAt
}

// gwFlows are the gateway's open UDP flows of k.
func (r *randUDP) gwFlows(k randKey) []*flow {
	return r.h.gw.flows.list(func(f *flow) bool {
		_, closed := f.closed()
		return f.proto == "udp" && f.client == k.src && f.vip == k.dst && !closed
	})
}

// endedInFlight reports whether f ended, as the model allows, while its
// datagrams were on their way (a drain late on a slow machine): what it
// moved then is not known. A flow the gateway made meanwhile for the same
// client and VIP is taken into the model as found.
func (r *randUDP) endedInFlight(f *randFlow) bool {
	r.t.Helper()
	if _, closed := f.gw.closed(); !closed {
		return false
	}
	f.lossy = true
	r.stats["flows ended in flight"]++
	r.logf("flow %v -> %v ended while its datagrams were on their way; the gateway moved %d bytes up and %d down of it, the client %d and %d before",
		f.src, f.dst, f.gw.up.Load(), f.gw.down.Load(), f.up, f.down)
	r.settle(f)
	// Whatever else came back is the new flow's, or its refusal.
	s := r.socks[f.src]
	for {
		if _, ok := readAnswer(s.c, time.Now().Add(50*time.Millisecond)); !ok {
			break
		}
	}
	r.adopt()
	return true
}

// adopt takes the gateway's open flows the model does not know into it,
// checked against the running configuration as new flows: they were made
// by datagrams whose flow ended on their way.
func (r *randUDP) adopt() {
	r.t.Helper()
	known := map[*flow]bool{}
	for _, f := range r.flows {
		known[f.gw] = true
	}
	for _, g := range r.h.gw.flows.list(func(f *flow) bool { _, closed := f.closed(); return !closed && !known[f] }) {
		k := randKey{g.client, g.vip}
		si, tenant := svcAt(k.dst.Addr()), tenantOf(k.src.Addr())
		var svc *randService
		if si >= 0 {
			svc = r.cfg[si]
		}
		ti, mapped := 0, false
		if svc != nil {
			ti, mapped = svc.targets[k.dst.Port()]
		}
		if !mapped || !svc.allows(tenant) || g.peer.tenant != tenant || !slices.Contains(svc.backends, r.addrIndex(g.target.Addr())) ||
			g.target.Port() != r.echoes.ports[ti] {
			r.fatalf("the gateway has a flow %v -> %v of %s to %v the configuration does not allow", k.src, k.dst, g.peer.tenant, g.target)
		}
		if _, ok := r.flows[k]; ok {
			r.fatalf("the gateway has two flows %v -> %v", k.src, k.dst)
		}
		tag := r.echoes.id(r.addrIndex(g.target.Addr()), ti)
		r.flows[k] = &randFlow{randKey: k, tenant: tenant, svc: si, tag: tag, idle: svc.idleFor(k.dst.Port()),
			gw: g, lossy: true, last: r.clk.now()}
		r.logf("took in the flow %v -> %v to %v", k.src, k.dst, g.target)
	}
}

func (r *randUDP) addrIndex(a netip.Addr) int { return slices.Index(r.echoes.addrs[:], a) }

// settle checks f against its gateway flow: open, or ended for a reason
// the model allows and gone from the gateway's table with the bytes the
// model counted; it reports whether f is still live.
func (r *randUDP) settle(f *randFlow) bool {
	r.t.Helper()
	reason, closed := f.gw.closed()
	if !closed {
		for _, d := range f.drains {
			if !f.unsure && time.Since(d.end) > randDrain+randLate {
				r.fatalf("flow %v -> %v: not drained %v after the reload that began its %s drain",
					f.src, f.dst, time.Since(d.start), d.reason)
			}
		}
		return true
	}
	switch reason {
	case "idle":
		if idle := r.clk.now().Sub(f.last); idle < f.idle {
			r.fatalf("flow %v -> %v ended idle after %v of its %v", f.src, f.dst, idle, f.idle)
		}
	case "service_removed", "backend_removed":
		ok := f.unsure
		for _, d := range f.drains {
			if time.Since(d.start) >= randDrain && d.reason == reason {
				ok = true
			}
		}
		if !ok {
			r.fatalf("flow %v -> %v ended %s; its drains %+v (now %v)", f.src, f.dst, reason, f.drains, time.Now())
		}
	default:
		r.fatalf("flow %v -> %v ended: %s", f.src, f.dst, reason)
	}
	waitFor(r.t, randWait, "an ended flow to leave the gateway's table", func() bool {
		return len(r.h.gw.flows.list(func(g *flow) bool { return g == f.gw })) == 0
	})
	if !f.lossy && (f.gw.up.Load() != f.up || f.gw.down.Load() != f.down) {
		r.fatalf("flow %v -> %v ended having moved %d bytes up and %d down; the client sent %d and got %d",
			f.src, f.dst, f.gw.up.Load(), f.gw.down.Load(), f.up, f.down)
	}
	r.logf("flow %v -> %v to %v ended: %s", f.src, f.dst, r.echoes.target(f.tag), reason)
	if r.cfg != nil { // not the final drain
		r.stats["flows ended "+reason]++
	}
	delete(r.flows, f.randKey)
	return false
}

// sweep settles every flow and checks that the gateway has no open flow
// the model does not know.
func (r *randUDP) sweep() {
	r.t.Helper()
	for _, f := range r.sortedFlows() {
		r.settle(f)
	}
	known := map[*flow]bool{}
	for _, f := range r.flows {
		known[f.gw] = true
	}
	for _, g := range r.h.gw.flows.list(nil) {
		if _, closed := g.closed(); !closed && !known[g] {
			r.fatalf("the gateway has a flow %v -> %v of %s to %v that no answer showed", g.client, g.vip, g.peer.tenant, g.target)
		}
	}
}

func (r *randUDP) sortedFlows() []*randFlow {
	fs := make([]*randFlow, 0, len(r.flows))
	for _, f := range r.flows {
		fs = append(fs, f)
	}
	slices.SortFunc(fs, func(a, b *randFlow) int {
		return strings.Compare(a.src.String()+a.dst.String(), b.src.String()+b.dst.String())
	})
	return fs
}

// advance moves the flows' clock on, and waits for the flows it made
// idle for their timeout to end. One whose last datagram's activity was
// stamped after the step (the gateway's goroutine read the clock late)
// lives on from that stamp.
func (r *randUDP) advance() {
	r.t.Helper()
	d := []time.Duration{30 * time.Millisecond, 80 * time.Millisecond, 150 * time.Millisecond, 250 * time.Millisecond, time.Second}[r.rng.IntN(5)]
	r.clk.advance(d)
	r.logf("clock +%v", d)
	for _, f := range r.sortedFlows() {
		if f.idle > time.Second || r.clk.now().Sub(f.last) < f.idle {
			continue
		}
		waitFor(r.t, randWait+f.idle, fmt.Sprintf("flow %v -> %v, idle for %v, to end", f.src, f.dst, f.idle), func() bool {
			if _, closed := f.gw.closed(); closed {
				return true
			}
			if gl := f.gw.lastActive.Load(); gl > monoclock.Of(f.last) {
				f.last = f.last.Add(time.Duration(gl - monoclock.Of(f.last)))
				return r.clk.now().Sub(f.last) < f.idle
			}
			return false
		})
	}
	r.sweep()
}

// reload applies one or two random changes to the configuration. Racing,
// first datagrams of new flows (of other client ports than the live
// flows') go out while the gateway reloads: each is classified by the
// configuration before or by the one after, and is refused, or answered by
// a backend, as that one says; a flow the configuration after drains is
// drained.
func (r *randUDP) reload(racing bool) {
	r.t.Helper()
	r.sweep()
	old, next := r.cfg, map[int]*randService{}
	for i, s := range r.cfg {
		next[i] = s.clone()
	}
	var changes []string
	for tries, want := 0, 1+r.rng.IntN(2); len(changes) < want && tries < 20; tries++ {
		cand := map[int]*randService{}
		for i, s := range next {
			cand[i] = s.clone()
		}
		what := r.mutate(cand)
		if r.undoesLateDrain(cand) {
			continue
		}
		next = cand
		changes = append(changes, what)
	}
	var race []randKey
	if racing {
		race = r.raceKeys()
	}
	start := time.Now()
	r.h.write(r.t, r.toml(next))
	reloaded := make(chan error, 1)
	sent := map[randKey][]byte{}
	for _, k := range race {
		r.sock(k)
	}
	go func() {
		_, err := r.h.gw.Reload()
		reloaded <- err
	}()
	for _, k := range race {
		time.Sleep(time.Duration(r.rng.IntN(2000)) * time.Microsecond)
		p := r.payload(r.rng.IntN(256))
		sent[k] = p
		if _, err := r.socks[k.src].c.Write(p); err != nil {
			r.fatalf("%v -> %v: write: %v", k.src, k.dst, err)
		}
	}
	if err := <-reloaded; err != nil {
		r.fatalf("reload: %v", err)
	}
	end := time.Now()
	r.logf("reload (%s, %v, %d new flows racing it): %s", strings.Join(changes, ", "), end.Sub(start).Round(time.Millisecond),
		len(race), r.describe(next))
	r.applyDrains(next, start, end)
	for _, k := range race {
		r.raced(k, sent[k], old, next, start)
	}
	r.cfg = next
	r.stats["reloads"]++
	for i, s := range next {
		r.last[i] = slices.Clone(s.backends)
	}
}

// raceKeys are up to four new flows, each of its own client address and
// port, none of a live flow's.
func (r *randUDP) raceKeys() []randKey {
	used := map[netip.AddrPort]bool{}
	for k := range r.flows {
		used[k.src] = true
	}
	var keys []randKey
	for range 8 {
		if k := r.randomKey(); !used[k.src] && len(keys) < 4 {
			used[k.src] = true
			keys = append(keys, k)
		}
	}
	return keys
}

// raced checks the outcome of the datagram p, the first of a new flow k
// sent while the configuration went from old to next, which the reload
// that began at start made running. An answered flow is taken into the
// model with what the gateway bound it to, drained when next drains it.
func (r *randUDP) raced(k randKey, p []byte, old, next map[int]*randService, start time.Time) {
	r.t.Helper()
	tenant, si := tenantOf(k.src.Addr()), svcAt(k.dst.Addr())
	// tags are the backends cfg sends the flow to; nil: it refuses it.
	tags := func(cfg map[int]*randService) map[byte]bool {
		if si < 0 || cfg[si] == nil || !cfg[si].allows(tenant) {
			return nil
		}
		s := cfg[si]
		ti, ok := s.targets[k.dst.Port()]
		if !ok {
			return nil
		}
		m := map[byte]bool{}
		for _, a := range s.backends {
			m[r.echoes.id(a, ti)] = true
		}
		return m
	}
	before, after := tags(old), tags(next)
	res, ok := readAnswer(r.socks[k.src].c, time.Now().Add(randWait))
	switch {
	case !ok:
		r.fatalf("new flow %v -> %v racing a reload: neither an answer nor a refusal within %v", k.src, k.dst, randWait)
	case res.refused:
		if before != nil && after != nil {
			r.fatalf("new flow %v -> %v racing a reload refused; both configurations allow it", k.src, k.dst)
		}
		if gw := r.gwFlows(k); len(gw) > 0 {
			r.fatalf("new flow %v -> %v racing a reload refused, with a flow to %v", k.src, k.dst, gw[0].target)
		}
		r.stats["flows refused racing a reload"]++
		return
	}
	d := res.data
	if len(d) != randTagLen+len(p) || d[0] != randTagByte || !bytes.Equal(d[randTagLen:], p) {
		r.fatalf("new flow %v -> %v racing a reload: answer %x, want the tagged datagram", k.src, k.dst, d[:min(len(d), 16)])
	}
	tag := d[1]
	if !before[tag] && !after[tag] {
		r.fatalf("new flow %v -> %v racing a reload answered by %v: no configuration sends it there (before %v, after %v)",
			k.src, k.dst, r.echoes.target(tag), before, after)
	}
	gw := r.gwFlows(k)
	if len(gw) != 1 || gw[0].peer.tenant != tenant || gw[0].svc.spec.Name != fmt.Sprintf("s%d", si) || gw[0].target != r.echoes.target(tag) {
		r.fatalf("new flow %v -> %v racing a reload answered by %v: the gateway has %d flows for it", k.src, k.dst, r.echoes.target(tag), len(gw))
	}
	g := gw[0]
	idle := g.svc.spec.Timeouts.UDPIdleFor(k.dst.Port())
	if (old[si] == nil || old[si].idleFor(k.dst.Port()) != idle) && (next[si] == nil || next[si].idleFor(k.dst.Port()) != idle) {
		r.fatalf("new flow %v -> %v racing a reload has an idle timeout of %v, which no configuration gives it", k.src, k.dst, idle)
	}
	f := &randFlow{randKey: k, tenant: tenant, svc: si, tag: tag, idle: idle, gw: g, up: int64(len(p)), down: int64(len(d)), last: r.clk.now()}
	if s := next[si]; s == nil {
		f.drains = append(f.drains, randDrainOf{"service_removed", start, time.Now()})
	} else if !slices.Contains(s.backends, r.backendAddr(tag)) {
		f.drains = append(f.drains, randDrainOf{"backend_removed", start, time.Now()})
	}
	r.flows[k] = f
	r.stats["flows racing a reload"]++
}

// mutate makes one random change to cfg and names it.
func (r *randUDP) mutate(cfg map[int]*randService) string {
	i := r.rng.IntN(randServices)
	s := cfg[i]
	if s == nil {
		cfg[i] = r.randomService()
		return fmt.Sprintf("add s%d", i)
	}
	switch r.rng.IntN(8) {
	case 0:
		delete(cfg, i)
		return fmt.Sprintf("remove s%d", i)
	case 1:
		s.backends = r.randomBackends()
		return fmt.Sprintf("s%d backends", i)
	case 2:
		s.tenants = [][]string{{"*"}, {"acme"}, {"globex"}, {"acme", "globex"}}[r.rng.IntN(4)]
		return fmt.Sprintf("s%d tenants", i)
	case 3:
		s.idle = randIdles[r.rng.IntN(len(randIdles))]
		return fmt.Sprintf("s%d idle", i)
	case 4:
		s.targets = map[uint16]int{7: r.rng.IntN(2)}
		if r.rng.IntN(2) == 0 {
			s.targets[53] = r.rng.IntN(2)
		}
		return fmt.Sprintf("s%d ports", i)
	case 5:
		s.icmp = !s.icmp
		return fmt.Sprintf("s%d icmp", i)
	case 6:
		s.balance = randBalances[r.rng.IntN(len(randBalances))]
		return fmt.Sprintf("s%d balance", i)
	}
	cfg[i] = r.randomService()
	return fmt.Sprintf("replace s%d", i)
}

// undoesLateDrain reports whether cfg would bring back a service or a
// backend whose flows' drain may be about to close them: whether the
// drain or the reload comes first could not be known.
func (r *randUDP) undoesLateDrain(cfg map[int]*randService) bool {
	for _, f := range r.flows {
		s := cfg[f.svc]
		for _, d := range f.drains {
			if time.Since(d.start) < randDrainUse || s == nil {
				continue
			}
			if d.reason == "service_removed" || slices.Contains(s.backends, r.backendAddr(f.tag)) {
				return true
			}
		}
	}
	return false
}

// applyDrains updates the live flows' drains for the reload to next,
// which began at start and returned at end: a removed service drains its
// flows, a backend that left its service the flows bound to it; a
// service or backend back before the drain's deadline voids it.
func (r *randUDP) applyDrains(next map[int]*randService, start, end time.Time) {
	for _, f := range r.flows {
		old, s := r.cfg[f.svc], next[f.svc]
		addr := r.backendAddr(f.tag)
		if s == nil {
			if old != nil {
				f.drains = append(f.drains, randDrainOf{"service_removed", start, end})
				r.stats["drains"]++
			}
			continue
		}
		var kept []randDrainOf
		for _, d := range f.drains {
			undone := d.reason == "service_removed" && old == nil ||
				d.reason == "backend_removed" && slices.Contains(s.backends, addr)
			switch {
			case !undone:
				kept = append(kept, d)
			case end.After(d.start.Add(randDrain)):
				f.unsure = true // the drain may have come first
				r.stats["drains unsure"]++
				kept = append(kept, d)
			default:
				r.stats["drains undone"]++
			}
		}
		f.drains = kept
		// The service's state still holds the backends of the last
		// configuration that had it.
		if slices.Contains(r.last[f.svc], addr) && !slices.Contains(s.backends, addr) {
			f.drains = append(f.drains, randDrainOf{"backend_removed", start, end})
			r.stats["drains"]++
		}
	}
}

// ping pings a random VIP from a random client.
func (r *randUDP) ping() {
	r.t.Helper()
	tn := randTenants[r.rng.IntN(len(randTenants))]
	si := r.rng.IntN(randServices + 1)
	vip := randVIP(si)
	var svc *randService
	if si < randServices {
		svc = r.cfg[si]
	}
	allowed := svc != nil && svc.icmp && svc.allows(tn.name)
	payload := r.payload(r.rng.IntN(64))
	r.pings++
	before := len(r.pinger.sent())
	ctx, cancel := context.WithTimeout(context.Background(), randWait)
	defer cancel()
	got, err := r.h.client.Ping(ctx, r.h.gw.lan, tn.addr, vip, 0x5a, r.pings, payload)
	r.logf("ping %v -> %v: allowed %v, %v", tn.addr, vip, allowed, err)
	sent := r.pinger.sent()[before:]
	if !allowed {
		var unreach *netstacktest.UnreachableError
		if !errors.As(err, &unreach) || unreach.Code != 13 {
			r.fatalf("ping from %s to %v: %v, want destination unreachable code 13", tn.name, vip, err)
		}
		if len(sent) > 0 {
			r.fatalf("a refused ping from %s to %v went to %v", tn.name, vip, sent)
		}
		r.stats["pings refused"]++
		return
	}
	if err != nil || !bytes.Equal(got, payload) {
		r.fatalf("ping from %s to %v: %x, %v; want its payload back", tn.name, vip, got, err)
	}
	if len(sent) != 1 || !slices.Contains(svc.backends, r.addrIndex(sent[0])) {
		r.fatalf("ping from %s to %v went to %v, want one backend of %v", tn.name, vip, sent, svc.backends)
	}
	r.stats["pings answered"]++
}

// finish removes every service, waits for every flow to be drained, and
// checks that nothing is left: no flow, no backend socket, no service
// state or series, no datagram waiting for a client.
func (r *randUDP) finish() {
	r.t.Helper()
	r.sweep()
	start := time.Now()
	r.h.write(r.t, r.toml(nil))
	if _, err := r.h.gw.Reload(); err != nil {
		r.fatalf("reload without services: %v", err)
	}
	end := time.Now()
	r.logf("reload: every service removed, %d flows live; so far %v", len(r.flows), r.stats)
	r.applyDrains(nil, start, end)
	r.cfg = nil
	waitFor(r.t, randDrain+randLate, "every flow to end", func() bool { return r.h.gw.flows.len() == 0 })
	for _, f := range r.sortedFlows() {
		r.settle(f)
	}
	if len(r.flows) != 0 {
		r.fatalf("%d flows of the model live on", len(r.flows))
	}
	if n := backendSockets(r.t, r.echoes.ports[:]); n != 0 {
		r.fatalf("%d sockets to the backends are still open", n)
	}
	if got := r.h.gw.limits.entries(); got != "" {
		r.fatalf("tenant counters left after every flow ended: %s", got)
	}
	// The removed services' states and series go with their last flows.
	waitFor(r.t, randWait, "the services' states to be freed", func() bool { return r.h.gw.stateCount() == 0 })
	if c := gatherSeries(r.t, r.h.gw); len(c.byService) != 0 {
		r.fatalf("series of removed services left: %v", c.byService)
	}
	for _, s := range r.socks {
		r.quiet(s)
	}
}

// backendSockets counts the UDP sockets on this machine connected to one
// of ports on loopback: the flows' backend sockets.
func backendSockets(t *testing.T, ports []uint16) int {
	t.Helper()
	n := 0
	for _, name := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		f, err := os.Open(name)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 || fields[0] == "sl" {
				continue
			}
			_, port, ok := strings.Cut(fields[2], ":") // rem_address: hex address, hex port
			if p, err := strconv.ParseUint(port, 16, 16); ok && err == nil && slices.Contains(ports, uint16(p)) {
				n++
			}
		}
		f.Close()
	}
	return n
}
