package catalog

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// PoolConfig configures a VIP pool.
type PoolConfig struct {
	// Prefix is the IPv4 pool, e.g. 10.100.0.0/24. Its network, first host
	// (the gateway's own address) and broadcast addresses are never handed
	// out; it must leave at least 2 addresses (/29 or shorter).
	Prefix netip.Prefix
	// Prefix6 is the optional IPv6 pool; an invalid prefix means none. Its
	// subnet-router anycast address and first host are never handed out.
	// Only the first /64 of a shorter prefix is allocated automatically.
	Prefix6 netip.Prefix
	// StateDir is the directory of the state file (created if missing);
	// "" keeps the state in memory only (tests, `ztgate check`).
	StateDir string
	// HoldDown is how long a released VIP is held back for its service
	// before another service may get it; at least the DNS TTL.
	HoldDown time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// InUse reports whether flows to a VIP are alive; such a VIP stays held
	// after its hold-down. nil means never. It is called with the pool's
	// lock held and must not call the pool.
	InUse func(vip netip.Addr) bool
	// Exclusive locks StateDir against other processes until Close
	// (ErrStateDirInUse when one holds it): two processes saving one state
	// file would hand one VIP to two services and erase each other's
	// allocations.
	Exclusive bool
}

// Allocation is the VIPs of one service. VIP6 is invalid without an IPv6 pool.
type Allocation struct {
	Service   string
	VIP, VIP6 netip.Addr
}

// Pool allocates VIPs to services and persists them. Its methods are safe
// for concurrent use. Every change is all-or-nothing: on error neither the
// state nor the state file changes (one exception: when the new file is in
// place but its directory cannot be synced, the change stands and the
// error says the file may not survive a crash).
//
// A service's VIP stays its own while it is requested. A released VIP is
// held for its service for the hold-down (and while InUse reports flows),
// and the service gets it back if it returns meanwhile. Expired holds are
// freed lazily, at the next change.
type Pool struct {
	spaces   [families]addrSpace
	holdDown time.Duration
	now      func() time.Time
	inUse    func(netip.Addr) bool
	path     string // "" = in memory

	mu    sync.Mutex
	t     *table // guarded by mu
	saved []byte // guarded by mu: the state file's contents; nil before the first save

	lock *os.File // the state directory's lock (Exclusive); nil otherwise
}

// OpenPool opens a pool and loads its state file if there is one. The
// warnings name the state entries it dropped because they lie outside the
// current pool (the pool changed); the file keeps them until the next
// change. A corrupt state file is an error wrapping ErrCorruptState whose
// text names the file and the recovery procedure (see StateRecovery).
func OpenPool(cfg PoolConfig) (*Pool, []string, error) {
	spaces, err := newSpaces(cfg.Prefix, cfg.Prefix6)
	if err != nil {
		return nil, nil, err
	}
	if cfg.HoldDown < 0 {
		return nil, nil, fmt.Errorf("catalog: negative VIP hold-down %s", cfg.HoldDown)
	}
	p := &Pool{spaces: spaces, holdDown: cfg.HoldDown, now: cfg.Now, inUse: cfg.InUse, t: newTable()}
	if p.now == nil {
		p.now = time.Now
	}
	if p.inUse == nil {
		p.inUse = func(netip.Addr) bool { return false }
	}
	if cfg.StateDir == "" {
		return p, nil, nil
	}
	p.path = filepath.Join(cfg.StateDir, StateFileName)
	if cfg.Exclusive {
		if p.lock, err = lockStateDir(cfg.StateDir); err != nil {
			return nil, nil, err
		}
	}
	t, saved, warnings, err := loadState(p.path, spaces, p.clock())
	if err != nil {
		p.Close()
		return nil, nil, err
	}
	p.t, p.saved = t, saved
	return p, warnings, nil
}

// Close releases the state directory's lock, if the pool holds it. The
// pool must not be changed after.
func (p *Pool) Close() error {
	if p == nil || p.lock == nil {
		return nil
	}
	err := p.lock.Close()
	p.lock = nil
	return err
}

// clock returns the current time in the form the state file stores.
func (p *Pool) clock() time.Time { return p.now().UTC().Round(0) }

