package gateway

import (
	"cmp"
	"context"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/resolver"
)

// discovery resolves backends given as host names, and a service's
// backends_srv, and keeps the services' backend sets current: each name is
// re-resolved when its answer's TTL (bounded by [discovery] min_ttl and
// max_ttl) runs out. New addresses of a running service take flows once
// their health checks bring them up; vanished ones drain.
//
// A lookup that fails (a timeout, SERVFAIL) keeps the name's last
// addresses: the resolver could not tell. A negative answer (NXDOMAIN, or
// no record of the type asked) says the name has none: its backends leave
// once a second negative answer in a row, min_ttl or more after the first,
// confirms it (goneFor), the same for a host name, an SRV name and an SRV
// record's target. One spurious NXDOMAIN (a resolver that lags a zone
// change, a split-horizon view that answers for a moment from the wrong
// side) does not take every backend of a name away for the time it takes
// their health checks to bring them back.
type discovery struct {
	g      *Gateway
	client *resolver.Client
	min    time.Duration
	max    time.Duration
	now    func() time.Time // the wall clock; tests replace it

	mu       sync.Mutex
	cache    map[string]resolved     // by host name or "srv:" + SRV name
	watchers map[string]*nameWatcher // by service name
}

// resolved is the last answer for one name.
type resolved struct {
	addrs []backendAddr
	err   error
	// goneSince is when the name's run of negative answers began, zero
	// while it resolves: its addresses are kept until a negative answer
	// comes min_ttl or more after it (goneFor). A failed lookup neither
	// ends nor extends the run.
	goneSince time.Time
	// targetsGone is the same for an SRV name's targets, by host: the
	// targets whose last addresses are kept since a negative answer that
	// none has confirmed yet.
	targetsGone map[string]time.Time
}

// goneFor reports whether a negative answer for a name at now confirms
// that the name is gone: its run of negative answers began at since,
// min_ttl or more before. The watcher asks again min_ttl after a failed
// lookup, so that is its second negative answer in a row; the watchers of
// two services asking one name at the same moment do not confirm each
// other's.
func (d *discovery) goneFor(since, now time.Time) bool {
	return !since.IsZero() && now.Sub(since) >= d.min
}

// nameWatcher re-resolves the names of one service.
type nameWatcher struct {
	spec   catalog.Service
	cancel context.CancelFunc
	done   chan struct{}
}

// firstLookupTimeout bounds the synchronous first resolution of a name
// when a service is built; the watcher keeps trying after it.
const firstLookupTimeout = 2 * time.Second

// maxDiscovered is the most backends one name (a host name or an SRV
// name) gives a service.
const maxDiscovered = 256

func newDiscovery(g *Gateway) *discovery {
	ns := g.cfg.Discovery.Nameservers
	if len(ns) == 0 {
		ns = resolver.SystemNameservers()
	}
	return &discovery{
		g:        g,
		client:   &resolver.Client{Nameservers: ns, Timeout: firstLookupTimeout},
		min:      g.cfg.Discovery.MinTTL,
		max:      g.cfg.Discovery.MaxTTL,
		now:      time.Now,
		cache:    make(map[string]resolved),
		watchers: make(map[string]*nameWatcher),
	}
}

// sameNames reports whether two specs name the same backends.
func sameNames(a, b catalog.Service) bool {
	return reflect.DeepEqual(a.Backends, b.Backends) && a.BackendsSRV == b.BackendsSRV && a.Health.Type == b.Health.Type
}

// cacheKeys are the keys of a service's names in the cache: its host
// names, and "srv:" + its backends_srv.
func cacheKeys(s catalog.Service) []string {
	var keys []string
	for _, b := range s.Backends {
		if _, err := netip.ParseAddr(b); err != nil {
			keys = append(keys, b)
		}
	}
	if s.BackendsSRV != "" {
		keys = append(keys, "srv:"+s.BackendsSRV)
	}
	return keys
}

// dynamic reports whether a service has names to discover.
func dynamic(s catalog.Service) bool { return len(cacheKeys(s)) > 0 }

