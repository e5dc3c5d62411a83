package catalog

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testseed"
)

const (
	// poolSeedEnv replays a TestPoolRandom run: ZTGATE_POOL_SEED=<seed>.
	poolSeedEnv = "ZTGATE_POOL_SEED"
	// poolRandomSteps bounds the steps of the sequential part; poolRandomTime
	// stops it earlier on a slow machine.
	poolRandomSteps = 2500
	poolRandomTime  = 12 * time.Second
)

// TestPoolRandom drives a pool with a state directory through a seeded
// random sequence of changes and checks it against a model after every
// step: services acquired, released and acquired again within and after the
// hold-down, pins added, moved and removed, reconciles with a new service
// set, exhaustion, a clock that moves (backwards too), flows that keep
// released VIPs in use, restarts with the same or another pool (IPv4 and
// IPv6, range and size, hold-down), a save interrupted before its rename
// (litter left), a save that fails, a second process on the directory and
// a corrupt state file. The "concurrent" part changes one pool from several
// goroutines. The seed is logged; ZTGATE_POOL_SEED replays it.
func TestPoolRandom(t *testing.T) {
	seed := testseed.Get(t, poolSeedEnv)
	t.Run("sequential", func(t *testing.T) { runPoolRandom(t, seed) })
	t.Run("concurrent", func(t *testing.T) { runPoolConcurrent(t, seed) })
}

// --- the model ---

// mSpace is the model's own arithmetic of one family's pool (it does not
// use addrSpace): the network (IPv6: subnet-router anycast) address, the
// first host (the gateway) and the IPv4 broadcast address are reserved,
// and only the first /64 of an IPv6 pool is allocated automatically.
type mSpace struct{ p netip.Prefix }

func (s mSpace) ok() bool { return s.p.IsValid() }

func (s mSpace) slots() uint64 {
	host := s.p.Addr().BitLen() - s.p.Bits()
	switch {
	case s.p.Addr().Is4():
		return 1<<host - 3
	case host >= 64:
		return math.MaxUint64 - 1 // 2^64 - 2
	}
	return 1<<host - 2
}

// addr is the address of slot n: the pool's base address + 2 + n.
func (s mSpace) addr(n uint64) netip.Addr {
	if s.p.Addr().Is4() {
		b := s.p.Addr().As4()
		binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+2+uint32(n))
		return netip.AddrFrom4(b)
	}
	b := s.p.Addr().As16()
	binary.BigEndian.PutUint64(b[8:], binary.BigEndian.Uint64(b[8:])+2+n)
	return netip.AddrFrom16(b)
}

func (s mSpace) last4() netip.Addr {
	b := s.p.Addr().As4()
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])|(1<<(32-s.p.Bits())-1))
	return netip.AddrFrom4(b)
}

func (s mSpace) usable(a netip.Addr) bool {
	if !s.ok() || !s.p.Contains(a) || a == s.p.Addr() || a == s.p.Addr().Next() {
		return false
	}
	return !a.Is4() || a != s.last4()
}

// home is the slot a name hashes to: FNV-1a (64 bits) modulo the slots.
func (s mSpace) home(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64() % s.slots()
}

// mHold is a model hold: addresses released by service at at. A model
// keeps its holds in release order.
type mHold struct {
	service string
	a       addrs
	at      time.Time
}

// poolModel is what the pool should hold.
type poolModel struct {
	allocs map[string]addrs
	holds  []mHold
}

func newModel() *poolModel { return &poolModel{allocs: map[string]addrs{}} }

func (m *poolModel) clone() *poolModel {
	return &poolModel{allocs: maps.Clone(m.allocs), holds: slices.Clone(m.holds)}
}

// owner returns the service a (valid) address is allocated to or held for.
func (m *poolModel) owner(a netip.Addr) (string, bool) {
	for s, as := range m.allocs {
		if as[fam4] == a || as[fam6] == a {
			return s, true
		}
	}
	for _, h := range m.holds {
		if h.a[fam4] == a || h.a[fam6] == a {
			return h.service, true
		}
	}
	return "", false
}

// owned returns every address of the model.
func (m *poolModel) owned() map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for s, as := range m.allocs {
		for _, a := range as {
			if a.IsValid() {
				out[a] = s
			}
		}
	}
	for _, h := range m.holds {
		for _, a := range h.a {
			if a.IsValid() {
				out[a] = h.service
			}
		}
	}
	return out
}

// unhold takes a out of the hold holding it.
func (m *poolModel) unhold(a netip.Addr) {
	for i := range m.holds {
		for f := range m.holds[i].a {
			if m.holds[i].a[f] == a {
				m.holds[i].a[f] = netip.Addr{}
			}
		}
	}
	m.holds = slices.DeleteFunc(m.holds, func(h mHold) bool { return h.a.empty() })
}

// sortedHolds returns the holds in a canonical order, to compare models:
// by release time and service, and in release order (which is state: a
// returning service gets back the VIP it released last).
func (m *poolModel) sortedHolds() []mHold {
	hs := slices.Clone(m.holds)
	slices.SortStableFunc(hs, func(x, y mHold) int {
		if c := x.at.Compare(y.at); c != 0 {
			return c
		}
		return strings.Compare(x.service, y.service)
	})
	return hs
}

func (m *poolModel) equal(o *poolModel) bool {
	return maps.Equal(m.allocs, o.allocs) && slices.EqualFunc(m.sortedHolds(), o.sortedHolds(), func(x, y mHold) bool {
		return x.service == y.service && x.a == y.a && x.at.Equal(y.at)
	})
}

// randCfg is the pool configuration of one run of the process.
type randCfg struct {
	pools    [families]netip.Prefix // IPv4, IPv6 (invalid: none)
	holdDown time.Duration
}

func (c randCfg) String() string {
	return fmt.Sprintf("pool %s pool6 %s hold-down %s", c.pools[fam4], describe6(c.pools[fam6]), c.holdDown)
}

func describe6(p netip.Prefix) string {
	if !p.IsValid() {
		return "(none)"
	}
	return p.String()
}

