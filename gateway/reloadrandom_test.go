package gateway

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testseed"

	"go.uber.org/goleak"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
)

// TestReloadRandom checks that a reload is a restart without one: a
// gateway started with a random configuration A and reloaded to a random
// B is seen by its users as a gateway started with B, but for what the
// documentation says a reload keeps. The seed is logged;
// ZTGATE_RELOAD_SEED=<seed> makes the same choices again.
//
// One gateway runs from a file (not watched: the test alone reloads it)
// through rrSteps reloads, on a clock that stands still but for a
// millisecond at each reload and for the steps that move it past every
// hold-down (rates refill only then: each round has client addresses of
// its own). After each
// reload that succeeds, a fresh gateway is started with the new file
// (with the running gateway's restart-only keys, which a reload names in
// restart_required and leaves as they were), and both are observed alike
// and compared, VIPs named by service:
//   - GET /v1/services (each backend's state once its checks settled),
//     GET /v1/flows;
//   - from a client address of each tenant, DNS at 10.100.0.1: A, AAAA,
//     SRV of every name a service may have, PTR of every VIP, the apex,
//     a name outside the zone; from addresses of no tenant: nothing;
//   - new TCP and UDP flows from each tenant to each port of each service
//     (as many as it has backends: which backends they reach, on which
//     port, or how they are refused, and their idle timeouts), to a port
//     no service has, to a VIP without a service, and pings;
//   - the ztgate_* series with a service label: none of a service, tenant
//     or backend the configuration lacks once their flows ended.
//
// What may differ, as documented: a service the running gateway had keeps
// its VIP unless its pin moves it (configuration.md, service.vip); a VIP
// held for a service removed or moved within vip_hold_down refuses a pin
// of another service, which fails the reload (the fresh gateway has no
// such hold); counters of a service or tenant that stayed count on
// (metrics.md). Also checked: the reload's diff (added, removed, changed
// with the fields, tenants_changed, limits_changed, restart_required); a
// chain of reloads back to a configuration applied within the hold-down
// gives every service that was never pinned its VIP of then; a reload of
// a broken file fails, says what is wrong and leaves the running
// configuration in force; flows open across a reload keep their backend
// (those of a removed service or backend until drain_timeout); new flows
// racing a reload are decided by the configuration before or after it,
// not a mix; no goroutine is left.
func TestReloadRandom(t *testing.T) {
	seed := testseed.Get(t, reloadSeedEnv)
	// Registered first, so run last: after the gateways and backends stop.
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	r := newRRRun(t, seed, false)
	for r.step = 1; r.step <= rrSteps; r.step++ {
		r.next()
	}
	r.finish()
}

// TestReloadRandomIPv6 is TestReloadRandom with IPv6: the gateway has an
// IPv6 pool (tun.pool6, or none in some of its starts), services may pin
// an IPv6 VIP (vip6), and every tenant has IPv6 clients, in the IPv6
// twins of its prefixes. Beside what TestReloadRandom sees, each round
// asks the gateway's DNS at its IPv6 address (pool6's first host) from an
// IPv6 client of each tenant, PTR included for the IPv6 VIPs, and opens
// flows from it to each port of each service's IPv6 VIP; flows kept
// across a reload go to IPv6 VIPs too. The reloads may change tun.pool6
// in the file (restart_required, the gateway keeps its pool), and some
// steps restart the running gateway on its state directory with another
// file, another pool6 or none included: the VIPs stay, but those of a
// pool6 the gateway lost (the IPv6 VIPs move into the new pool6, or go);
// after a restart, too, a gateway started afresh with the same file must
// be seen alike. Same seed variable as TestReloadRandom.
func TestReloadRandomIPv6(t *testing.T) {
	seed := testseed.Get(t, reloadSeedEnv)
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	r := newRRRun(t, seed, true)
	for r.step = 1; r.step <= rrSteps6; r.step++ {
		if r.rng.Float64() < 0.15 {
			r.restartStep()
			continue
		}
		r.next()
	}
	r.finish()
}

const (
	reloadSeedEnv = "ZTGATE_RELOAD_SEED"
	rrSteps       = 40
	rrSteps6      = 14
)

// rrRun is one run of TestReloadRandom.
type rrRun struct {
	t     *testing.T
	seed  uint64
	rng   *rand.Rand
	gen   *rrGen
	w     *rrWorld
	clk   *fakeNow
	step  int
	round int          // observation rounds so far
	addrs []netip.Addr // the running gateway's clients' addresses
	extra int          // client addresses of races and kept flows used so far

	start *rrConfig // what the running gateway started with: its restart-only keys stay
	cur   *rrConfig // what it runs
	gw    *rrGW
	obs   *rrObs // its last observation, of cur
	// history are the configurations applied since the clock last moved
	// past every hold-down, with the VIPs they gave.
	history []rrPast
	stats   map[string]int
}