// backends returns the addresses of a service's backends now: IP literals
// as they are; names from the cache, resolved first when not cached.
func (d *discovery) backends(s catalog.Service) []backendAddr {
	var out []backendAddr
	for _, b := range s.Backends {
		if a, err := netip.ParseAddr(b); err == nil {
			out = append(out, backendAddr{addr: a.Unmap(), origin: b})
			continue
		}
		out = append(out, d.cached(b, func(ctx context.Context) (resolved, time.Duration) { return d.lookupHost(ctx, b) })...)
	}
	if srv := s.BackendsSRV; srv != "" {
		out = append(out, d.cached("srv:"+srv, func(ctx context.Context) (resolved, time.Duration) { return d.lookupSRV(ctx, srv, resolved{}) })...)
	}
	return out
}

// maxFirstLookups bounds the names prefetch resolves at once.
const maxFirstLookups = 32

// prefetch resolves the names of svcs that have no answer yet, in
// parallel and within one firstLookupTimeout in all, so that building a
// table of many names waits for one lookup's bound, not for one per name,
// when the resolver is slow or silent (the build holds reloadMu: every
// reload, API change and VIP assignment waits for it). A name it could not
// resolve in time is resolved by its watcher, from min_ttl on.
func (d *discovery) prefetch(svcs []catalog.Service) {
	type job struct {
		key    string
		lookup func(context.Context) (resolved, time.Duration)
	}
	var jobs []job
	seen := make(map[string]bool)
	add := func(key string, lookup func(context.Context) (resolved, time.Duration)) {
		if _, ok := d.cache[key]; !ok && !seen[key] {
			seen[key] = true
			jobs = append(jobs, job{key, lookup})
		}
	}
	d.mu.Lock()
	for _, s := range svcs {
		for _, b := range s.Backends {
			if _, err := netip.ParseAddr(b); err != nil {
				add(b, func(ctx context.Context) (resolved, time.Duration) { return d.lookupHost(ctx, b) })
			}
		}
		if srv := s.BackendsSRV; srv != "" {
			add("srv:"+srv, func(ctx context.Context) (resolved, time.Duration) { return d.lookupSRV(ctx, srv, resolved{}) })
		}
	}
	d.mu.Unlock()
	if len(jobs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(d.g.ctx, firstLookupTimeout)
	defer cancel()
	sem := make(chan struct{}, maxFirstLookups)
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r, _ := j.lookup(ctx)
			d.store(j.key, r)
		})
	}
	wg.Wait()
}

// cached returns a name's last answer, resolving it first if there is none.
func (d *discovery) cached(key string, lookup func(context.Context) (resolved, time.Duration)) []backendAddr {
	d.mu.Lock()
	r, ok := d.cache[key]
	d.mu.Unlock()
	if ok {
		return r.addrs
	}
	ctx, cancel := context.WithTimeout(d.g.ctx, firstLookupTimeout)
	defer cancel()
	r, _ = lookup(ctx)
	d.store(key, r)
	return r.addrs
}

// get returns a name's addresses now: its last good answer, or none once
// the name is gone.
func (d *discovery) get(key string) []backendAddr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cache[key].addrs
}

// last returns what is stored for a name. Nothing stored is ever changed
// in place: the caller may read it after the lock.
func (d *discovery) last(key string) resolved {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cache[key]
}

func (d *discovery) store(key string, r resolved) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.storeLocked(key, r)
}

// storeWatched is store for a watcher, which stores nothing once its ctx
// is done: sync cancels watchers and forgets their names under d.mu, so a
// stopped watcher cannot put a name back.
func (d *discovery) storeWatched(ctx context.Context, key string, r resolved) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ctx.Err() == nil {
		d.storeLocked(key, r)
	}
}

// storeLocked stores a name's new answer. A failed lookup keeps the last
// good answer; a negative answer keeps it too until a later one confirms
// that the name is gone (goneFor), and then stores none.
func (d *discovery) storeLocked(key string, r resolved) {
	old, had := d.cache[key]
	switch {
	case r.err == nil:
	case errors.Is(r.err, resolver.ErrNotFound):
		now := d.now()
		r.goneSince = now
		if had && !old.goneSince.IsZero() {
			r.goneSince = old.goneSince // the run goes on
		}
		if had && !d.goneFor(r.goneSince, now) {
			r.addrs, r.targetsGone = old.addrs, old.targetsGone
		}
	case had:
		r.addrs, r.goneSince, r.targetsGone = old.addrs, old.goneSince, old.targetsGone
	}
	d.cache[key] = r
}