var (
	randPools4 = []string{"10.100.0.0/29", "10.100.0.0/28", "10.100.0.8/29", "10.100.0.0/27", "10.100.0.16/28", "10.100.0.0/24", "10.101.0.0/28"}
	randPools6 = []string{"", "", "fd00:ab::/125", "fd00:ab::/124", "fd00:ab::/120", "fd00:ab::/56", "fd00:cd::/125"}
	randHolds  = []time.Duration{20 * time.Second, 30 * time.Second, 45 * time.Second}
)

// randNames are the services of the sequential part: more than the small
// pools hold.
var randNames = []string{"web", "db", "mail", "dns", "git", "ci", "wiki", "vpn", "ldap", "s3", "cache", "queue", "metrics", "logs"}

// --- the driver ---

// randRelease is the last release of an address: by whom, when on the
// forward-only clock, and the shortest hold-down in force since (a
// restart may shorten it for the VIPs held already).
type randRelease struct {
	service  string
	at       time.Duration
	holdDown time.Duration
}

type poolRand struct {
	t     *testing.T
	seed  uint64
	rng   *rand.Rand
	dir   string
	clock *fakeClock
	// elapsed is the clock's forward movement: the independent hold-down
	// check measures with it, so that a clock set back cannot excuse a reuse.
	elapsed time.Duration
	inUse   map[netip.Addr]bool // what InUse answers

	cfg       randCfg
	p         *Pool
	m         *poolModel             // what the pool should hold
	file      *poolModel             // what the state file should hold; nil: no file yet
	filePools [families]netip.Prefix // the pools the file was saved with
	pins      map[string]addrs       // the configuration's pins, by service

	// Independent of the model, from what the pool answered:
	seen map[string]addrs           // the allocations after the previous step
	hist map[netip.Addr]randRelease // the last release of each address

	step  int
	log   []string
	stats map[string]int
}

func (r *poolRand) space(f int) mSpace { return mSpace{r.cfg.pools[f]} }

func (r *poolRand) poolCfg(c randCfg) PoolConfig {
	return PoolConfig{
		Prefix: c.pools[fam4], Prefix6: c.pools[fam6], StateDir: r.dir, HoldDown: c.holdDown,
		Now: r.clock.Now, Exclusive: true,
		InUse: func(a netip.Addr) bool { return r.inUse[a] }, // called with the pool's lock held, from this goroutine
	}
}

func (r *poolRand) logf(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf("%4d: ", r.step)+fmt.Sprintf(format, args...))
}

// fatalf fails with the seed and the last steps.
func (r *poolRand) fatalf(format string, args ...any) {
	r.t.Helper()
	first := max(0, len(r.log)-40)
	r.t.Fatalf("step %d: %s\nseed %d (%s=%d replays it); %s; last steps:\n%s",
		r.step, fmt.Sprintf(format, args...), r.seed, poolSeedEnv, r.seed, r.cfg, strings.Join(r.log[first:], "\n"))
}

func runPoolRandom(t *testing.T, seed uint64) {
	r := &poolRand{
		t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x5bd1e995)), dir: filepath.Join(t.TempDir(), "state"),
		clock: newFakeClock(), inUse: map[netip.Addr]bool{}, m: newModel(), pins: map[string]addrs{},
		seen: map[string]addrs{}, hist: map[netip.Addr]randRelease{}, stats: map[string]int{},
	}
	r.cfg = r.randomCfg()
	p, warnings, err := OpenPool(r.poolCfg(r.cfg))
	if err != nil || len(warnings) > 0 {
		r.fatalf("open: %v %q", err, warnings)
	}
	r.p = p
	t.Cleanup(func() { r.p.Close() })
	ops := []struct {
		weight int
		name   string
		do     func() bool // false: not applicable now
	}{
		{14, "acquire", r.opAcquire},
		{9, "release", r.opRelease},
		{8, "reconcile", r.opReconcile},
		{6, "pin", r.opPin},
		{10, "clock", r.opClock},
		{3, "in use", r.opInUse},
		{3, "restart", func() bool { r.restart(r.cfg, false); return true }},
		{3, "reconfigure", r.opReconfigure},
		{2, "crash", func() bool { r.restart(r.cfg, true); return true }},
		{2, "corrupt", r.opCorrupt},
		{1, "state moved away", r.opLoseState},
		{1, "save fails", r.opSaveFails},
	}
	start := time.Now()
	for r.step = 0; r.step < poolRandomSteps && time.Since(start) < poolRandomTime; r.step++ {
		for {
			i := testseed.Weighted(r.rng, len(ops), func(i int) int { return ops[i].weight })
			if ops[i].do() {
				r.stats[ops[i].name]++
				break
			}
		}
	}
	t.Logf("%d steps (at most %d in %s): %v", r.step, poolRandomSteps, poolRandomTime, r.stats)
}

func (r *poolRand) randomCfg() randCfg {
	return randCfg{
		pools:    [families]netip.Prefix{pfx(randPools4[r.rng.IntN(len(randPools4))]), pfx(randPools6[r.rng.IntN(len(randPools6))])},
		holdDown: randHolds[r.rng.IntN(len(randHolds))],
	}
}

func (r *poolRand) name() string { return randNames[r.rng.IntN(len(randNames))] }

// fmtReqs formats requests for the log: name, or name=pin[,pin6].
func fmtReqs(reqs []Request) string {
	out := make([]string, len(reqs))
	for i, q := range reqs {
		out[i] = strconv.Quote(q.Service)
		if q.VIP.IsValid() || q.VIP6.IsValid() {
			out[i] += fmt.Sprintf("=%v,%v", q.VIP, q.VIP6)
		}
	}
	return strings.Join(out, " ")
}

// request is the request of a service with its configured pins.
func (r *poolRand) request(s string) Request {
	return Request{Service: s, VIP: r.pins[s][fam4], VIP6: r.pins[s][fam6]}
}