type rrPast struct {
	cfg         *rrConfig
	vips, vips6 map[string]netip.Addr
}

// newRRRun starts a run; v6 adds IPv6 (TestReloadRandomIPv6).
func newRRRun(t *testing.T, seed uint64, v6 bool) *rrRun {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	r := &rrRun{t: t, seed: seed, rng: rng, w: startRRWorld(t), clk: newFakeNow(), stats: map[string]int{}}
	r.gen = &rrGen{rng: rng, w: r.w, v6: v6}
	var restart rrRestart
	if v6 {
		restart.pool6 = r.gen.pick(rrPools6)
	}
	r.gen.pool6 = restart.pool6
	r.start = r.gen.config(nil, restart)
	r.start.restart.pool6 = restart.pool6 // the gateway's pool6: a restart-only key
	r.gen.pins6(r.start)
	var addrs []netip.Addr
	for q := range rrPrefixes {
		for i := range rrSources {
			addrs = append(addrs, rrSource(q, i))
			if v6 {
				addrs = append(addrs, rrSource6(q, i))
			}
		}
	}
	r.addrs = addrs
	gw, err := startRRGateway(t, "running", r.start.toml(r.w), true, addrs, r.clk)
	if err != nil {
		t.Fatalf("start:\n%s\n%v", r.start.toml(r.w), err)
	}
	t.Cleanup(func() { r.gw.g.Close() })
	r.gw, r.cur = gw, r.start
	r.obs = r.observeAlone()
	r.history = []rrPast{{r.cur, r.obs.vips, r.obs.vips6}}
	return r
}

func (r *rrRun) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("seed %d step %d: %s\nrunning configuration:\n%s", r.seed, r.step, fmt.Sprintf(format, args...), r.cur.toml(r.w))
}

// next makes one step: a reload to a new configuration, back to one
// applied before, or to one that must fail.
func (r *rrRun) next() {
	switch x := r.rng.Float64(); {
	case x < 0.12:
		r.broken()
	case x < 0.18:
		r.conflict()
	case x < 0.3 && len(r.history) > 1:
		j := r.rng.IntN(len(r.history) - 1)
		r.stats["reloads back"]++
		r.reloadTo(r.history[j].cfg.clone(), j)
	default:
		if r.rng.Float64() < 0.3 {
			// Every hold-down passes: the VIPs removed services had are
			// free again.
			r.clk.advance(time.Hour)
			r.history = []rrPast{{r.cur, r.obs.vips, r.obs.vips6}}
			r.stats["clock moved"]++
		}
		r.reloadTo(r.gen.config(r.cur, r.cur.restart), -1)
	}
}

// reload reloads the running gateway, through POST /v1/reload or Reload.
// The clock moves a millisecond first: the VIPs held for a service by
// two reloads are then told apart by time, as they would be, and the
// newer is the one it gets back.
func (r *rrRun) reload() (Diff, error) {
	r.clk.advance(time.Millisecond)
	if r.rng.IntN(2) == 0 {
		return r.gw.g.Reload()
	}
	code, body := r.gw.call("POST", "/v1/reload")
	switch code {
	case http.StatusOK:
		var d Diff
		if err := json.Unmarshal([]byte(body), &d); err != nil {
			r.fatalf("POST /v1/reload: %v: %s", err, body)
		}
		return d, nil
	case http.StatusBadRequest:
		var e struct{ Errors []string }
		if err := json.Unmarshal([]byte(body), &e); err != nil || len(e.Errors) == 0 {
			r.fatalf("POST /v1/reload: 400 %s", body)
		}
		return Diff{}, fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(e.Errors, "\n"))
	}
	r.fatalf("POST /v1/reload: %d %s", code, body)
	return Diff{}, nil
}

// reloadTo reloads the running gateway to next (back to history[back]
// when back >= 0) and compares it with a gateway started with next.
func (r *rrRun) reloadTo(next *rrConfig, back int) {
	prev, prevObs := r.cur, r.obs
	if err := r.gw.write(next.toml(r.w)); err != nil {
		r.t.Fatal(err)
	}
	owners := r.owners(next)
	keep := r.openKeepers()
	race := r.startRace(prev, next)
	okBefore := testutil.ToFloat64(r.gw.g.m.reloads.WithLabelValues("ok"))
	d, err := r.reload()
	raced := race()
	closeAll(raced)
	if err != nil {
		closeAll(keep)
		r.pinConflict(err, owners, next)
		r.stats["reloads refused for a held VIP"]++
		r.inForce(prevObs)
		return
	}
	if n := testutil.ToFloat64(r.gw.g.m.reloads.WithLabelValues("ok")); n != okBefore+1 {
		r.fatalf("ztgate_config_reloads_total{result=\"ok\"} %v after a reload, was %v", n, okBefore)
	}
	r.checkDiff(d, prev, next)
	r.checkKept(keep, next)
	closeAll(keep)

	got := r.compareFresh(prev, prevObs, next, "reloaded")
	r.checkVIPs(prevObs, got, next, back)
	r.checkRace(raced, prev, prevObs, next, got)
	r.cur, r.obs = next, got
	r.history = append(r.history, rrPast{next, got.vips, got.vips6})
	r.stats["reloads compared"]++
	r.t.Logf("step %d: added %v removed %v changed %d tenants %v limits %v restart %v; %d kept flows, %d raced",
		r.step, d.Added, d.Removed, len(d.Changed), d.TenantsChanged, d.LimitsChanged, d.RestartRequired, len(keep), len(raced))
}