func (d *discovery) lookupHost(ctx context.Context, name string) (resolved, time.Duration) {
	addrs, ttl, err := d.client.LookupHost(ctx, name)
	if err != nil {
		d.g.log.Warn("cannot resolve backend", "backend", name, "err", err)
		return resolved{err: err}, 0
	}
	r := resolved{}
	addrs = inAddrOrder(addrs)
	if len(addrs) > maxDiscovered {
		// The lowest addresses: the same ones at every lookup.
		d.g.log.Warn("backend name has too many addresses; using the lowest", "backend", name, "addresses", len(addrs), "max", maxDiscovered)
		addrs = addrs[:maxDiscovered]
	}
	for _, a := range addrs {
		r.addrs = append(r.addrs, backendAddr{addr: a.Unmap(), origin: name})
	}
	return r, ttl
}

// inAddrOrder returns a name's addresses in address order, not in the
// answer's: resolvers rotate their answers (round-robin DNS), and a set
// that followed them would change its order at every lookup. The order of
// the set is the turn of round_robin: with a flow or two between lookups,
// every flow went to one backend as the answer rotated under the turn.
// Beyond maxDiscovered, the same addresses are left out at every lookup.
func inAddrOrder(addrs []netip.Addr) []netip.Addr {
	addrs = slices.Clone(addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	return addrs
}

// lookupSRV resolves an SRV name and its targets. prev is what is stored
// for the name: a target whose lookup fails keeps its addresses from it,
// and the name is asked again at min_ttl, as when the SRV lookup itself
// fails; so does a target whose lookup answers that it does not exist
// until a second such answer, min_ttl or more after the first, confirms
// it (goneFor): then the target's backends leave.
func (d *discovery) lookupSRV(ctx context.Context, name string, prev resolved) (resolved, time.Duration) {
	srvs, ttl, err := d.client.LookupSRV(ctx, name)
	if err != nil {
		d.g.log.Warn("cannot resolve backends_srv", "srv", name, "err", err)
		return resolved{err: err}, 0
	}
	// The best records first, in an order that does not follow the
	// answer's: beyond maxDiscovered addresses the same ones are left out
	// at every lookup, and their targets are not looked up.
	slices.SortStableFunc(srvs, func(a, b resolver.SRV) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(b.Weight, a.Weight),
			strings.Compare(a.Target, b.Target), cmp.Compare(a.Port, b.Port))
	})
	r, now := resolved{}, d.now()
	for i, s := range srvs {
		if len(r.addrs) >= maxDiscovered {
			d.g.log.Warn("backends_srv has too many backends; using the best records", "srv", name,
				"records", len(srvs), "records_used", i, "max", maxDiscovered)
			break
		}
		host := strings.TrimSuffix(s.Target, ".")
		hosts, httl, err := d.client.LookupHost(ctx, s.Target)
		if err != nil {
			d.g.log.Warn("cannot resolve an SRV target", "srv", name, "target", s.Target, "err", err)
			notFound := errors.Is(err, resolver.ErrNotFound)
			since, running := prev.targetsGone[host]
			if notFound && !running {
				since = now
			}
			if notFound && d.goneFor(since, now) {
				continue // confirmed: the target's backends leave
			}
			n := len(r.addrs)
			for _, a := range prev.addrs {
				if a.host == host && a.port == s.Port && len(r.addrs) < maxDiscovered {
					a.priority, a.weight = s.Priority, s.Weight
					r.addrs = append(r.addrs, a)
				}
			}
			if kept := len(r.addrs) > n; kept || !notFound {
				ttl = 0 // bound: again at min_ttl
				if kept && (notFound || running) {
					if r.targetsGone == nil {
						r.targetsGone = make(map[string]time.Time)
					}
					if _, ok := r.targetsGone[host]; !ok { // another record of the target may have put it
						r.targetsGone[host] = since
					}
				}
			}
			continue
		}
		ttl = min(ttl, httl)
		hosts = inAddrOrder(hosts)
		for _, a := range hosts[:min(len(hosts), maxDiscovered-len(r.addrs))] {
			r.addrs = append(r.addrs, backendAddr{addr: a.Unmap(), origin: name, host: host,
				port: s.Port, priority: s.Priority, weight: s.Weight})
		}
	}
	return r, ttl
}

