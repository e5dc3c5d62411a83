package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/testseed"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// TestRelayReloadRandom checks a gateway attached to a relay across random
// reloads of its file against a model of what the relay must see and what
// its agents get. A fake relay welcomes the gateway, assigns VIPs to what
// it registers (at times another VIP, or none: a rejection; from another
// pool, or with or without a pool6 and IPv6 VIPs, as a relay restarted
// with another configuration, in the session or after a drop), opens tags for
// agents of random tenants, closes those of a service the gateway stops
// registering or of a tenant it no longer admits (as the relay does:
// protocol.md, "Definitions"), and drops the session at times. Checked
// after each step:
//   - the relay's view (the last register, with the health messages since)
//     is what a fresh gateway started with the same file registers first
//     (services, tenants, ports, ICMP, no pins: a gateway behind a relay
//     refuses them), with each service healthy as its checks say;
//   - a reload that changes a definition is one register; one that changes
//     health alone is health messages, no register; a broken file fails,
//     sends nothing and changes nothing; a new session registers what the
//     gateway serves now;
//   - each service resolves, from the tags of its tenants only, to the VIP
//     the relay assigned (none when it rejected it; no AAAA from a tag:
//     the tunnel carries IPv4 only), the PTR of either VIP to the tag's own service
//     only, and takes UDP flows, TCP connections (a client stack owns the
//     tags' inner addresses: relayreload_tcp_test.go) and pings through
//     tags of admitted tenants only while healthy; a TCP connection it
//     refuses gets RST; an IPv6 packet under a tag reaches nothing (a
//     tunnel carries IPv4);
//   - a flow opened earlier under a tag still open keeps its backend (a
//     TCP connection while the configuration and VIP stay); the flows of a
//     tag the relay closed, or of a session that ended, TCP ones too, are
//     gone;
//   - the gateway's LAN side (relayreload_lan_test.go): its tenants' DNS
//     of the relay's VIPs, UDP and TCP flows to its IPv4 and IPv6 VIPs,
//     new and kept across reloads, reassignments, pool moves and session
//     drops, and the LAN's drop and refusal counters, exactly;
//   - no goroutine is left.
//
// ZTGATE_RELAYRELOAD_SEED=<seed> replays a run.
func TestRelayReloadRandom(t *testing.T) {
	seed := testseed.Get(t, relayReloadSeedEnv)
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		goleak.VerifyNone(t, before, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"))
	})
	r := newRLRun(t, seed)
	for r.step = 1; r.step <= rlSteps; r.step++ {
		r.next()
	}
	r.finish()
}

const (
	relayReloadSeedEnv = "ZTGATE_RELAYRELOAD_SEED"
	rlSteps            = 30
	rlDrops            = 2 // session drops at most: the redial backs off 1 s, 2 s, …
	rlRunning          = "gw-run"
	rlQuiet            = 700 * time.Millisecond // more than a health report interval
)

// rlPools are the relay's pools: it assigns VIPs from one of them, and
// from another after it moved (a relay restarted with another pool). A
// pool6 of rlPools6 (the invalid one: none) gives the services IPv6 VIPs
// too.
var (
	rlPools  = []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24"), netip.MustParsePrefix("10.201.7.0/24")}
	rlPools6 = []netip.Prefix{{}, netip.MustParsePrefix("fd00:99::/120"), netip.MustParsePrefix("fd00:98:1::/112")}
)

// rlInners is how many tags a run may open: their inner addresses are the
// TCP client's.
const rlInners = 160

// rlTenants are the tenants of the tags: those of the configurations and
// one no configuration names.
var rlTenants = append(slices.Clone(rrTenantNames), "umbrella")

// rlRelay is the fake relay: it welcomes every session and hands it over
// by the gateway's hello name.
type rlRelay struct {
	t    *testing.T
	ln   *tunnel.Listener
	mu   sync.Mutex
	by   map[string]chan *tunnel.Session
	all  []*tunnel.Session
	stop func()
}

func startRLRelay(t *testing.T, dir string, ca *tunnel.CA) *rlRelay {
	rl := &rlRelay{t: t, ln: relayListener(t, dir, ca), by: map[string]chan *tunnel.Session{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			s, err := rl.ln.Accept(ctx)
			if err != nil {
				return
			}
			s.SendWelcome(tunnel.Welcome{MaxPacket: 1200})
			rl.mu.Lock()
			rl.all = append(rl.all, s)
			rl.mu.Unlock()
			select {
			case rl.sessions(s.Hello().Name) <- s:
			default:
				s.Close("no one waits for it")
			}
		}
	}()
	rl.stop = func() {
		cancel()
		rl.ln.Close()
		<-done
		rl.mu.Lock()
		defer rl.mu.Unlock()
		for _, s := range rl.all {
			s.Close("test over")
		}
	}
	return rl
}

func (rl *rlRelay) sessions(name string) chan *tunnel.Session {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	ch := rl.by[name]
	if ch == nil {
		ch = make(chan *tunnel.Session, 4)
		rl.by[name] = ch
	}
	return ch
}

// await returns the next session of the gateway called name.
func (rl *rlRelay) await(name string, d time.Duration) (*tunnel.Session, error) {
	select {
	case s := <-rl.sessions(name):
		return s, nil
	case <-time.After(d):
		return nil, fmt.Errorf("%s did not connect to the relay within %v", name, d)
	}
}

func (rl *rlRelay) tunnelSection(dir string) string {
	return fmt.Sprintf("[tunnel]\nrelay = %q\ncert = %q\nkey = %q\nca = %q\n", rl.ln.Addr().String(),
		filepath.Join(dir, "gw.crt"), filepath.Join(dir, "gw.key"), filepath.Join(dir, "ca.crt"))
}