// compareFresh starts a fresh gateway with next (and the running one's
// restart-only keys), observes it and the running gateway (which went
// from prev, seen as prevObs, to next: how is what) alike and compares
// them. It returns the running gateway's observation.
func (r *rrRun) compareFresh(prev *rrConfig, prevObs *rrObs, next *rrConfig, how string) *rrObs {
	running := next.withRestart(r.start.restart)
	fresh, err := startRRGateway(r.t, "fresh", running.toml(r.w), false, r.roundAddrs(r.round+1), r.clk)
	if err != nil {
		r.fatalf("a fresh gateway refuses the configuration the running one took: %v\n%s", err, running.toml(r.w))
	}
	defer fresh.g.Close()
	r.round++
	novips := r.novips(prevObs, next)
	var got, want *rrObs
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); got = r.gw.observe(r.t, running, r.w, r.round, novips) }()
	go func() { defer wg.Done(); want = fresh.observe(r.t, running, r.w, r.round, r.novips(nil, next)) }()
	wg.Wait()
	fresh.g.Close()
	if diffs := compareObs(got, want, true); len(diffs) > 0 {
		r.fatalf("%s from\n%s\nto\n%s\nthe running gateway and a fresh one differ:\n%s",
			how, prev.toml(r.w), next.toml(r.w), strings.Join(diffs, "\n"))
	}
	r.checkPins(got, want, next)
	return got
}

// restartStep restarts the running gateway on its state directory with a
// new file, at times with other restart-only keys, pool6 among them. The
// services it had keep their VIPs (they persist in state_dir), and their
// IPv6 VIPs while pool6 stays; a fresh gateway with the same file is seen
// alike. A pin on a VIP the state has for another service would fail the
// start (configuration.md, service.vip): the file has none.
func (r *rrRun) restartStep() {
	prev, prevObs := r.cur, r.obs
	restart := r.gen.restart(r.start.restart)
	if r.rng.IntN(2) == 0 {
		restart.pool6 = r.gen.pick(append([]string{""}, rrPools6...))
	}
	pool6Before := r.gen.pool6
	r.gen.pool6 = restart.pool6
	next := r.gen.config(r.cur, restart)
	next.restart = restart
	owners := r.owners(next)
	for i := range next.services {
		s := &next.services[i]
		if o, ok := owners[s.pinned(r.w)]; ok && o != s.name {
			s.pin, s.pinVIP = -1, netip.Addr{}
		}
		if o, ok := owners[s.pinned6(r.w, next)]; ok && o != s.name {
			s.pin6 = -1
		}
	}
	if err := r.gw.write(next.toml(r.w)); err != nil {
		r.t.Fatal(err)
	}
	r.clk.advance(time.Millisecond)
	gw, err := r.gw.restart(r.addrs, r.clk)
	if err != nil {
		r.fatalf("restart with\n%s\nfailed: %v", next.toml(r.w), err)
	}
	r.gw, r.start = gw, next
	got := r.compareFresh(prev, prevObs, next, "restarted")
	for _, s := range next.services {
		if b := prevObs.vips[s.name]; !s.pinned(r.w).IsValid() && b.IsValid() && got.vips[s.name] != b {
			r.fatalf("restarted: %s moved from %s to %s", s.name, b, got.vips[s.name])
		}
		b := prevObs.vips6[s.name]
		if restart.pool6 == pool6Before && !s.pinned6(r.w, next).IsValid() && b.IsValid() && got.vips6[s.name] != b {
			r.fatalf("restarted with the same pool6: %s moved from %s to %s", s.name, b, got.vips6[s.name])
		}
	}
	r.cur, r.obs = next, got
	r.history = []rrPast{{next, got.vips, got.vips6}}
	r.stats["restarts"]++
	if restart.pool6 != pool6Before {
		r.stats["restarts to another pool6"]++
	}
	r.t.Logf("step %d: restarted, pool6 %q to %q", r.step, pool6Before, restart.pool6)
}

// roundAddrs are the client addresses of round.
func (r *rrRun) roundAddrs(round int) []netip.Addr {
	var out []netip.Addr
	for q := range rrPrefixes {
		out = append(out, rrSource(q, round))
		if r.gen.v6 {
			out = append(out, rrSource6(q, round))
		}
	}
	return out
}