// sync starts a watcher for every service of t with names to discover and
// stops the others, and forgets the answers for names no service of t has
// (a removed service's): the cache holds only what is in use.
func (d *discovery) sync(t *table) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, w := range d.watchers {
		if s := t.byName[name]; s == nil || !sameNames(s.spec, w.spec) {
			w.cancel()
			delete(d.watchers, name)
		}
	}
	inUse := make(map[string]bool, len(d.cache))
	for _, s := range t.byName {
		for _, key := range cacheKeys(s.spec) {
			inUse[key] = true
		}
	}
	for key := range d.cache {
		if !inUse[key] {
			delete(d.cache, key)
		}
	}
	if d.g.closing.Load() {
		return
	}
	for name, s := range t.byName {
		if _, ok := d.watchers[name]; ok || !dynamic(s.spec) {
			continue
		}
		ctx, cancel := context.WithCancel(d.g.ctx)
		w := &nameWatcher{spec: s.spec, cancel: cancel, done: make(chan struct{})}
		d.watchers[name] = w
		d.g.wg.Add(1)
		go func() {
			defer d.g.wg.Done()
			defer close(w.done)
			d.watch(ctx, s.st, w.spec)
		}()
	}
}

// watch re-resolves a service's names as their TTLs run out and applies
// changes to its backend set.
func (d *discovery) watch(ctx context.Context, st *serviceState, spec catalog.Service) {
	for {
		wait := d.max
		var addrs []backendAddr
		for _, b := range spec.Backends {
			if a, err := netip.ParseAddr(b); err == nil {
				addrs = append(addrs, backendAddr{addr: a.Unmap(), origin: b})
				continue
			}
			got, next := d.refreshHost(ctx, b)
			addrs, wait = append(addrs, got...), min(wait, next)
		}
		if spec.BackendsSRV != "" {
			got, next := d.refreshSRV(ctx, spec.BackendsSRV)
			addrs, wait = append(addrs, got...), min(wait, next)
		}
		if ctx.Err() != nil {
			return
		}
		d.apply(st, spec, addrs)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// refreshHost looks a host name up again and stores the answer; it
// returns the name's addresses now and when to ask again.
func (d *discovery) refreshHost(ctx context.Context, name string) ([]backendAddr, time.Duration) {
	r, ttl := d.lookupHost(ctx, name)
	d.storeWatched(ctx, name, r)
	return d.get(name), d.bound(ttl, r.err)
}

// refreshSRV is refreshHost for an SRV name and its targets.
func (d *discovery) refreshSRV(ctx context.Context, name string) ([]backendAddr, time.Duration) {
	key := "srv:" + name
	r, ttl := d.lookupSRV(ctx, name, d.last(key))
	d.storeWatched(ctx, key, r)
	return d.get(key), d.bound(ttl, r.err)
}

// bound clamps a TTL into [min, max]; a failed lookup is retried at min.
func (d *discovery) bound(ttl time.Duration, err error) time.Duration {
	if err != nil {
		return d.min
	}
	return min(max(ttl, d.min), d.max)
}

// apply makes addrs a running service's backends: new ones on probation
// when the service has health checks, vanished ones drained.
func (d *discovery) apply(st *serviceState, spec catalog.Service, addrs []backendAddr) {
	g := d.g
	// Under reloadMu, as every change of the table: a reload between the
	// check and setBackends would have its backend set overwritten by the
	// old names' addresses, which no watcher corrects when the reload
	// left no names. (No holder of reloadMu waits for a watcher.)
	g.reloadMu.Lock()
	if cur := g.tbl.Load().byName[spec.Name]; cur == nil || cur.st != st || !sameNames(cur.spec, spec) {
		g.reloadMu.Unlock()
		return // the service changed meanwhile: its new watcher applies
	}
	probation := spec.Health.Type != catalog.HealthNone
	added, gone := st.setBackends(addrs, probation)
	g.reloadMu.Unlock()
	if len(added) == 0 && len(gone) == 0 {
		return
	}
	g.log.Info("backends discovered", "service", spec.Name, "added", addrList(added), "gone", addrList(gone))
	g.syncHealth()
	g.drainDeparted(gone, g.tbl.Load().drainTimeout, "backend_gone")
}

func addrList(bs []*backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.label()
	}
	return out
}

// stop stops every watcher and waits for them.
func (d *discovery) stop() {
	d.mu.Lock()
	ws := d.watchers
	d.watchers = map[string]*nameWatcher{}
	d.mu.Unlock()
	for _, w := range ws {
		w.cancel()
		<-w.done
	}
}