// randomPin returns an address to pin in family f: mostly one of the pool
// (in an IPv6 pool shorter than /64 possibly beyond its first /64), else a
// reserved address or one outside the pool.
func (r *poolRand) randomPin(f int) netip.Addr {
	s := r.space(f)
	switch n := r.rng.IntN(20); {
	case n < 2 || !s.ok():
		others := []string{"10.100.0.200", "10.102.0.5", "fd00:ab::5", "fd00:ef::9", "::ffff:10.100.0.5"}
		return ip(others[r.rng.IntN(len(others))])
	case n < 4:
		reserved := []netip.Addr{s.p.Addr(), s.p.Addr().Next()}
		if f == fam4 {
			reserved = append(reserved, s.last4())
		}
		return reserved[r.rng.IntN(len(reserved))]
	case f == fam6 && s.p.Bits() < 64 && n < 6:
		b := s.p.Addr().As16()
		b[7] = byte(r.rng.IntN(256)) // another /64 of the /56
		b[15] = byte(r.rng.IntN(256))
		return netip.AddrFrom16(b)
	}
	return s.addr(r.rng.Uint64N(min(s.slots(), 300)))
}

// --- prediction ---

// prediction is what a change should do.
type prediction struct {
	m        *poolModel
	kinds    map[error]bool // the kinds of error it must report; none: it succeeds
	texts    []string       // what the error text must contain
	restored int            // VIPs given back to their services
	tied     int            // of them, chosen by release order among holds of one release time
}

var poolErrKinds = []error{ErrInvalidRequest, ErrPoolExhausted, ErrPinConflict, ErrPinOutsidePool, ErrReserved}

// pinProblem is the kind of error a pin of a in family f gets without
// looking at the state, or nil.
func (r *poolRand) pinProblem(f int, a netip.Addr) error {
	s := r.space(f)
	switch {
	case f == fam4 && !a.Is4(), f == fam6 && (!a.Is6() || a.Is4In6()), !s.ok(), !s.p.Contains(a):
		return ErrPinOutsidePool
	case !s.usable(a):
		return ErrReserved
	}
	return nil
}

// prune frees the holds whose hold-down passed and whose addresses no flow
// uses, and restarts the hold-down of those released in the future.
func (r *poolRand) prune(m *poolModel, now time.Time) {
	m.holds = slices.DeleteFunc(m.holds, func(h mHold) bool {
		return now.Sub(h.at) >= r.cfg.holdDown && !r.inUse[h.a[fam4]] && !r.inUse[h.a[fam6]]
	})
	for i := range m.holds {
		if m.holds[i].at.After(now) {
			m.holds[i].at = now
		}
	}
}

// predict computes the change of Reconcile (exclusive), Acquire or Release
// (release != ""), following the documented order: expired holds freed,
// unrequested services released, pins applied, held VIPs restored, the rest
// allocated from their name's home slot in name order.
func (r *poolRand) predict(reqs []Request, exclusive bool, release string) prediction {
	now := r.clock.Now()
	m := r.m.clone()
	pr := prediction{m: m, kinds: map[error]bool{}}
	r.prune(m, now)
	if release != "" {
		if as, ok := m.allocs[release]; ok {
			delete(m.allocs, release)
			m.holds = append(m.holds, mHold{release, as, now})
		}
		return pr
	}
	fail := func(kind error, text string) {
		pr.kinds[kind] = true
		pr.texts = append(pr.texts, text)
	}
	var clean []Request
	named := map[string]bool{}
	pinned := map[netip.Addr]bool{}
	for _, q := range reqs {
		switch {
		case q.Service == "":
			fail(ErrInvalidRequest, "no service name")
			continue
		case named[q.Service]:
			fail(ErrInvalidRequest, fmt.Sprintf("%q is requested twice", q.Service))
			continue
		}
		named[q.Service] = true
		bad := false
		for f, a := range q.pins() {
			if !a.IsValid() {
				continue
			}
			if kind := r.pinProblem(f, a); kind != nil {
				fail(kind, a.String())
				bad = true
			} else if pinned[a] {
				fail(ErrPinConflict, "both pin "+a.String())
				bad = true
			} else {
				pinned[a] = true
			}
		}
		if !bad {
			clean = append(clean, q)
		}
	}
	if exclusive {
		for s, as := range m.allocs {
			if !named[s] {
				delete(m.allocs, s)
				m.holds = append(m.holds, mHold{s, as, now})
			}
		}
	}
	slices.SortFunc(clean, func(x, y Request) int { return strings.Compare(x.Service, y.Service) })
	// Pins: a service's previous VIP is held for it.
	for _, q := range clean {
		for f, a := range q.pins() {
			cur := m.allocs[q.Service][f]
			if !a.IsValid() || a == cur {
				continue
			}
			if o, ok := m.owner(a); ok && o != q.Service {
				fail(ErrPinConflict, fmt.Sprintf("%q pins %s", q.Service, a))
				continue
			}
			m.unhold(a)
			if cur.IsValid() {
				var old addrs
				old[f] = cur
				m.holds = append(m.holds, mHold{q.Service, old, now})
			}
			as := m.allocs[q.Service]
			as[f] = a
			m.allocs[q.Service] = as
		}
	}
	// Restores: the newest VIP held for the service, the one released last:
	// the latest release time, and of those with one time the last made.
	for _, q := range clean {
		for f := range families {
			if !r.space(f).ok() || q.pins()[f].IsValid() || m.allocs[q.Service][f].IsValid() {
				continue
			}
			var a netip.Addr
			var at time.Time
			tied := false
			for _, h := range m.holds { // in release order
				if h.service != q.Service || !h.a[f].IsValid() {
					continue
				}
				if a.IsValid() && h.at.Equal(at) {
					tied = true
				}
				if !a.IsValid() || !h.at.Before(at) {
					a, at = h.a[f], h.at
				}
			}
			if !a.IsValid() {
				continue
			}
			if tied {
				pr.tied++
			}
			m.unhold(a)
			as := m.allocs[q.Service]
			as[f] = a
			m.allocs[q.Service] = as
			pr.restored++
		}
	}
	// The rest: the free address nearest the name's home slot.
	for f := range families {
		s := r.space(f)
		if !s.ok() {
			continue
		}
		var need []string
		for _, q := range clean {
			if !m.allocs[q.Service][f].IsValid() {
				need = append(need, q.Service)
			}
		}
		owned := map[netip.Addr]bool{}
		for a := range m.owned() {
			if a.Is4() == (f == fam4) {
				owned[a] = true
			}
		}
		if uint64(len(need)) > s.slots()-uint64(len(owned)) {
			fail(ErrPoolExhausted, "exhausted")
			continue
		}
		for _, svc := range need {
			slot := s.home(svc)
			for owned[s.addr(slot)] {
				if slot++; slot == s.slots() {
					slot = 0
				}
			}
			a := s.addr(slot)
			owned[a] = true
			as := m.allocs[svc]
			as[f] = a
			m.allocs[svc] = as
		}
	}
	return pr
}