// novips are VIPs without a service in next: those services of prev (an
// observation, or nil) have that next lacks, and one never handed out of
// each pool the running gateway has.
func (r *rrRun) novips(prev *rrObs, next *rrConfig) []netip.Addr {
	taken := map[netip.Addr]bool{}
	for _, a := range r.w.pins {
		taken[a] = true
	}
	for _, ps := range r.w.pins6 {
		for _, a := range ps {
			taken[a] = true
		}
	}
	var vips, vips6 map[string]netip.Addr
	if prev != nil {
		vips, vips6 = prev.vips, prev.vips6
	}
	for _, m := range []map[string]netip.Addr{vips, vips6, r.obs.vipsOrNil(), r.obs.vips6OrNil()} {
		for _, a := range m {
			taken[a] = true
		}
	}
	for _, p := range r.history {
		for _, a := range p.vips {
			taken[a] = true
		}
		for _, a := range p.vips6 {
			taken[a] = true
		}
	}
	var out []netip.Addr
	for a := netip.MustParseAddr("10.100.0.250"); ; a = a.Prev() {
		if !taken[a] {
			out = append(out, a)
			break
		}
	}
	if p := r.start.restart.pool6; p != "" {
		for a := netip.MustParsePrefix(p).Addr().Next().Next(); ; a = a.Next() {
			if !taken[a] && !r.w.homes6[p][a] {
				out = append(out, a)
				break
			}
		}
	}
	for _, m := range []map[string]netip.Addr{vips, vips6} {
		for n, a := range m {
			// Not one of a pool6 the gateway lost at a restart: outside
			// its pools, its PTR is not the zone's.
			in := a.Is4() || r.start.restart.pool6 != "" && netip.MustParsePrefix(r.start.restart.pool6).Contains(a)
			if next.service(n) == nil && in {
				out = append(out, a)
			}
		}
	}
	return out
}

func (o *rrObs) vipsOrNil() map[string]netip.Addr {
	if o == nil {
		return nil
	}
	return o.vips
}

func (o *rrObs) vips6OrNil() map[string]netip.Addr {
	if o == nil {
		return nil
	}
	return o.vips6
}

// observeAlone observes the running gateway with no fresh one to compare.
func (r *rrRun) observeAlone() *rrObs {
	r.round++
	if r.round >= rrRounds {
		r.t.Fatalf("more than %d rounds", rrRounds)
	}
	o := r.gw.observe(r.t, r.cur.withRestart(r.start.restart), r.w, r.round, r.novips(r.obs, r.cur))
	if len(o.errs) > 0 {
		r.fatalf("%s", strings.Join(o.errs, "\n"))
	}
	return o
}

// compareObs lists how got (the running gateway) differs from want (a
// fresh one, or itself before).
// facts of keys "hash/…" are compared only when both observations were
// made from the same client addresses.
func compareObs(got, want *rrObs, sameSources bool) []string {
	var diffs []string
	for _, e := range got.errs {
		diffs = append(diffs, "running: "+e)
	}
	for _, e := range want.errs {
		diffs = append(diffs, "fresh: "+e)
	}
	keys := mapKeys(got.facts)
	for k := range want.facts {
		if _, ok := got.facts[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if strings.HasPrefix(k, "hash/") && !sameSources {
			continue
		}
		if g, w := got.facts[k], want.facts[k]; g != w {
			diffs = append(diffs, fmt.Sprintf("%s:\n\trunning: %s\n\tfresh:   %s", k, g, w))
		}
	}
	for _, k := range slices.Sorted(slices.Values(mapKeys(want.subsets))) {
		for _, s := range want.subsets[k] {
			if !slices.Contains(got.subsets[k], s) {
				diffs = append(diffs, fmt.Sprintf("%s: the running gateway lacks %s", k, s))
			}
		}
	}
	return diffs
}

// owners are the services the running gateway's pool has (or holds) each
// VIP next pins for.
func (r *rrRun) owners(next *rrConfig) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, s := range next.services {
		for _, v := range []netip.Addr{s.pinned(r.w), s.pinned6(r.w, next)} {
			if !v.IsValid() {
				continue
			}
			if o, ok := r.gw.g.pool.Owner(v); ok {
				out[v] = o
			}
		}
	}
	return out
}

var rrPinConflict = regexp.MustCompile(`service "([a-z]+)" pins ([0-9a-f.:]+), which is (allocated to|held for) `)

// pinConflict: a reload failed. It may, and only, for a pin on a VIP that
// the pool had for another service: allocated, or held after it left or
// moved (configuration.md, service.vip).
func (r *rrRun) pinConflict(err error, owners map[netip.Addr]string, next *rrConfig) {
	m := rrPinConflict.FindStringSubmatch(err.Error())
	if !errors.Is(err, ErrInvalidConfig) || m == nil {
		r.fatalf("reload to\n%s\nfailed: %v", next.toml(r.w), err)
	}
	if o, ok := owners[netip.MustParseAddr(m[2])]; !ok || o == m[1] {
		r.fatalf("reload to\n%s\nrefused: %v; but the pool had %s for %q", next.toml(r.w), err, m[2], o)
	}
}