// rlSession is the relay's side of one session of the running gateway:
// its control messages (register and health) and tag returns.
type rlSession struct {
	s       *tunnel.Session
	msgs    chan any
	replies chan rlReply
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

type rlReply struct {
	tag uint32
	pkt []byte
}

func newRLSession(s *tunnel.Session, tcp *rlBridge) *rlSession {
	ctx, cancel := context.WithCancel(context.Background())
	ss := &rlSession{s: s, msgs: make(chan any, 256), replies: make(chan rlReply, 1024), cancel: cancel}
	ss.wg.Add(2)
	go func() {
		defer ss.wg.Done()
		for {
			msg, err := tunnel.DecodeControl(s.Next())
			if err != nil {
				if s.Err() != nil || ctx.Err() != nil {
					return
				}
				continue
			}
			switch msg.(type) {
			case *tunnel.Register, *tunnel.Health:
				select {
				case ss.msgs <- msg:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	go func() {
		defer ss.wg.Done()
		tagReturns(ctx, s, func(tag uint32, pkt []byte) bool {
			if len(pkt) >= 20 && pkt[0]>>4 == 4 && pkt[9] == 6 {
				tcp.reply(tag, pkt)
				return true
			}
			select {
			case ss.replies <- rlReply{tag, pkt}:
				return true
			case <-ctx.Done():
				return false
			}
		})
	}()
	return ss
}

func (ss *rlSession) close(reason string) {
	ss.s.Close(reason)
	ss.cancel()
	ss.wg.Wait()
}

// rlTag is a tag the fake relay opened for an agent.
type rlTag struct {
	id              uint32
	service, tenant string
	inner           netip.Addr
	synth           netip.Addr
	open            bool
	goneChecked     bool // that its flows ended, once closed
	// kept is a UDP flow the tag opened: its source port, VIP, port on
	// the VIP and the backend that answered it ("" when none is kept).
	keptPort, keptDport uint16
	keptVIP             netip.Addr
	kept                string
	// tcp is a TCP connection the tag's agent keeps: the backend that
	// answered it, the configuration and the VIP then.
	tcp        net.Conn
	tcpBackend string
	tcpCfg     *rrConfig
	tcpVIP     netip.Addr
}

// rlRun is one run of TestRelayReloadRandom.
type rlRun struct {
	t    *testing.T
	seed uint64
	rng  *rand.Rand
	gen  *rrGen
	w    *rrWorld
	pki  string
	rl   *rlRelay
	step int

	gw   *Gateway
	path string
	cur  *rrConfig
	sess *rlSession
	// The relay's view of the running gateway: its last register with the
	// health messages since, and the registers and health messages seen.
	view      []tunnel.ServiceInfo
	registers int
	healths   int
	// The relay's VIPs: its pools, what it assigns each service, and
	// those it rejects.
	pool, pool6 netip.Prefix
	vips        map[string]netip.Addr
	vips6       map[string]netip.Addr
	rejected    map[string]bool
	nextIn      map[netip.Prefix]netip.Addr
	// tcp is the agents' TCP client: each tag's inner address is one of
	// its addresses, its packets go under the tag.
	tcp  *rlBridge
	tags map[uint32]*rlTag
	// The LAN side (relayreload_lan_test.go): its clients' stack, the
	// flows they keep, the VIPs the relay ever assigned.
	lanClient *rlLANTap
	lanKept   []*rlLANFlow
	lanOld    []netip.Addr
	lanTime   time.Duration // spent in the LAN probes
	seq       int
	port      uint16
	fresh     int
	drops     int
	stats     map[string]int
}

func newRLRun(t *testing.T, seed uint64) *rlRun {
	pki := t.TempDir()
	_, ca := writePKI(t, pki)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	r := &rlRun{t: t, seed: seed, rng: rng, w: startRRWorld(t), pki: pki, vips: map[string]netip.Addr{},
		vips6: map[string]netip.Addr{}, rejected: map[string]bool{}, nextIn: map[netip.Prefix]netip.Addr{},
		pool: rlPools[0], pool6: rlPools6[rng.IntN(len(rlPools6))], tags: map[uint32]*rlTag{},
		port: 20000, stats: map[string]int{}}
	r.tcp = startRLBridge(t)
	r.rl = startRLRelay(t, pki, ca)
	t.Cleanup(r.rl.stop)
	r.gen = &rrGen{rng: rng, w: r.w}
	r.cur = r.config()
	dir := t.TempDir()
	r.path = filepath.Join(dir, "gw.toml")
	if err := os.WriteFile(r.path, []byte(r.text(r.cur, rlRunning, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := conf.LoadGateway(r.path)
	if err != nil {
		t.Fatalf("%v\n%s", err, r.text(r.cur, rlRunning, dir))
	}
	r.lanClient = newRLLAN(t)
	r.gw, err = New(cfg, Options{Pinger: rlPinger(), Device: r.lanClient}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.gw.noWatch = true // the test alone reloads
	if err := r.gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.gw.Close() })
	r.connect("start", false)
	return r
}

func rlPinger() fakePinger {
	up := map[netip.Addr]bool{}
	for i := range 4 {
		up[rrBackendAddr(i)] = true
	}
	return fakePinger{up: up}
}

func (r *rlRun) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("seed %d step %d: %s\nrunning configuration:\n%s", r.seed, r.step, fmt.Sprintf(format, args...),
		r.text(r.cur, rlRunning, "STATE"))
}

// config is a random configuration a gateway behind a relay takes: no
// pins; no limits either, so that every flow the model allows is taken.
func (r *rlRun) config() *rrConfig {
	c := r.gen.config(r.cur, rrRestart{})
	rlStrip(c)
	return c
}

func rlStrip(c *rrConfig) {
	c.restart, c.limits = rrRestart{}, rrLimits{}
	for i := range c.tenants {
		c.tenants[i].limits = rrLimits{}
	}
	for i := range c.services {
		s := &c.services[i]
		s.pin, s.pinVIP, s.pin6, s.limits = -1, netip.Addr{}, -1, rrLimits{}
	}
	c.v6 = true // the tenants hold IPv6 prefixes too: the LAN clients' IPv6 twins
}

// text renders c for a gateway called name with its state in dir.
func (r *rlRun) text(c *rrConfig, name, dir string) string {
	text := c.withRestart(rrRestart{name: name}).toml(r.w)
	return strings.ReplaceAll(text, "STATE", filepath.Join(dir, "state")) + r.rl.tunnelSection(r.pki)
}

// write replaces the running gateway's file, as an editor does.
func (r *rlRun) write(text string) {
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Rename(tmp, r.path); err != nil {
		r.t.Fatal(err)
	}
}

// connect takes the running gateway's next session: its first message
// must be a register of what it serves now, answered with an assign.
// health: its health must be as the checks say (they had time to settle).
func (r *rlRun) connect(why string, health bool) {
	s, err := r.rl.await(rlRunning, 15*time.Second)
	if err != nil {
		r.fatalf("%s: %v", why, err)
	}
	r.sess = newRLSession(s, r.tcp)
	r.tcp.setSession(s)
	var first any
	select {
	case first = <-r.sess.msgs:
	case <-time.After(10 * time.Second):
		r.fatalf("%s: no register within 10 s of the session", why)
	}
	reg, ok := first.(*tunnel.Register)
	if !ok {
		r.fatalf("%s: the session's first message is %T, want a register", why, first)
	}
	if why != "start" {
		// What the gateway serves now, health included: the checks
		// settled before the session dropped.
		r.checkInfos(why+": the new session's register", reg.Services, r.wantInfos(nil), health)
	}
	r.onRegister(reg)
	r.settle(why, nil)
}

// wantInfos are the registrations of r.cur with health as the checks say;
// defs, when set, are a fresh gateway's (whose health is not settled).
func (r *rlRun) wantInfos(defs []tunnel.ServiceInfo) []tunnel.ServiceInfo {
	if defs == nil {
		defs = r.view
	}
	out := cloneInfos(defs)
	for i := range out {
		if s := r.cur.service(out[i].Name); s != nil {
			out[i].Healthy = s.passes()
		}
	}
	return out
}

// checkInfos compares registrations, health too when health.
func (r *rlRun) checkInfos(what string, got, want []tunnel.ServiceInfo, health bool) {
	r.t.Helper()
	same := func(a, b tunnel.ServiceInfo) bool {
		return rlSameDef(a, b) && (!health || a.Healthy == b.Healthy)
	}
	if !slices.EqualFunc(got, want, same) {
		r.fatalf("%s:\n%s\nwant\n%s", what, rlInfos(got), rlInfos(want))
	}
}

func rlInfos(infos []tunnel.ServiceInfo) string {
	var b strings.Builder
	for _, si := range infos {
		fmt.Fprintf(&b, "\t%+v\n", si)
	}
	return b.String()
}

// onRegister is the relay's answer to a register: tag_close for the tags
// of services no longer registered or of tenants no longer admitted, and
// an assign of the VIPs.
func (r *rlRun) onRegister(reg *tunnel.Register) {
	r.view = cloneInfos(reg.Services)
	r.registers++
	var closing []uint32
	for _, tg := range r.openTags() {
		if si := r.viewOf(tg.service); si == nil || !rlAdmits(si.Tenants, tg.tenant) {
			closing = append(closing, tg.id)
		}
	}
	if len(closing) > 0 {
		if err := r.sess.s.Send(tunnel.TagClose{Type: tunnel.MessageTagClose, Tags: closing}); err != nil {
			r.fatalf("tag_close: %v", err)
		}
		for _, id := range closing {
			r.tags[id].open = false
			r.tcp.closed(r.tags[id])
		}
		r.stats["tags closed for a changed registration"] += len(closing)
	}
	r.assign()
}

func rlAdmits(tenants []string, tenant string) bool {
	return slices.Contains(tenants, "*") || slices.Contains(tenants, tenant)
}

func (r *rlRun) viewOf(name string) *tunnel.ServiceInfo {
	for i := range r.view {
		if r.view[i].Name == name {
			return &r.view[i]
		}
	}
	return nil
}

// assign sends the relay's VIPs of the registered services.
func (r *rlRun) assign() {
	m := tunnel.Assign{Type: tunnel.MessageAssign, Zone: "ztna.internal", TTL: 30, Pool: r.pool, Pool6: r.pool6,
		VIPs: []tunnel.VIPAssignment{}}
	for _, si := range r.view {
		if r.rejected[si.Name] {
			m.Rejected = append(m.Rejected, tunnel.Rejection{Service: si.Name, Reason: "refused by the test"})
			continue
		}
		if !r.vips[si.Name].IsValid() {
			r.vips[si.Name] = r.alloc(r.pool)
		}
		if r.pool6.IsValid() && !r.vips6[si.Name].IsValid() {
			r.vips6[si.Name] = r.alloc(r.pool6)
		}
		m.VIPs = append(m.VIPs, tunnel.VIPAssignment{Service: si.Name, VIP: r.vips[si.Name], VIP6: r.vips6[si.Name]})
	}
	if err := r.sess.s.Send(m); err != nil {
		r.fatalf("assign: %v", err)
	}
	r.lanNoteVIPs()
}

// alloc is the relay's next VIP of pool: never one it gave before.
func (r *rlRun) alloc(pool netip.Prefix) netip.Addr {
	a, ok := r.nextIn[pool]
	if !ok {
		a = pool.Addr()
		for range 10 {
			a = a.Next()
		}
	}
	if !pool.Contains(a.Next()) {
		r.fatalf("the relay's pool %v is spent", pool)
	}
	r.nextIn[pool] = a.Next()
	return a
}

// movePools makes the relay assign from another pool, or another pool6
// (or none), as after its restart with another configuration: every VIP
// of the pool that changed moves.
func (r *rlRun) movePools() {
	if r.rng.IntN(2) == 0 {
		r.pool = rlPools[(slices.Index(rlPools, r.pool)+1)%len(rlPools)]
		clear(r.vips)
		r.stats["pool moved"]++
	} else {
		r.pool6 = rlPools6[(slices.Index(rlPools6, r.pool6)+1+r.rng.IntN(len(rlPools6)-1))%len(rlPools6)]
		clear(r.vips6)
		r.stats["pool6 changed"]++
	}
}

// vipOf is the VIP the relay assigned name, invalid for none.
func (r *rlRun) vipOf(name string) netip.Addr {
	if r.rejected[name] || r.viewOf(name) == nil {
		return netip.Addr{}
	}
	return r.vips[name]
}

// vip6Of is the IPv6 VIP the relay assigned name, invalid for none.
func (r *rlRun) vip6Of(name string) netip.Addr {
	if r.rejected[name] || r.viewOf(name) == nil || !r.pool6.IsValid() {
		return netip.Addr{}
	}
	return r.vips6[name]
}

// settle reads the relay's messages until its view is what the gateway
// must register (defs: a fresh gateway's registrations, else the view's
// own) with each service's health as its checks say, and the gateway's
// table has the relay's VIPs. It returns how many registers and health
// messages came.
func (r *rlRun) settle(what string, defs []tunnel.ServiceInfo) (registers, healths int) {
	r.t.Helper()
	regs0, healths0 := r.registers, r.healths
	deadline := time.After(10 * time.Second)
	for {
		want := r.wantInfos(defs)
		same := func(a, b tunnel.ServiceInfo) bool { return rlSameDef(a, b) && a.Healthy == b.Healthy }
		if slices.EqualFunc(r.view, want, same) && r.tableHasVIPs() {
			return r.registers - regs0, r.healths - healths0
		}
		select {
		case msg := <-r.sess.msgs:
			r.take(msg)
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			r.fatalf("%s: within 10 s, the relay's view is\n%swant\n%s(VIPs in the table: %v)",
				what, rlInfos(r.view), rlInfos(want), r.tableHasVIPs())
		}
	}
}

// take applies one message of the running gateway to the relay's view.
func (r *rlRun) take(msg any) {
	switch m := msg.(type) {
	case *tunnel.Register:
		r.onRegister(m)
	case *tunnel.Health:
		r.healths++
		for name, healthy := range m.Services {
			si := r.viewOf(name)
			if si == nil {
				r.fatalf("a health message names %s, which the gateway has not registered", name)
			}
			if si.Healthy == healthy {
				r.fatalf("a health message reports %s %v, which the relay knows already", name, healthy)
			}
			si.Healthy = healthy
		}
	}
}

// quiet reads the relay's messages for rlQuiet and returns how many
// registers and health messages came.
func (r *rlRun) quiet() (registers, healths int) {
	regs0, healths0 := r.registers, r.healths
	end := time.After(rlQuiet)
	for {
		select {
		case msg := <-r.sess.msgs:
			r.take(msg)
		case <-end:
			return r.registers - regs0, r.healths - healths0
		}
	}
}

// tableHasVIPs reports whether the gateway's table gives each service of
// the view the relay's VIP (none when rejected), and no other VIP.
func (r *rlRun) tableHasVIPs() bool {
	tbl := r.gw.tbl.Load()
	if len(tbl.byName) != len(r.view) {
		return false
	}
	n := 0
	for _, si := range r.view {
		s := tbl.byName[si.Name]
		if s == nil || s.vip != r.vipOf(si.Name) || s.vip6 != r.vip6Of(si.Name) {
			return false
		}
		for _, vip := range []netip.Addr{s.vip, s.vip6} {
			if vip.IsValid() {
				n++
				if tbl.lookupVIP(vip) != s {
					return false
				}
			}
		}
	}
	return len(tbl.byVIP) == n
}

// freshDefs starts a gateway with c, takes its first register and stops
// it.
func (r *rlRun) freshDefs(c *rrConfig) []tunnel.ServiceInfo {
	r.fresh++
	name := fmt.Sprintf("gw-fresh-%d", r.fresh)
	text := r.text(c, name, r.t.TempDir())
	cfg, err := conf.ParseGateway("fresh.toml", []byte(text))
	if err != nil {
		r.fatalf("a fresh gateway refuses\n%s: %v", text, err)
	}
	g, err := New(cfg, Options{Pinger: rlPinger()}, nil)
	if err != nil {
		r.fatalf("a fresh gateway: %v", err)
	}
	defer g.Close()
	if err := g.Start(); err != nil {
		r.fatalf("a fresh gateway: %v", err)
	}
	s, err := r.rl.await(name, 15*time.Second)
	if err != nil {
		r.fatalf("%v", err)
	}
	defer s.Close("fresh gateway seen")
	msg, err := tunnel.DecodeControl(s.Next())
	if err != nil {
		r.fatalf("a fresh gateway's first message: %v", err)
	}
	reg, ok := msg.(*tunnel.Register)
	if !ok {
		r.fatalf("a fresh gateway's first message is %T, want a register", msg)
	}
	return reg.Services
}

// next makes one step.
func (r *rlRun) next() {
	switch x := r.rng.Float64(); {
	case x < 0.15:
		r.broken()
	case x < 0.3:
		r.reassign()
	case x < 0.37 && r.drops < rlDrops, r.step == rlSteps/2 && r.drops == 0:
		r.drop()
	case x < 0.6:
		r.reloadTo(r.smallChange())
	default:
		r.reloadTo(r.config())
	}
	r.flows()
}

// smallChange is the running configuration with one or two things of
// one service changed: what the relay is told of (its tenants, ICMP, a
// port) or not (its health check, which may turn it up or down, backends,
// balance or timeouts).
func (r *rlRun) smallChange() *rrConfig {
	next := r.cur.clone()
	s := &next.services[r.rng.IntN(len(next.services))]
	for range 1 + r.rng.IntN(2) {
		switch r.rng.IntN(7) {
		case 0:
			for old, i := s.tenants, 0; i < 5 && slices.Equal(s.tenants, old); i++ {
				s.tenants = r.gen.serviceTenants(next) // another set, mostly
			}
		case 1:
			s.icmp = r.gen.pick([]string{"", "true", "false"})
		case 2:
			p := rrPort{proto: "udp", port: rrUDPPorts[r.rng.IntN(len(rrUDPPorts))], target: r.rng.IntN(3)}
			if s.port(p.proto, p.port) == nil {
				s.ports = append(s.ports, p)
			}
		case 3, 4:
			r.gen.health(s)
		case 5:
			s.backends = r.gen.subset(len(r.w.addrs), 1+r.rng.IntN(3))
		case 6:
			s.balance = r.gen.pick([]string{"", "round_robin", "least_conn", "source_hash"})
			r.gen.timeouts(s)
		}
	}
	r.stats["small reloads"]++
	return next
}

// reloadTo reloads the running gateway to next.
func (r *rlRun) reloadTo(next *rrConfig) {
	defs := r.freshDefs(next)
	before := cloneInfos(r.view)
	r.write(r.text(next, rlRunning, filepath.Dir(r.path)))
	d, err := r.gw.Reload()
	if err != nil {
		r.fatalf("reload to\n%s\nfailed: %v", r.text(next, rlRunning, "STATE"), err)
	}
	prev := r.cur
	r.cur = next
	changed := !slices.EqualFunc(before, defs, rlSameDef)
	registers, healths := r.settle("reloaded", defs)
	r.checkInfos("reloaded: the relay's view", r.view, r.wantInfos(defs), true)
	if !changed {
		// Health messages may still come, a register must not.
		regs, hs := r.quiet()
		registers, healths = registers+regs, healths+hs
	}
	switch {
	case changed && registers != 1:
		r.fatalf("reload from\n%s\nchanged the registrations; the relay got %d registers, want 1", r.text(prev, rlRunning, "STATE"), registers)
	case !changed && registers != 0:
		r.fatalf("reload from\n%s\nchanged no registration; the relay got %d registers, want none (health: %d messages)",
			r.text(prev, rlRunning, "STATE"), registers, healths)
	}
	if changed {
		r.stats["reloads re-registered"]++
	} else {
		r.stats["reloads without a register"]++
	}
	if healths > 0 {
		r.stats["reloads with health messages"]++
	}
	r.t.Logf("step %d: reloaded: added %v removed %v changed %d; %d registers, %d health messages",
		r.step, d.Added, d.Removed, len(d.Changed), registers, healths)
}

// rlBreaks are the ways to break a file of a gateway behind a relay: those
// of TestReloadRandom that hold there, and a pin, which it refuses.
var rlBreaks = []string{"syntax error", "unknown key", "port out of range", "overlapping sources", "check timeout above interval"}

// broken reloads a file that does not validate: the reload fails, the
// relay hears nothing, and nothing changes.
func (r *rlRun) broken() {
	bad := r.config()
	var want, what string
	for want == "" {
		if r.rng.IntN(4) == 0 {
			i := r.rng.IntN(len(bad.services))
			bad.services[i].pin = slices.Index(rrNames, bad.services[i].name)
			what, want = "a pin", "VIPs are allocated by the relay"
			break
		}
		what = rlBreaks[r.rng.IntN(len(rlBreaks))]
		for _, b := range rrBreaks {
			if b.name == what {
				want, _ = b.do(r.gen, bad)
			}
		}
	}
	tbl := r.gw.tbl.Load()
	r.write(r.text(bad, rlRunning, filepath.Dir(r.path)))
	_, err := r.gw.Reload()
	switch {
	case err == nil:
		r.fatalf("a reload with %s succeeded:\n%s", what, r.text(bad, rlRunning, "STATE"))
	case !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), want):
		r.fatalf("a reload with %s failed with %v, want an invalid configuration naming %q", what, err, want)
	case r.gw.tbl.Load() != tbl:
		r.fatalf("a reload with %s failed but changed the table", what)
	}
	if regs, hs := r.quiet(); regs != 0 || hs != 0 {
		r.fatalf("a reload with %s failed, yet the relay got %d registers and %d health messages", what, regs, hs)
	}
	r.checkInfos("after a failed reload, the relay's view", r.view, r.wantInfos(nil), true)
	r.write(r.text(r.cur, rlRunning, filepath.Dir(r.path)))
	r.stats["reloads refused: "+what]++
}

// reassign makes the relay move a service to another VIP, reject it, or
// take it back, and assign again.
func (r *rlRun) reassign() {
	if len(r.view) == 0 {
		return
	}
	name := r.view[r.rng.IntN(len(r.view))].Name
	switch {
	case r.rejected[name]:
		delete(r.rejected, name)
		r.stats["assigns: rejection lifted"]++
	case r.rng.IntN(2) == 0:
		r.rejected[name] = true
		r.stats["assigns: service rejected"]++
	case r.rng.IntN(3) == 0:
		r.movePools()
		r.stats["assigns: pools moved"]++
	default:
		r.vips[name] = r.alloc(r.pool)
		if r.pool6.IsValid() && r.rng.IntN(2) == 0 {
			r.vips6[name] = r.alloc(r.pool6)
		}
		r.stats["assigns: VIP moved"]++
	}
	r.assign()
	r.settle("assigned again", nil)
}

// drop ends the relay session: the gateway must come back and register
// what it serves now. The tags of the session die with it, and their
// flows end.
func (r *rlRun) drop() {
	r.drops++
	r.sess.close("dropped by the test")
	dead := r.openTags()
	for _, tg := range dead {
		tg.open = false
		r.tcp.closed(tg)
	}
	if r.rng.IntN(2) == 0 {
		r.movePools() // the relay restarted with another pool or pool6
	}
	// A reload while the gateway is away, at times: the new session must
	// carry it.
	settled := true
	if r.rng.IntN(2) == 0 {
		settled = false
		next := r.config()
		r.write(r.text(next, rlRunning, filepath.Dir(r.path)))
		if _, err := r.gw.Reload(); err != nil {
			r.fatalf("reload while the relay is away: %v", err)
		}
		r.cur = next
		r.view = r.freshDefs(next)
		r.stats["reloads while the relay was away"]++
	}
	r.connect("reconnected", settled)
	r.checkGone(dead, "their session ended")
	for _, tg := range dead {
		tg.goneChecked = true
	}
	r.stats["session drops"]++
}

func (r *rlRun) openTags() []*rlTag {
	var out []*rlTag
	for _, tg := range r.tags {
		if tg.open {
			out = append(out, tg)
		}
	}
	slices.SortFunc(out, func(a, b *rlTag) int { return int(a.id) - int(b.id) })
	return out
}

// checkGone: the gateway holds no flow of the tags.
func (r *rlRun) checkGone(tags []*rlTag, why string) {
	deadline := time.Now().Add(5 * time.Second)
	for _, tg := range tags {
		for {
			fs := r.gw.flows.list(func(f *flow) bool { return f.client.Addr() == tg.synth })
			if len(fs) == 0 {
				break
			}
			if time.Now().After(deadline) {
				r.fatalf("tag %d (%s of %s) closed (%s), yet %d flows of it live", tg.id, tg.service, tg.tenant, why, len(fs))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// openTag opens a tag for an agent of a random tenant to a service the
// gateway serves, or one it removed.
func (r *rlRun) openTag() *rlTag {
	var id uint32
	for id == 0 || r.tags[id] != nil {
		id = r.rng.Uint32()
	}
	names := r.cur.serviceNames()
	if r.rng.IntN(6) == 0 {
		names = rrNames
	}
	if len(r.tags) >= rlInners {
		r.fatalf("more than %d tags", rlInners)
	}
	tg := &rlTag{id: id, service: r.gen.pick(names), tenant: r.gen.pick(rlTenants), inner: rlInner(len(r.tags)), open: true}
	if s := r.cur.service(tg.service); s != nil && !slices.Contains(s.tenants, "*") && r.rng.IntN(3) != 0 {
		tg.tenant = r.gen.pick(s.tenants) // mostly an admitted one
	}
	if err := r.sess.s.Send(tunnel.TagOpen{Type: tunnel.MessageTagOpen, Tag: id, Service: tg.service, Tenant: tg.tenant,
		Identity: "ztna://" + tg.tenant + "/agent/a1", InnerAddr: tg.inner}); err != nil {
		r.fatalf("tag_open: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if in := (&trModel{g: r.gw}).tagIngress(id); in != nil {
			tg.synth = in.synth
			break
		}
		if time.Now().After(deadline) {
			r.fatalf("tag %d not open within 5 s", id)
		}
		time.Sleep(2 * time.Millisecond)
	}
	r.tags[id] = tg
	r.tcp.opened(tg)
	r.stats["tags opened"]++
	return tg
}

// rlProbe is a packet sent under a tag and what must come of it.
type rlProbe struct {
	tg    *rlTag
	kind  string // "udp", "udp6", "ping", "dns", "kept"
	what  string
	tok   string
	port  uint16 // its source port (udp, dns, kept)
	dport uint16 // its port on the VIP (udp)
	// want: an answer must come. backends: those a UDP answer may come
	// from; dns: the record a DNS answer must carry ("": none).
	want     bool
	backends []string
	dns      string
	got      string
	answered bool
}

// pickPort picks a port of proto of s (nil: none) three times in four, or
// one it lacks (rrUnmapped).
func (r *rlRun) pickPort(s *rrService, proto string) uint16 {
	ports := []uint16{rrUnmapped}
	if s != nil {
		for _, p := range s.ports {
			if p.proto == proto {
				ports = append(ports, p.port)
			}
		}
	}
	dport := ports[r.rng.IntN(len(ports))]
	if len(ports) > 1 && r.rng.IntN(4) != 0 {
		dport = ports[1+r.rng.IntN(len(ports)-1)]
	}
	return dport
}

func (r *rlRun) token() string {
	r.seq++
	return fmt.Sprintf("rl-%d-%d", r.seed%1000, r.seq)
}

func (r *rlRun) srcPort() uint16 {
	r.port++
	return r.port
}

// flows sends, under tags old and new, UDP datagrams to the services'
// ports (and one no service has), pings and DNS queries, and on each kept
// flow, and checks what comes back against the model.
func (r *rlRun) flows() {
	for range 1 + r.rng.IntN(3) {
		r.openTag()
	}
	var probes []*rlProbe
	var tcp []*rlTCPProbe
	for _, tg := range r.openTags() {
		probes = append(probes, r.probes(tg)...)
		if r.rng.IntN(2) == 0 || tg.tcp != nil {
			tcp = append(tcp, r.tcpProbes(tg)...)
		}
	}
	// A datagram under a closed tag reaches no one.
	for _, tg := range r.tags {
		if !tg.open && tg.kept != "" {
			p := &rlProbe{tg: tg, kind: "kept", what: "closed tag", tok: r.token(), port: tg.keptPort}
			r.sendUDP(p, netip.AddrPortFrom(tg.keptVIP, tg.keptDport))
			probes = append(probes, p)
			tg.kept = ""
		}
	}
	r.collect(probes)
	r.checkTCP(tcp)
	var gone []*rlTag
	for _, tg := range r.tags {
		if !tg.open && !tg.goneChecked {
			gone = append(gone, tg)
			tg.goneChecked = true
		}
	}
	r.checkGone(gone, "the relay closed them")
	r.lan()
}

// probes sends tg's packets.
func (r *rlRun) probes(tg *rlTag) []*rlProbe {
	var out []*rlProbe
	s := r.cur.service(tg.service)
	vip := r.vipOf(tg.service)
	admitted := s != nil && s.allows(tg.tenant) && vip.IsValid()
	healthy := s != nil && s.passes()
	// The kept flow, if the model can tell where it goes: the same
	// backend while the tag, the VIP, the backend and the port stay.
	if tg.kept != "" {
		addr, _, _ := strings.Cut(tg.kept, ":")
		p := &rlProbe{tg: tg, kind: "kept", what: "kept flow", tok: r.token(), port: tg.keptPort}
		port := s.portOrNil("udp", tg.keptDport)
		switch {
		case s == nil || vip != tg.keptVIP || port == nil || s.udpIdle == "300ms":
			tg.kept = "" // expired, refused or moved: nothing to tell
		case slices.ContainsFunc(s.backends, func(i int) bool { return r.w.addrs[i].String() == addr }) &&
			netip.AddrPortFrom(netip.MustParseAddr(addr), r.w.port("udp", port.target)).String() == tg.kept:
			p.want, p.backends = true, []string{tg.kept}
			r.sendUDP(p, netip.AddrPortFrom(vip, tg.keptDport))
			out = append(out, p)
		default:
			tg.kept = ""
		}
	}
	if vip.IsValid() || r.rng.IntN(3) == 0 {
		dst := vip
		if !dst.IsValid() { // a VIP the relay took away
			dst = r.vips[tg.service]
		}
		if dst.IsValid() {
			// UDP to each port of the service (and one it lacks).
			dport := r.pickPort(s, "udp")
			p := &rlProbe{tg: tg, kind: "udp", what: fmt.Sprintf("UDP to %s:%d", tg.service, dport), tok: r.token(),
				port: r.srcPort(), dport: dport}
			if sp := s.portOrNil("udp", dport); sp != nil && admitted && healthy {
				p.want = true
				for _, i := range s.backends {
					p.backends = append(p.backends, netip.AddrPortFrom(r.w.addrs[i], r.w.port("udp", sp.target)).String())
				}
			}
			r.sendUDP(p, netip.AddrPortFrom(dst, dport))
			out = append(out, p)
			ping := &rlProbe{tg: tg, kind: "ping", what: "ping " + tg.service, tok: r.token(),
				want: admitted && healthy && s.icmp != "false"}
			r.send(tg, netstacktest.EchoRequest(tg.inner, dst, uint16(r.seq), 1, []byte(ping.tok)))
			out = append(out, ping)
			// The same to the IPv6 VIP, from an IPv6 inner address:
			// a tunnel carries IPv4 only, it must reach no backend.
			if vip6 := r.vip6Of(tg.service); vip6.IsValid() && r.rng.IntN(2) == 0 {
				p6 := &rlProbe{tg: tg, kind: "udp6", what: fmt.Sprintf("IPv6 UDP to %s:%d", tg.service, dport), tok: r.token(),
					port: r.srcPort()}
				r.send(tg, rlUDP6(netip.AddrPortFrom(rlInner6, p6.port), netip.AddrPortFrom(vip6, dport), []byte(p6.tok)))
				out = append(out, p6)
			}
		}
	}
	// DNS from the tag: its tenant's view of its one service (dns.go,
	// stackDirectory).
	name := tg.service
	if r.rng.IntN(3) == 0 {
		name = r.gen.pick(rrNames)
	}
	// What the tag may see: its own service, if its tenant is admitted.
	sees := func(name string) bool {
		cs := r.cur.service(name)
		return cs != nil && cs.allows(tg.tenant) && name == tg.service
	}
	p := &rlProbe{tg: tg, kind: "dns", port: r.srcPort(), want: true}
	qname, qtype := name+".ztna.internal", uint16(1)
	switch x := r.rng.IntN(6); {
	case x < 3:
		p.what = "DNS A " + name
		if vip := r.vipOf(name); sees(name) && vip.IsValid() {
			p.dns = vip.String()
		}
	case x == 3:
		// AAAA: none from a tag, whatever the relay's IPv6 VIP (a tunnel
		// carries IPv4 only, and the agent answers none either).
		p.what, qtype = "DNS AAAA "+name, 28
	default:
		// PTR of a VIP the relay assigned (of either family): the name
		// of the tag's service, when it is that service's.
		var addrs []netip.Addr
		for _, n := range rrNames {
			addrs = append(addrs, r.vipOf(n), r.vip6Of(n))
		}
		addrs = slices.DeleteFunc(addrs, func(a netip.Addr) bool { return !a.IsValid() })
		if len(addrs) == 0 {
			addrs = []netip.Addr{r.pool.Addr().Next().Next()}
		}
		addr := addrs[r.rng.IntN(len(addrs))]
		if r.rng.IntN(2) == 0 && r.vipOf(tg.service).IsValid() {
			addr = r.vipOf(tg.service)
			if vip6 := r.vip6Of(tg.service); vip6.IsValid() && r.rng.IntN(2) == 0 {
				addr = vip6
			}
		}
		p.what, qname, qtype = "DNS PTR "+addr.String(), rlReverse(addr), 12
		if sees(tg.service) && (addr == r.vipOf(tg.service) || addr == r.vip6Of(tg.service)) {
			p.dns = tg.service + ".ztna.internal."
		}
	}
	q := dnsQueryFor(p.port, qname, qtype)
	r.send(tg, netstacktest.UDPDatagram(netip.AddrPortFrom(tg.inner, p.port), netip.AddrPortFrom(r.gw.cfg.TUN.GatewayAddr(), 53), q))
	out = append(out, p)
	return out
}

func (s *rrService) portOrNil(proto string, port uint16) *rrPort {
	if s == nil {
		return nil
	}
	return s.port(proto, port)
}

func (r *rlRun) sendUDP(p *rlProbe, dst netip.AddrPort) {
	r.send(p.tg, netstacktest.UDPDatagram(netip.AddrPortFrom(p.tg.inner, p.port), dst, []byte(p.tok)))
}

func (r *rlRun) send(tg *rlTag, pkt []byte) {
	b, err := tunnel.AppendTagged(nil, tg.id, tg.service, pkt)
	if err != nil {
		r.t.Fatal(err)
	}
	// quic-go's send queue waits 5 ms for room: on a loaded machine a
	// burst of probes may find it full. The fake relay tries again (a
	// probe it dropped would fail the model), for a while.
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := r.sess.s.SendDatagram(b)
		if err == nil {
			return
		}
		if !errors.Is(err, tunnel.ErrDatagramQueueFull) || time.Now().After(deadline) {
			r.fatalf("send: %v", err)
		}
		r.stats["sends retried: queue full"]++
		time.Sleep(time.Millisecond)
	}
}

// collect reads the tag returns until every probe that must be answered
// is, and a moment more for those that must not, and checks them.
func (r *rlRun) collect(probes []*rlProbe) {
	pending := 0
	for _, p := range probes {
		if p.want {
			pending++
		}
	}
	deadline := time.After(5 * time.Second)
	var grace <-chan time.Time
	if pending == 0 {
		grace = time.After(200 * time.Millisecond)
	}
	for {
		select {
		case rep := <-r.sess.replies:
			p := r.match(probes, rep)
			if p == nil || p.answered {
				continue
			}
			p.answered = true
			if p.want {
				pending--
				if pending == 0 {
					grace = time.After(200 * time.Millisecond)
				}
			}
		case <-grace:
			r.checkProbes(probes)
			return
		case <-deadline:
			r.checkProbes(probes)
			return
		}
	}
}

// match finds the probe a tag return answers and records what it says.
func (r *rlRun) match(probes []*rlProbe, rep rlReply) *rlProbe {
	p := rep.pkt
	if len(p) >= 48 && p[0]>>4 == 6 {
		for _, pr := range probes {
			if pr.tg.id == rep.tag && p[6] == 17 && strings.HasSuffix(string(p[48:]), "|"+pr.tok) {
				pr.got, _, _ = strings.Cut(string(p[48:]), "|")
				return pr
			}
		}
		return nil
	}
	if len(p) < 28 || p[0]>>4 != 4 {
		return nil
	}
	ihl := int(p[0]&0xf) * 4
	if len(p) < ihl+8 {
		return nil
	}
	dst := netip.AddrFrom4([4]byte(p[16:20]))
	payload := p[ihl+8:]
	for _, pr := range probes {
		if pr.tg.id != rep.tag {
			continue
		}
		if dst != pr.tg.inner {
			r.fatalf("a reply under tag %d is for %s, not its agent's %s", rep.tag, dst, pr.tg.inner)
		}
		switch {
		case p[9] == 17 && pr.kind == "dns" && binary.BigEndian.Uint16(p[ihl+2:]) == pr.port:
			pr.got = rlDNSParse(payload)
			return pr
		case p[9] == 17 && (pr.kind == "udp" || pr.kind == "kept") && strings.HasSuffix(string(payload), "|"+pr.tok):
			pr.got, _, _ = strings.Cut(string(payload), "|")
			return pr
		case p[9] == 1 && p[ihl] == 0 && pr.kind == "ping" && string(payload) == pr.tok:
			pr.got = "echo reply"
			return pr
		}
	}
	return nil
}

func (r *rlRun) checkProbes(probes []*rlProbe) {
	for _, p := range probes {
		tg := p.tg
		where := fmt.Sprintf("%s under tag %d (%s, tenant %s)", p.what, tg.id, tg.service, tg.tenant)
		switch {
		case p.kind == "dns":
			want := "no answer"
			if p.dns != "" {
				want = p.dns
			}
			none := strings.HasSuffix(p.got, "no answer")
			if !p.answered || (p.got != want && !(none && p.dns == "")) {
				r.fatalf("%s: %q (answered %v), want %s", where, p.got, p.answered, want)
			}
		case p.want && !p.answered:
			r.fatalf("%s: no answer, want one from %v", where, p.backends)
		case !p.want && p.answered:
			r.fatalf("%s: answered (%s), want none", where, p.got)
		case p.want && p.backends != nil && !slices.Contains(p.backends, p.got):
			r.fatalf("%s: answered by %s, want one of %v", where, p.got, p.backends)
		}
		// A flow to keep, unless its idle timeout may end it before
		// the next step.
		if s := r.cur.service(tg.service); p.kind == "udp" && p.answered && tg.kept == "" && s.udpIdle != "300ms" {
			tg.kept, tg.keptPort, tg.keptDport, tg.keptVIP = p.got, p.port, p.dport, r.vipOf(tg.service)
			r.stats["flows kept"]++
		}
		if p.answered {
			r.stats["answers: "+p.kind]++
		} else {
			r.stats["refused: "+p.kind]++
		}
	}
}

func (r *rlRun) finish() {
	for _, f := range slices.Clone(r.lanKept) {
		r.lanForget(f)
	}
	for _, tg := range r.tags {
		r.tcp.closed(tg)
	}
	r.sess.close("test over")
	r.gw.Close()
	keys := slices.Sorted(slices.Values(mapKeys(r.stats)))
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, r.stats[k]))
	}
	r.t.Logf("%d steps (the LAN probes %v of them): %s", rlSteps, r.lanTime.Round(time.Millisecond), strings.Join(parts, ", "))
}

// rlSameDef reports whether two registrations agree on all but health:
// the test's own, not the gateway's sameRegistration it checks.
func rlSameDef(a, b tunnel.ServiceInfo) bool {
	a.Healthy, b.Healthy = false, false
	return reflect.DeepEqual(a, b)
}