// --- checks ---

// checkErr fails unless err reports exactly the predicted kinds of error.
func (r *poolRand) checkErr(err error, pr prediction) {
	r.t.Helper()
	if len(pr.kinds) == 0 {
		if err != nil {
			r.fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		r.fatalf("no error, want %v", slices.Collect(maps.Keys(pr.kinds)))
	}
	for _, k := range poolErrKinds {
		if errors.Is(err, k) != pr.kinds[k] {
			r.fatalf("error %q: matches %v is %v, want %v", err, k, errors.Is(err, k), pr.kinds[k])
		}
	}
	for _, text := range pr.texts {
		if !strings.Contains(err.Error(), text) {
			r.fatalf("error %q does not say %q", err, text)
		}
	}
	if !strings.HasPrefix(err.Error(), "catalog: ") {
		r.fatalf("error %q does not name its package", err)
	}
}

// compare fails unless the pool answers what the model holds.
func (r *poolRand) compare() {
	r.t.Helper()
	var want []Allocation
	for s, as := range r.m.allocs {
		want = append(want, Allocation{Service: s, VIP: as[fam4], VIP6: as[fam6]})
	}
	slices.SortFunc(want, func(x, y Allocation) int { return strings.Compare(x.Service, y.Service) })
	if got := r.p.Allocations(); !slices.Equal(got, want) {
		r.fatalf("allocations\n%v\nwant\n%v", got, want)
	}
	now := r.clock.Now()
	held := 0 // holds over are not counted, though they stay until the next change
	for _, h := range r.m.holds {
		if h.a[fam4].IsValid() && (now.Sub(h.at) < r.cfg.holdDown || r.inUse[h.a[fam4]] || r.inUse[h.a[fam6]]) {
			held++
		}
	}
	if u, h, c := r.p.Usage(); u != len(want) || h != held || uint64(c) != r.space(fam4).slots() {
		r.fatalf("Usage = %d used, %d held, capacity %d; want %d, %d, %d", u, h, c, len(want), held, r.space(fam4).slots())
	}
	owned := r.m.owned()
	for a, s := range owned {
		if o, ok := r.p.Owner(a); !ok || o != s {
			r.fatalf("Owner(%s) = %q, %v; want %q", a, o, ok, s)
		}
	}
	for f := range families {
		s := r.space(f)
		if !s.ok() {
			continue
		}
		for range 3 {
			a := s.addr(r.rng.Uint64N(min(s.slots(), 300)))
			if _, mine := owned[a]; !mine {
				if o, ok := r.p.Owner(a); ok {
					r.fatalf("Owner(%s) = %q, want none", a, o)
				}
			}
		}
	}
	for _, s := range randNames {
		wantHolds := slices.ContainsFunc(r.m.holds, func(h mHold) bool {
			return h.service == s && (now.Sub(h.at) < r.cfg.holdDown || r.inUse[h.a[fam4]] || r.inUse[h.a[fam6]])
		})
		if got := r.p.Holds(s); got != wantHolds {
			r.fatalf("Holds(%q) = %v, want %v", s, got, wantHolds)
		}
	}
}

// observe checks, from the pool's answers alone, that no address is given
// to two services, every address is usable, and no address released by one
// service goes to another within the hold-down; then it records the
// releases of this step.
func (r *poolRand) observe() {
	r.t.Helper()
	cur := map[string]addrs{}
	by := map[netip.Addr]string{}
	for _, a := range r.p.Allocations() {
		as := addrs{a.VIP, a.VIP6}
		cur[a.Service] = as
		if !a.VIP.IsValid() {
			r.fatalf("%s: allocated without an IPv4 VIP", a.Service)
		}
		for f, v := range as {
			if !v.IsValid() {
				continue
			}
			if !r.space(f).usable(v) {
				r.fatalf("%s: %s is not a usable address of the pool", a.Service, v)
			}
			if other, dup := by[v]; dup {
				r.fatalf("%s given to %s and %s", v, other, a.Service)
			}
			by[v] = a.Service
		}
	}
	for s, old := range r.seen {
		for f, a := range old {
			if a.IsValid() && cur[s][f] != a {
				r.hist[a] = randRelease{s, r.elapsed, r.cfg.holdDown}
			}
		}
	}
	for s, as := range cur {
		for f, a := range as {
			if !a.IsValid() || r.seen[s][f] == a {
				continue
			}
			if h, ok := r.hist[a]; ok && h.service != s && r.elapsed-h.at < h.holdDown {
				r.fatalf("%s went to %s %s after %s released it (hold-down %s)", a, s, r.elapsed-h.at, h.service, h.holdDown)
			}
		}
	}
	r.seen = cur
}

// checkStable fails unless every service the change did not release or
// re-pin kept its VIPs (checked on the pool's answers, not the model).
func (r *poolRand) checkStable(reqs []Request, exclusive bool, release string) {
	r.t.Helper()
	asked := map[string]Request{}
	for _, q := range reqs {
		asked[q.Service] = q
	}
	for s, old := range r.seen {
		a, ok := r.p.Lookup(s)
		q, requested := asked[s]
		switch {
		case s == release || (exclusive && !requested):
			if ok {
				r.fatalf("%s still allocated after its release", s)
			}
			continue
		case !ok:
			r.fatalf("%s lost its allocation %v", s, old)
		}
		for f, v := range (addrs{a.VIP, a.VIP6}) {
			if old[f].IsValid() && v != old[f] && !(requested && q.pins()[f] == v) {
				r.fatalf("%s moved from %s to %s", s, old[f], v)
			}
		}
	}
}

// --- steps ---

// change runs one change on the pool and checks it against the model.
func (r *poolRand) change(reqs []Request, exclusive bool, release string) {
	r.t.Helper()
	pr := r.predict(reqs, exclusive, release)
	before := r.stateFile()
	var err error
	var got map[string]Allocation
	switch {
	case release != "":
		r.logf("Release(%s)", release)
		err = r.p.Release(release)
	case exclusive:
		r.logf("Reconcile(%s)", fmtReqs(reqs))
		got, err = r.p.Reconcile(reqs)
	default:
		r.logf("Acquire(%s)", fmtReqs(reqs))
		var a Allocation
		a, err = r.p.Acquire(reqs[0])
		got = map[string]Allocation{a.Service: a}
	}
	if err != nil {
		r.logf("  -> %v", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	r.checkErr(err, pr)
	for kind := range pr.kinds {
		r.stats["error: "+kind.Error()]++
	}
	if err != nil {
		if after := r.stateFile(); !bytes.Equal(after, before) {
			r.fatalf("a failed change rewrote the state file:\n%s\nto\n%s", before, after)
		}
		r.compare()
		r.observe()
		return
	}
	for s, a := range got {
		if want := r.alloc(pr.m, s); a != want {
			r.fatalf("result for %s: %v, want %v", s, a, want)
		}
	}
	if len(got) != len(reqs) && release == "" {
		r.fatalf("%d results for %d requests", len(got), len(reqs))
	}
	r.stats["VIPs given back"] += pr.restored
	r.stats["VIPs given back by release order"] += pr.tied
	if saves, after := r.wouldSave(pr.m), r.stateFile(); saves == bytes.Equal(before, after) {
		r.fatalf("the state file was rewritten: %v, want %v (an unchanged state is not written)", !saves, saves)
	}
	r.commit(pr.m)
	r.compare()
	r.checkStable(reqs, exclusive, release)
	r.observe()
}

func (r *poolRand) alloc(m *poolModel, s string) Allocation {
	as := m.allocs[s]
	return Allocation{Service: s, VIP: as[fam4], VIP6: as[fam6]}
}

// commit makes m the model after a successful change: the state file is
// rewritten when the state or the pools differ from what it holds. A
// release remembered for an address the pool no longer has is forgotten:
// the state file dropped it, and the pool may hand it out once it is back.
func (r *poolRand) commit(m *poolModel) {
	r.m = m
	if r.file == nil || !m.equal(r.file) || r.filePools != r.cfg.pools {
		r.file, r.filePools = m.clone(), r.cfg.pools
	}
	for a := range r.hist {
		if !r.space(fam4).usable(a) && !r.space(fam6).usable(a) {
			delete(r.hist, a)
		}
	}
}

// wouldSave reports whether a successful change to m rewrites the state file.
func (r *poolRand) wouldSave(m *poolModel) bool {
	return r.file == nil || !m.equal(r.file) || r.filePools != r.cfg.pools
}

// stateFile returns the state file's contents (nil when there is none).
func (r *poolRand) stateFile() []byte {
	data, err := os.ReadFile(filepath.Join(r.dir, StateFileName))
	if err != nil {
		if st, serr := os.Stat(r.dir); errors.Is(err, os.ErrNotExist) || (serr == nil && !st.IsDir()) {
			return nil // no file yet, or opSaveFails put a file in the directory's place
		}
		r.fatalf("read the state file: %v", err)
	}
	return data
}

func (r *poolRand) opAcquire() bool {
	q := r.request(r.name())
	if r.rng.IntN(8) == 0 {
		q.VIP = r.randomPin(fam4)
	}
	r.change([]Request{q}, false, "")
	return true
}

func (r *poolRand) opRelease() bool {
	s := r.name()
	if names := slices.Sorted(maps.Keys(r.m.allocs)); len(names) > 0 && r.rng.IntN(5) > 0 {
		s = names[r.rng.IntN(len(names))]
	}
	r.change(nil, false, s)
	return true
}

// opReconcile reconciles a new service set with its configured pins, now
// and then with a bad request in it.
func (r *poolRand) opReconcile() bool {
	var reqs []Request
	p := []float64{0, 0.3, 0.6, 0.9, 1}[r.rng.IntN(5)]
	for _, s := range randNames {
		if r.rng.Float64() < p {
			reqs = append(reqs, r.request(s))
		}
	}
	if r.rng.IntN(10) == 0 {
		bad := []Request{{}, {Service: "web", VIP: ip("fd00:ab::7")}, {Service: "x", VIP6: r.randomPin(fam6)}, {Service: "y", VIP: r.randomPin(fam4)}}
		reqs = append(reqs, bad[r.rng.IntN(len(bad))])
		if len(reqs) > 1 && r.rng.IntN(2) == 0 {
			reqs = append(reqs, reqs[0]) // a service twice
		}
	}
	r.rng.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
	r.change(reqs, true, "")
	return true
}

// opPin adds, moves or removes a configured pin and acquires the service;
// a pin the pool refuses is taken out of the configuration again. Now and
// then it moves the pin again at the same instant, and releases the
// service and drops its pin: it has several holds of one release time,
// and gets back the VIP it released last when it returns.
func (r *poolRand) opPin() bool {
	s := r.name()
	f := fam4
	if r.cfg.pools[fam6].IsValid() && r.rng.IntN(3) == 0 {
		f = fam6
	}
	r.pin(s, f)
	if r.rng.IntN(4) == 0 {
		r.pin(s, f)
		if r.rng.IntN(2) == 0 {
			r.change(nil, false, s)
			as := r.pins[s]
			as[f] = netip.Addr{} // it comes back without the pin
			r.pins[s] = as
		}
	}
	return true
}

func (r *poolRand) pin(s string, f int) {
	old := r.pins[s]
	next := old
	if old[f].IsValid() && r.rng.IntN(3) == 0 {
		next[f] = netip.Addr{}
	} else {
		next[f] = r.randomPin(f)
	}
	r.pins[s] = next
	r.logf("pin %s %v -> %v", s, old, next)
	before := r.m
	r.change([]Request{r.request(s)}, false, "")
	if r.m == before { // refused
		r.pins[s] = old
	}
}

// opClock moves the clock: a little, to just before or exactly at the end
// of a hold-down, far, or back.
func (r *poolRand) opClock() bool {
	now := r.clock.Now()
	var d time.Duration
	switch n := r.rng.IntN(10); {
	case n < 5:
		d = time.Duration(1+r.rng.IntN(10_000)) * time.Millisecond
	case n < 8 && len(r.m.holds) > 0:
		h := r.m.holds[r.rng.IntN(len(r.m.holds))]
		d = h.at.Add(r.cfg.holdDown).Sub(now) - time.Duration(r.rng.IntN(2))*time.Nanosecond
		if d <= 0 {
			d = time.Millisecond
		}
	case n < 9:
		d = 2*r.cfg.holdDown + time.Duration(r.rng.IntN(60))*time.Second
	default:
		d = -time.Duration(1+r.rng.IntN(20_000)) * time.Millisecond
	}
	r.clock.Advance(d)
	if d > 0 {
		r.elapsed += d
	}
	r.logf("clock %+v", d)
	r.compare()
	return true
}

// opInUse makes flows to an address of the pool start or end.
func (r *poolRand) opInUse() bool {
	owned := slices.SortedFunc(maps.Keys(r.m.owned()), netip.Addr.Compare)
	if len(owned) == 0 || r.rng.IntN(4) == 0 {
		clear(r.inUse)
		r.logf("no flows")
	} else {
		a := owned[r.rng.IntN(len(owned))]
		r.inUse[a] = !r.inUse[a]
		r.logf("flows to %s: %v", a, r.inUse[a])
	}
	r.compare()
	return true
}

// opReconfigure restarts with another pool or hold-down; the operator
// drops the pins the new pool does not have room for.
func (r *poolRand) opReconfigure() bool {
	next := r.cfg
	switch r.rng.IntN(4) {
	case 0:
		next.pools[fam6] = pfx(randPools6[r.rng.IntN(len(randPools6))])
	case 1:
		next.holdDown = randHolds[r.rng.IntN(len(randHolds))]
	default:
		next.pools[fam4] = pfx(randPools4[r.rng.IntN(len(randPools4))])
	}
	for s, as := range r.pins {
		for f, a := range as {
			if a.IsValid() && !(mSpace{next.pools[f]}).usable(a) {
				as[f] = netip.Addr{}
			}
		}
		r.pins[s] = as
	}
	r.restart(next, false)
	return true
}

// loaded is the model of a pool opened with the current configuration on
// the state file, and how many warnings the opening gives.
func (r *poolRand) loaded() (*poolModel, int) {
	m := newModel()
	if r.file == nil {
		return m, 0
	}
	warnings := 0
	for f, p := range r.filePools {
		if p.IsValid() && p != r.cfg.pools[f] {
			warnings++
		}
	}
	keep := func(as addrs) addrs {
		for f, a := range as {
			if a.IsValid() && !r.space(f).usable(a) {
				as[f] = netip.Addr{}
				warnings++
			}
		}
		return as
	}
	now := r.clock.Now()
	var released []mHold
	for _, s := range slices.Sorted(maps.Keys(r.file.allocs)) {
		switch kept := keep(r.file.allocs[s]); {
		case kept[fam4].IsValid():
			m.allocs[s] = kept
		case !kept.empty(): // its IPv6 VIP is held for it from now
			released = append(released, mHold{s, kept, now})
		}
	}
	for _, h := range r.file.holds {
		if kept := keep(h.a); !kept.empty() {
			m.holds = append(m.holds, mHold{h.service, kept, h.at})
		}
	}
	// Released after every hold of the file; the pool orders the holds it
	// loads by release time (a clock set back may have left later ones).
	m.holds = append(m.holds, released...)
	slices.SortStableFunc(m.holds, func(x, y mHold) int { return x.at.Compare(y.at) })
	return m, warnings
}

// restart ends the process and starts it again with cfg, after a crash
// in the middle of a save when litter is set (the temporary file written,
// not yet renamed); now and then a second process tries the directory
// first.
func (r *poolRand) restart(cfg randCfg, litter bool) {
	r.t.Helper()
	r.logf("restart with %s (interrupted save: %v)", cfg, litter)
	if r.rng.IntN(4) == 0 {
		if q, _, err := OpenPool(r.poolCfg(cfg)); !errors.Is(err, ErrStateDirInUse) {
			q.Close()
			r.fatalf("a second process on the state directory: %v, want ErrStateDirInUse", err)
		}
	}
	if err := r.p.Close(); err != nil {
		r.fatalf("close: %v", err)
	}
	if litter {
		data := r.stateFile()
		for range 1 + r.rng.IntN(2) {
			name := filepath.Join(r.dir, "."+StateFileName+".tmp-"+strconv.Itoa(r.rng.IntN(1e9)))
			if err := os.WriteFile(name, data[:r.rng.IntN(len(data)+1)], 0o600); err != nil {
				r.fatalf("%v", err)
			}
		}
	}
	r.cfg = cfg
	for a, h := range r.hist {
		h.holdDown = min(h.holdDown, cfg.holdDown)
		r.hist[a] = h
	}
	r.reopen()
}

// reopen opens the pool on the state directory and checks what it loaded.
func (r *poolRand) reopen() {
	r.t.Helper()
	p, warnings, err := OpenPool(r.poolCfg(r.cfg))
	if err != nil {
		r.fatalf("reopen: %v", err)
	}
	r.p = p
	m, n := r.loaded()
	if len(warnings) != n {
		r.fatalf("%d warnings, want %d: %q", len(warnings), n, warnings)
	}
	for _, w := range warnings {
		if !strings.Contains(w, p.Path()) {
			r.fatalf("warning %q does not name the state file", w)
		}
	}
	if temps, _ := filepath.Glob(filepath.Join(r.dir, tempPattern)); len(temps) > 0 {
		r.fatalf("temporary files left after a start: %q", temps)
	}
	r.m = m
	r.compare()
	r.observe()
}

// opCorrupt replaces the state file with a damaged copy while the process
// is down: the start must fail with a clear error and leave the file alone
// (or, for a changed byte that still makes a valid file, load a consistent
// state); with the good file back, it starts as before.
func (r *poolRand) opCorrupt() bool {
	good := r.stateFile()
	if good == nil {
		return false
	}
	bad, how, must := r.damage(good)
	r.logf("corrupt state file: %s", how)
	if err := r.p.Close(); err != nil {
		r.fatalf("close: %v", err)
	}
	path := filepath.Join(r.dir, StateFileName)
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		r.fatalf("%v", err)
	}
	p, _, err := OpenPool(r.poolCfg(r.cfg))
	switch {
	case err == nil && must:
		p.Close()
		r.fatalf("a state file %s loaded:\n%s", how, bad)
	case err == nil:
		checkConsistentPool(r, p)
		p.Close()
		r.stats["damaged file loaded"]++
	case !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "to recover"):
		r.fatalf("state file %s: %v; want ErrCorruptState naming the file and the recovery", how, err)
	}
	if after := r.stateFile(); !bytes.Equal(after, bad) {
		r.fatalf("opening a damaged state file changed it")
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		r.fatalf("%v", err)
	}
	r.reopen()
	return true
}

// opLoseState moves the state file away while the process is down, the
// documented way out of a corrupt one: the pool starts empty, and the
// history of releases is void (VIPs may change, clients resolve again).
func (r *poolRand) opLoseState() bool {
	if err := r.p.Close(); err != nil {
		r.fatalf("close: %v", err)
	}
	path := filepath.Join(r.dir, StateFileName)
	if err := os.Rename(path, path+".bad"); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.fatalf("%v", err)
	}
	r.logf("state file moved away")
	r.file = nil
	clear(r.hist)
	r.seen = map[string]addrs{}
	r.reopen()
	return true
}