// inForce checks that the running configuration is as it was: the same
// table, the same settings, and what users see alike.
func (r *rrRun) inForce(before *rrObs) {
	o := r.observeAlone()
	if diffs := compareObs(o, before, false); len(diffs) > 0 {
		r.fatalf("after a failed reload the gateway differs from before it:\n%s", strings.Join(diffs, "\n"))
	}
	r.obs = o
}

// broken reloads a file that does not validate, or no file: the reload
// fails, names the problem, and changes nothing.
func (r *rrRun) broken() {
	tbl, running := r.gw.g.tbl.Load(), r.gw.g.running
	bad := r.gen.config(r.cur, r.cur.restart)
	var want, what string
	if r.rng.IntN(10) == 0 {
		what, want = "no file", "no such file or directory"
		if err := os.Remove(r.gw.path); err != nil {
			r.t.Fatal(err)
		}
	} else {
		for {
			b := rrBreaks[r.rng.IntN(len(rrBreaks))]
			var ok bool
			if want, ok = b.do(r.gen, bad); ok {
				what = b.name
				break
			}
		}
		if err := r.gw.write(bad.toml(r.w)); err != nil {
			r.t.Fatal(err)
		}
	}
	errsBefore := testutil.ToFloat64(r.gw.g.m.reloads.WithLabelValues("error"))
	_, err := r.reload()
	switch {
	case err == nil:
		r.fatalf("a reload with %s succeeded:\n%s", what, bad.toml(r.w))
	case !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), want):
		r.fatalf("a reload with %s failed with %v, want an invalid configuration naming %q", what, err, want)
	case r.gw.g.tbl.Load() != tbl || r.gw.g.running != running:
		r.fatalf("a reload with %s failed but changed the running table or settings", what)
	}
	if n := testutil.ToFloat64(r.gw.g.m.reloads.WithLabelValues("error")); n != errsBefore+1 {
		r.fatalf("ztgate_config_reloads_total{result=\"error\"} %v after a failed reload, was %v", n, errsBefore)
	}
	r.stats["reloads refused: "+what]++
	r.inForce(r.obs)
	if what == "no file" { // put back, for the next step
		if err := r.gw.write(r.cur.toml(r.w)); err != nil {
			r.t.Fatal(err)
		}
	}
}

// conflict reloads a configuration valid on its own whose service pins
// the VIP the running gateway gave another service that stays.
func (r *rrRun) conflict() {
	next := r.cur.clone()
	y := &next.services[r.rng.IntN(len(next.services))]
	y.pin, y.pinVIP = -1, netip.Addr{} // a pin taken away leaves it its VIP
	var names []string
	for _, n := range rrNames {
		if n != y.name {
			names = append(names, n)
		}
	}
	name := r.gen.pick(names)
	x := next.service(name)
	if x == nil {
		next.services = append(next.services, r.gen.service(name, next))
		x = &next.services[len(next.services)-1]
		y = next.service(y.name) // the append may have moved it
	}
	x.pin, x.pinVIP = -1, r.obs.vips[y.name]
	for _, s := range next.services { // the VIP is no other service's pin in the file
		if s.name != x.name && s.pinned(r.w) == x.pinVIP {
			return
		}
	}
	tbl := r.gw.g.tbl.Load()
	if err := r.gw.write(next.toml(r.w)); err != nil {
		r.t.Fatal(err)
	}
	_, err := r.reload()
	want := fmt.Sprintf("service %q pins %s, which is allocated to %q", x.name, x.pinVIP, y.name)
	switch {
	case err == nil:
		r.fatalf("a reload pinning %s's VIP for %s succeeded:\n%s", y.name, x.name, next.toml(r.w))
	case !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), want):
		r.fatalf("a reload pinning %s's VIP for %s failed with %v, want %q", y.name, x.name, err, want)
	case r.gw.g.tbl.Load() != tbl:
		r.fatalf("a reload pinning %s's VIP for %s failed but changed the table", y.name, x.name)
	}
	r.stats["reloads refused: pin on another's VIP"]++
	r.inForce(r.obs)
}