// Reconcile makes the allocations match exactly the requested services:
// existing ones are kept, held ones restored, new ones allocated, and the
// services no longer requested released (held). The state is persisted
// once. On error nothing changes and the error lists every problem.
// The result maps every requested service to its allocation.
func (p *Pool) Reconcile(reqs []Request) (map[string]Allocation, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, err := p.applyLocked(reqs, true)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Allocation, len(reqs))
	for _, r := range reqs {
		out[r.Service], _ = t.allocation(r.Service)
	}
	return out, nil
}

// Acquire adds one service (or re-pins it) and leaves the others alone;
// for incremental changes (the relay, the admin API).
func (p *Pool) Acquire(r Request) (Allocation, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, err := p.applyLocked([]Request{r}, false)
	if err != nil {
		return Allocation{}, err
	}
	a, _ := t.allocation(r.Service)
	return a, nil
}

// Release removes a service's allocation; its VIPs are held for the
// hold-down. Releasing a service that has none is not an error. It fails
// only when the state cannot be saved.
func (p *Pool) Release(service string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.t.clone()
	now := p.clock()
	t.prune(now, p.holdDown, p.inUse)
	t.release(service, now)
	return p.commitLocked(t)
}

// applyLocked runs one change on a copy of the state, persists the copy and
// swaps it in.
func (p *Pool) applyLocked(reqs []Request, exclusive bool) (*table, error) {
	t := p.t.clone()
	if errs := p.change(t, reqs, exclusive, p.clock()); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return t, p.commitLocked(t)
}

// commitLocked saves t when it differs from the saved state, then makes it
// the current state. The rename of the file is the commit point: once it
// happened, t is the state even if a later step failed.
func (p *Pool) commitLocked(t *table) error {
	t.normalise()
	if p.path != "" {
		data, err := encodeState(t, p.spaces)
		if err != nil {
			return err
		}
		if !bytes.Equal(data, p.saved) {
			replaced, err := writeState(p.path, data)
			if !replaced {
				return err
			}
			p.t, p.saved = t, data
			return err
		}
	}
	p.t = t
	return nil
}

// Lookup returns the allocation of a service.
func (p *Pool) Lookup(service string) (Allocation, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.t.allocation(service)
}

// Holds reports whether a VIP released by service is still held for it
// (within its hold-down, or while flows to it are alive): the service gets
// it back if it is requested now.
func (p *Pool) Holds(service string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock()
	for _, h := range p.t.holds {
		if h.service != service {
			continue
		}
		if now.Sub(h.releasedAt) < p.holdDown {
			return true
		}
		for _, a := range h.addrs {
			if a.IsValid() && p.inUse(a) {
				return true
			}
		}
	}
	return false
}

// Allocations returns every allocation, sorted by service name.
func (p *Pool) Allocations() []Allocation {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Allocation, 0, len(p.t.allocs))
	for s := range p.t.allocs {
		a, _ := p.t.allocation(s)
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b Allocation) int { return strings.Compare(a.Service, b.Service) })
	return out
}

// Owner returns the service a VIP (IPv4 or IPv6) is allocated to or held
// for. A hold whose hold-down has passed counts until the next change.
func (p *Pool) Owner(vip netip.Addr) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.t.owner[vip]
	return s, ok
}

// Usage returns how many IPv4 VIPs are allocated and held now, and how
// many the pool can hand out in all. A hold whose hold-down has passed
// (and whose VIP no flow uses) is not counted, though it is only dropped
// from the state at the next change.
func (p *Pool) Usage() (used, held, capacity int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	u, _ := p.t.owned(fam4)
	now := p.clock()
	for _, h := range p.t.holds {
		if h.addrs[fam4].IsValid() && h.kept(now, p.holdDown, p.inUse) {
			held++
		}
	}
	return int(u), held, int(min(p.spaces[fam4].slots, math.MaxInt))
}

// Owned returns how many IPv4 VIPs are allocated or held now (Usage's
// first two figures together), 0 for a nil pool: what a gauge of the
// pool's use shows.
func (p *Pool) Owned() int {
	if p == nil {
		return 0
	}
	used, held, _ := p.Usage()
	return used + held
}

// Path returns the state file's path, or "" for a pool kept in memory.
func (p *Pool) Path() string { return p.path }