// damage returns a damaged copy of a state file, what was done, and
// whether a start must refuse it.
func (r *poolRand) damage(good []byte) ([]byte, string, bool) {
	switch r.rng.IntN(7) {
	case 0:
		return nil, "emptied", true
	case 1:
		n := r.rng.IntN(len(good) - 1) // at least its closing brace goes
		return good[:n], fmt.Sprintf("truncated to %d of %d bytes", n, len(good)), true
	case 2:
		return append(slices.Clone(good), "{}"...), "with data after it", true
	case 3:
		return bytes.Replace(good, []byte(`"version": 1`), []byte(`"version": 2`), 1), "of version 2", true
	case 4:
		var f stateFile
		if err := json.Unmarshal(good, &f); err != nil {
			r.fatalf("the state file does not parse: %v", err)
		}
		if len(f.Allocations) < 2 {
			break
		}
		f.Allocations[1].VIP = f.Allocations[0].VIP
		data, err := json.Marshal(f)
		if err != nil {
			r.fatalf("%v", err)
		}
		return data, "with one VIP twice", true
	case 5:
		junk := make([]byte, 1+r.rng.IntN(64))
		for i := range junk {
			junk[i] = byte(r.rng.IntN(256))
		}
		junk[0] = 'x'
		return junk, "replaced by junk", true
	}
	bad := slices.Clone(good)
	i := r.rng.IntN(len(bad))
	bad[i] = byte(r.rng.IntN(256))
	return bad, fmt.Sprintf("with byte %d changed to %#x", i, bad[i]), false
}