// checkDiff compares a reload's diff with the two files.
func (r *rrRun) checkDiff(d Diff, prev, next *rrConfig) {
	parse := func(c *rrConfig) *conf.Gateway {
		g, err := conf.ParseGateway("gw.toml", []byte(strings.ReplaceAll(c.toml(r.w), "STATE", "/state")))
		if err != nil {
			r.fatalf("parse:\n%s\n%v", c.toml(r.w), err)
		}
		return g
	}
	a, b, s := parse(prev), parse(next), parse(r.start)
	want := Diff{Added: []string{}, Removed: []string{}, Changed: []ServiceChange{}, RestartRequired: []string{}}
	for _, n := range next.serviceNames() {
		if prev.service(n) == nil {
			want.Added = append(want.Added, n)
		}
	}
	for _, n := range prev.serviceNames() {
		if next.service(n) == nil {
			want.Removed = append(want.Removed, n)
		}
	}
	spec := func(g *conf.Gateway, name string) *catalog.Service {
		for i := range g.Services {
			if g.Services[i].Name == name {
				return &g.Services[i]
			}
		}
		return nil
	}
	for _, n := range next.serviceNames() {
		if o := spec(a, n); o != nil {
			if f := conf.ChangedKeys(o, spec(b, n)); len(f) > 0 {
				want.Changed = append(want.Changed, ServiceChange{Name: n, Fields: f})
			}
		}
	}
	want.TenantsChanged = !reflect.DeepEqual(newTenantTable(a.Tenants), newTenantTable(b.Tenants))
	want.LimitsChanged = a.Limits.MaxFlows != b.Limits.MaxFlows || a.Limits.NewFlowsPerSecond != b.Limits.NewFlowsPerSecond ||
		a.Limits.NewFlowsBurst != b.Limits.NewFlowsBurst || a.DrainTimeout != b.DrainTimeout
	want.RestartRequired = rrRestartKeys(s, b)
	if !reflect.DeepEqual(d, want) {
		r.fatalf("reload from\n%s\nto\n%s\ndiff %+v\nwant %+v", prev.toml(r.w), next.toml(r.w), d, want)
	}
}

// rrRestartKeys names the restart-only keys the generator varies whose
// values differ between the running configuration's start and next.
func rrRestartKeys(start, next *conf.Gateway) []string {
	keys := []string{}
	for _, k := range []struct {
		key  string
		a, b any
	}{
		{"gateway.name", start.Name, next.Name},
		{"gateway.vip_hold_down", start.VIPHoldDown, next.VIPHoldDown},
		{"tun.mtu", start.TUN.MTU, next.TUN.MTU},
		{"tun.pool6", start.TUN.Pool6, next.TUN.Pool6},
		{"dns.zone", start.DNS.Zone, next.DNS.Zone},
		{"dns.ttl", start.DNS.TTL, next.DNS.TTL},
		{"limits.max_inflight_handshakes", start.Limits.MaxInflightHandshake, next.Limits.MaxInflightHandshake},
		{"discovery.min_ttl", start.Discovery.MinTTL, next.Discovery.MinTTL},
	} {
		if k.a != k.b {
			keys = append(keys, k.key)
		}
	}
	return keys
}

// checkPins: a pin gives its VIP, a vip6 pin its IPv6 VIP, in the
// running gateway and a fresh one.
func (r *rrRun) checkPins(running, fresh *rrObs, next *rrConfig) {
	for _, s := range next.services {
		if pin := s.pinned(r.w); pin.IsValid() && (running.vips[s.name] != pin || fresh.vips[s.name] != pin) {
			r.fatalf("%s pins %s: running gateway %s, fresh %s", s.name, pin, running.vips[s.name], fresh.vips[s.name])
		}
		if pin := s.pinned6(r.w, next); pin.IsValid() && (running.vips6[s.name] != pin || fresh.vips6[s.name] != pin) {
			r.fatalf("%s pins %s: running gateway %s, fresh %s", s.name, pin, running.vips6[s.name], fresh.vips6[s.name])
		}
	}
}

// checkVIPs: a service the running gateway had keeps its VIPs unless
// pinned elsewhere; back to a configuration applied within the
// hold-down, a service never pinned since has its VIPs of then.
func (r *rrRun) checkVIPs(before, running *rrObs, next *rrConfig, back int) {
	for _, s := range next.services {
		if b := before.vips[s.name]; !s.pinned(r.w).IsValid() && b.IsValid() && running.vips[s.name] != b {
			r.fatalf("%s moved from %s to %s", s.name, b, running.vips[s.name])
		}
		if b := before.vips6[s.name]; !s.pinned6(r.w, next).IsValid() && b.IsValid() && running.vips6[s.name] != b {
			r.fatalf("%s moved from %s to %s", s.name, b, running.vips6[s.name])
		}
	}
	if back < 0 {
		return
	}
	for _, s := range next.services {
		pinned, pinned6 := false, false
		for _, p := range r.history[back:] {
			if ps := p.cfg.service(s.name); ps != nil {
				pinned = pinned || ps.pinned(r.w).IsValid()
				pinned6 = pinned6 || ps.pinned6(r.w, p.cfg).IsValid()
			}
		}
		if then := r.history[back].vips[s.name]; !pinned && running.vips[s.name] != then {
			r.fatalf("back to the configuration of %d reloads ago, %s has VIP %s, had %s", len(r.history)-back, s.name, running.vips[s.name], then)
		}
		if then := r.history[back].vips6[s.name]; !pinned6 && running.vips6[s.name] != then {
			r.fatalf("back to the configuration of %d reloads ago, %s has IPv6 VIP %s, had %s", len(r.history)-back, s.name, running.vips6[s.name], then)
		}
	}
}

// rrKept is a flow opened before a reload and used after it.
type rrKept struct {
	c       net.Conn
	r       *bufio.Reader
	proto   string
	q       int    // its client's prefix
	service string // what it was bound to
	backend string // address:port
	idle    string // its idle timeout
}

// openKeepers opens up to four flows to the running gateway's services,
// from clients of their tenants, to use across the reload.
func (r *rrRun) openKeepers() []*rrKept {
	var out []*rrKept
	for range r.rng.IntN(5) {
		s := &r.cur.services[r.rng.IntN(len(r.cur.services))]
		p := s.ports[r.rng.IntN(len(s.ports))]
		q := r.rng.IntN(len(rrPrefixes))
		if tn := r.cur.tenantOf(q); tn == "" || !s.allows(tn) || !s.passes() {
			continue
		}
		src, vip := r.extraSource(q), r.obs.vips[s.name]
		if v6, ok := r.obs.vips6[s.name]; ok && r.cur.v6 && r.rng.IntN(2) == 0 {
			src, vip = rrTwin6(src), v6
		}
		res, c := r.gw.probe(p.proto, src, netip.AddrPortFrom(vip, p.port))
		if c == nil {
			continue // a limit refused it
		}
		if !strings.HasPrefix(res, "127.") {
			r.fatalf("kept flow to %s: %s", s.name, res)
		}
		k := &rrKept{c: c, proto: p.proto, q: q, service: s.name, backend: res, idle: r.gw.idleOf(p.proto, c.LocalAddr())}
		if p.proto == "tcp" {
			k.r = bufio.NewReader(c)
		}
		out = append(out, k)
	}
	return out
}

// extraSource is a client address in prefix q for a race or a kept flow.
func (r *rrRun) extraSource(q int) netip.Addr {
	r.extra++
	return rrSource(q, rrRounds+r.extra%(rrSources-rrRounds))
}

func closeAll[T interface{ close() }](xs []T) {
	for _, x := range xs {
		x.close()
	}
}

func (k *rrKept) close() { k.c.Close() }

// use sends one message on the flow and returns the backend that
// answered, "no answer" or "closed".
func (k *rrKept) use(d time.Duration) string {
	k.c.SetDeadline(time.Now().Add(d))
	defer k.c.SetDeadline(time.Time{})
	if k.proto == "udp" {
		k.c.Write([]byte("kept"))
		buf := make([]byte, 512)
		n, err := k.c.Read(buf)
		switch {
		case isTimeout(err):
			return "no answer"
		case err != nil:
			return "closed"
		}
		backend, _, _ := strings.Cut(string(buf[:n]), "|")
		return backend
	}
	if _, err := fmt.Fprintf(k.c, "kept\n"); err != nil {
		return "closed"
	}
	line, err := k.r.ReadString('\n')
	switch {
	case isTimeout(err):
		return "no answer"
	case err != nil:
		return "closed"
	}
	backend, _, _ := strings.Cut(line, " ")
	return backend
}

// checkKept: a flow open across a reload goes on to its backend, whatever
// its tenant may reach now (configuration.md, service), unless its service
// or backend left: then it lives for drain_timeout. A client whose source
// no tenant has now is dropped (configuration.md, tenant), and its flows
// end.
func (r *rrRun) checkKept(keep []*rrKept, next *rrConfig) {
	for _, k := range keep {
		addr, _, _ := strings.Cut(k.backend, ":")
		s := next.service(k.service)
		left := s == nil || !slices.ContainsFunc(s.backends, func(i int) bool { return r.w.addrs[i].String() == addr })
		switch {
		case next.tenantOf(k.q) == "" && k.proto == "udp":
			if got := k.use(300 * time.Millisecond); got != "no answer" {
				r.fatalf("UDP flow to %s from %s, whose source no tenant has now: %s, want no answer", k.service, rrPrefixes[k.q], got)
			}
		case next.tenantOf(k.q) == "" || left && next.drainTimeout() == 0:
			if k.proto == "udp" {
				continue // its next datagram may start a new flow
			}
			deadline := time.Now().Add(3 * time.Second)
			for k.use(100*time.Millisecond) != "closed" {
				if time.Now().After(deadline) {
					r.fatalf("flow to %s, whose source no tenant has now (%v) or whose service or backend left with drain_timeout 0s, still open",
						k.service, next.tenantOf(k.q) == "")
				}
			}
		default:
			if got := k.use(3 * time.Second); got != k.backend {
				r.fatalf("flow to %s over %s kept across the reload (service or backend left: %v): %s, was %s", k.service, k.proto, left, got, k.backend)
			}
			if idle := r.gw.idleOf(k.proto, k.c.LocalAddr()); idle != k.idle {
				r.fatalf("flow to %s over %s kept across the reload: idle timeout %s, was %s", k.service, k.proto, idle, k.idle)
			}
		}
	}
}