// checkConsistentPool fails unless no address of p is given twice and each
// is usable (for a pool the model does not know).
func checkConsistentPool(r *poolRand, p *Pool) {
	r.t.Helper()
	seen := map[netip.Addr]bool{}
	for _, a := range p.Allocations() {
		for f, v := range (addrs{a.VIP, a.VIP6}) {
			if !v.IsValid() {
				continue
			}
			if seen[v] || !r.space(f).usable(v) {
				r.fatalf("%s of %s: given twice or not usable", v, a.Service)
			}
			seen[v] = true
			if o, ok := p.Owner(v); !ok || o != a.Service {
				r.fatalf("Owner(%s) = %q, want %q", v, o, a.Service)
			}
		}
	}
}

// opSaveFails makes the state directory unusable (a file in its place)
// and runs a change: one that needs a save fails and changes nothing, one
// that needs none succeeds.
func (r *poolRand) opSaveFails() bool {
	away := r.dir + ".away"
	if err := os.Rename(r.dir, away); err != nil {
		r.fatalf("%v", err)
	}
	if err := os.WriteFile(r.dir, nil, 0o600); err != nil {
		r.fatalf("%v", err)
	}
	var reqs []Request
	release := ""
	if r.rng.IntN(2) == 0 {
		release = r.name()
	} else {
		reqs = []Request{r.request(r.name())}
	}
	pr := r.predict(reqs, false, release)
	if len(pr.kinds) == 0 && r.wouldSave(pr.m) {
		r.logf("unsaveable: Acquire(%s) or Release(%q)", fmtReqs(reqs), release)
		var err error
		if release != "" {
			err = r.p.Release(release)
		} else {
			_, err = r.p.Acquire(reqs[0])
		}
		if err == nil || !strings.Contains(err.Error(), "save VIP state") {
			r.fatalf("a change that cannot be saved: %v, want a save error", err)
		}
		r.compare()
	} else {
		r.logf("nothing to save:")
		r.change(reqs, false, release)
	}
	if err := os.Remove(r.dir); err != nil {
		r.fatalf("%v", err)
	}
	if err := os.Rename(away, r.dir); err != nil {
		r.fatalf("%v", err)
	}
	return true
}

// --- the concurrent part ---

// runPoolConcurrent changes one pool from several goroutines, each with
// services of its own and a few pins they compete for, in two phases: a
// still clock, where no hold-down ever ends, so that no address may ever
// go to a second service, then a running clock. A checker reads the pool
// meanwhile. Afterwards the pool, its usage figures and the pool loaded
// again from its state file agree.
func runPoolConcurrent(t *testing.T, seed uint64) {
	const workers, services, rounds = 6, 5, 120 // 30 services: more than the /27 holds
	clock := newFakeClock()
	cfg := PoolConfig{Prefix: pfx("10.100.0.0/27"), Prefix6: pfx("fd00:ab::/120"), StateDir: t.TempDir(),
		HoldDown: 30 * time.Second, Now: clock.Now, Exclusive: true}
	p := mustOpen(t, cfg)
	shared := []netip.Addr{ip("10.100.0.20"), ip("10.100.0.21"), ip("10.100.0.22")}

	var mu sync.Mutex
	first := map[netip.Addr]string{} // the service each address went to first (phase 1)
	claim := func(s string, a netip.Addr) error {
		if !a.IsValid() {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if o, ok := first[a]; ok && o != s {
			return fmt.Errorf("%s went to %s, but %s had it and the clock has not moved", a, s, o)
		}
		first[a] = s
		return nil
	}
	mines := make([]map[string]Allocation, workers) // what each worker's services have
	for w := range mines {
		mines[w] = map[string]Allocation{}
	}
	worker := func(w int, rng *rand.Rand, still bool) error {
		mine := mines[w]
		ever := map[string][]netip.Addr{} // the IPv4 VIPs each service had in this phase
		for range rounds {
			s := fmt.Sprintf("w%d-%d", w, rng.IntN(services))
			cur, allocated := mine[s]
			switch n := rng.IntN(10); {
			case n < 6:
				q := Request{Service: s}
				if rng.IntN(6) == 0 {
					q.VIP = shared[rng.IntN(len(shared))]
				}
				a, err := p.Acquire(q)
				switch {
				case (errors.Is(err, ErrPinConflict) && q.VIP.IsValid()) || (errors.Is(err, ErrPoolExhausted) && !allocated):
					if got, ok := p.Lookup(s); ok != allocated || (ok && got != cur) {
						return fmt.Errorf("%s: a failed Acquire changed %v to %v", s, cur, got)
					}
					continue
				case err != nil:
					return fmt.Errorf("Acquire(%v): %w", q, err)
				case q.VIP.IsValid() && a.VIP != q.VIP:
					return fmt.Errorf("%s pins %s, got %s", s, q.VIP, a.VIP)
				case !q.VIP.IsValid() && allocated && a != cur:
					return fmt.Errorf("%s moved from %v to %v", s, cur, a)
				case !q.VIP.IsValid() && !allocated && still && len(ever[s]) > 0 && !slices.Contains(ever[s], a.VIP):
					return fmt.Errorf("%s came back within the hold-down with %s, not one of its own %v", s, a.VIP, ever[s])
				}
				if still {
					if err := errors.Join(claim(s, a.VIP), claim(s, a.VIP6)); err != nil {
						return err
					}
				}
				mine[s] = a
				ever[s] = append(ever[s], a.VIP)
			case n < 9:
				if err := p.Release(s); err != nil {
					return err
				}
				delete(mine, s)
				if _, ok := p.Lookup(s); ok {
					return fmt.Errorf("%s allocated after its release", s)
				}
				if still && allocated && !p.Holds(s) {
					return fmt.Errorf("%s released and not held with a still clock", s)
				}
			default:
				if got, ok := p.Lookup(s); ok != allocated || (ok && got != cur) {
					return fmt.Errorf("Lookup(%s) = %v, %v; want %v, %v", s, got, ok, cur, allocated)
				}
			}
		}
		return nil
	}
	for phase, still := range []bool{true, false} {
		var wg sync.WaitGroup
		errs := make([]error, workers+1)
		for w := range workers {
			rng := rand.New(rand.NewPCG(seed, uint64(phase*workers+w)))
			wg.Go(func() { errs[w] = worker(w, rng, still) })
		}
		done := make(chan struct{})
		var side sync.WaitGroup
		side.Go(func() { // the checker, and in phase 2 the clock
			rng := rand.New(rand.NewPCG(seed, 99))
			for {
				seen := map[netip.Addr]bool{}
				for _, a := range p.Allocations() {
					for f, v := range (addrs{a.VIP, a.VIP6}) {
						switch {
						case !v.IsValid():
						case seen[v] || !p.spaces[f].usable(v):
							errs[workers] = fmt.Errorf("%s of %s is given twice or not usable", v, a.Service)
							return
						case still:
							if err := claim(a.Service, v); err != nil {
								errs[workers] = err
								return
							}
						}
						seen[v] = true
					}
				}
				if !still {
					clock.Advance(time.Duration(rng.IntN(3000)) * time.Millisecond)
				}
				select {
				case <-done:
					return
				case <-time.After(200 * time.Microsecond):
				}
			}
		})
		wg.Wait()
		close(done)
		side.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("phase %d (seed %d): %v", phase+1, seed, err)
		}
		var want []Allocation
		for _, mine := range mines {
			want = slices.AppendSeq(want, maps.Values(mine))
		}
		slices.SortFunc(want, func(x, y Allocation) int { return strings.Compare(x.Service, y.Service) })
		if got := p.Allocations(); !slices.Equal(got, want) {
			t.Fatalf("phase %d (seed %d): allocations\n%v\nwant what the workers got\n%v", phase+1, seed, got, want)
		}
		checkConsistent(t, p)
		owners := checkUsage(t, p, clock.Now(), cfg.HoldDown)
		p.Close()
		p = mustOpen(t, cfg) // a restart: the same state
		if got := p.Allocations(); !slices.Equal(got, want) {
			t.Fatalf("phase %d (seed %d): after a restart\n%v\nwant\n%v", phase+1, seed, got, want)
		}
		if again := checkUsage(t, p, clock.Now(), cfg.HoldDown); !maps.Equal(again, owners) {
			t.Fatalf("phase %d (seed %d): owners after a restart\n%v\nwant\n%v", phase+1, seed, again, owners)
		}
	}
	p.Close()
}