// rrRaced is a new flow opened while a reload ran.
type rrRaced struct {
	c     net.Conn
	proto string
	q     int
	dst   netip.AddrPort
	got   string
}

func (f *rrRaced) close() {
	if f.c != nil {
		f.c.Close()
	}
}

// startRace opens, in a third of the reloads, new flows from one client
// while the reload runs, to ports of services of prev and next; the
// returned function waits for them.
func (r *rrRun) startRace(prev, next *rrConfig) func() []*rrRaced {
	if r.rng.Float64() >= 0.35 {
		return func() []*rrRaced { return nil }
	}
	var qs []int
	for q := range rrPrefixes {
		if prev.tenantOf(q) != "" && next.tenantOf(q) != "" {
			qs = append(qs, q)
		}
	}
	if len(qs) == 0 {
		return func() []*rrRaced { return nil }
	}
	q := qs[r.rng.IntN(len(qs))]
	src := r.extraSource(q)
	var flows []*rrRaced
	for range 8 {
		c := prev
		if r.rng.IntN(2) == 0 {
			c = next
		}
		s := c.services[r.rng.IntN(len(c.services))]
		p := s.ports[r.rng.IntN(len(s.ports))]
		vip := s.pinned(r.w)
		if v, ok := r.obs.vips[s.name]; ok && prev.service(s.name) != nil {
			vip = v
		}
		if !vip.IsValid() {
			continue
		}
		flows = append(flows, &rrRaced{proto: p.proto, q: q, dst: netip.AddrPortFrom(vip, p.port)})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, f := range flows {
			f.got, f.c = r.gw.probe(f.proto, src, f.dst)
		}
	}()
	time.Sleep(time.Duration(r.rng.IntN(3)) * time.Millisecond)
	return func() []*rrRaced {
		<-done
		return flows
	}
}

// checkRace: each raced flow went where prev or next sends it, all of one
// or the other.
func (r *rrRun) checkRace(flows []*rrRaced, prev *rrConfig, prevObs *rrObs, next *rrConfig, nextObs *rrObs) {
	for _, f := range flows {
		allowed := map[string]bool{}
		for _, gen := range []struct {
			c    *rrConfig
			vips map[string]netip.Addr
		}{{prev, prevObs.vips}, {next, nextObs.vips}} {
			for o := range r.outcomes(gen.c, gen.vips, f) {
				allowed[o] = true
			}
		}
		if next.drainTimeout() == 0 && (strings.HasPrefix(f.got, "closed") || strings.HasPrefix(f.got, "silent")) {
			continue // accepted before the reload and drained at once by it, its answer with it
		}
		if got, _, _ := strings.Cut(f.got, " ("); !allowed[got] {
			r.fatalf("a new flow %s from %s racing the reload from\n%s\nto\n%s\nwent to %s; allowed: %v",
				f.dst, rrPrefixes[f.q], prev.toml(r.w), next.toml(r.w), f.got, slices.Sorted(slices.Values(mapKeys(allowed))))
		}
		r.stats["flows raced"]++
	}
}

// outcomes are the outcomes c allows a new flow f.
func (r *rrRun) outcomes(c *rrConfig, vips map[string]netip.Addr, f *rrRaced) map[string]bool {
	out := map[string]bool{}
	tenant := c.tenantOf(f.q)
	if c.rated(tenant) { // charged before anything else is looked at
		out["refused"], out["dropped"] = true, true
	}
	var s *rrService
	for n, a := range vips {
		if a == f.dst.Addr() {
			s = c.service(n)
		}
	}
	if s == nil {
		out["refused"] = true
		return out
	}
	p := s.port(f.proto, f.dst.Port())
	if p == nil || !s.allows(tenant) {
		out["refused"] = true
		return out
	}
	if s.checked() || !s.passes() { // its backends may be on their way up or down
		out["refused"] = true
	}
	if c.limited(tenant, s) {
		out["refused"], out["dropped"] = true, true
	}
	if s.passes() || s.checked() { // a backend takes flows until a check says otherwise
		for _, i := range s.backends {
			out[netip.AddrPortFrom(r.w.addrs[i], r.w.port(f.proto, p.target)).String()] = true
		}
	}
	return out
}

func (r *rrRun) finish() {
	r.gw.g.Close()
	keys := slices.Sorted(slices.Values(mapKeys(r.stats)))
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, r.stats[k]))
	}
	r.t.Logf("%d rounds: %s", r.round, strings.Join(parts, ", "))
}