// checkUsage fails unless Usage agrees with the allocations and the owners
// of the pool's addresses, less the holds whose hold-down had passed at
// now (still owners until the next change, but not counted), and returns
// the owners.
func checkUsage(t *testing.T, p *Pool, now time.Time, holdDown time.Duration) map[netip.Addr]string {
	t.Helper()
	owners := map[netip.Addr]string{}
	owned4 := 0
	for f, s := range p.spaces {
		for n := range min(s.slots, 1024) {
			if o, ok := p.Owner(s.addr(n)); ok {
				owners[s.addr(n)] = o
				if f == fam4 {
					owned4++
				}
			}
		}
	}
	p.mu.Lock()
	stale := 0
	for _, h := range p.t.holds {
		if h.addrs[fam4].IsValid() && now.Sub(h.releasedAt) >= holdDown {
			stale++
		}
	}
	p.mu.Unlock()
	used, held, capacity := p.Usage()
	if n := len(p.Allocations()); used != n || held != owned4-n-stale || uint64(capacity) != p.spaces[fam4].slots {
		t.Fatalf("Usage = %d used, %d held, capacity %d; want %d, %d (%d holds over), %d", used, held, capacity, n, owned4-n-stale, stale, p.spaces[fam4].slots)
	}
	return owners
}
