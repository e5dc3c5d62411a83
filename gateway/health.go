package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// healthChecks are the running checks and pending drain deadlines of one
// service's backends. It lives in the serviceState, so that syncHealth
// finds the checks of backends a reload removed.
type healthChecks struct {
	mu      sync.Mutex
	entries map[*backend]*healthEntry
	closed  bool // stopped for good (the state was freed): nothing starts again
	// clock, randN and newProber replace the wall clock, the jitter source
	// and the probes in tests; nil means the real ones.
	clock     clock
	randN     func(n int64) int64
	newProber func(h catalog.Health, port uint16, host, zone string) prober
}

// healthEntry is the health machinery of one backend.
type healthEntry struct {
	spec     catalog.Health
	port     uint16             // the port the checker probes (checkPort when it started)
	host     string             // the host name the checker's HTTP checks send (backend.checkHost when it started)
	synced   bool               // spec is applied: a checker runs unless its type is none
	cancel   context.CancelFunc // stops the checker; nil when none runs
	done     chan struct{}      // closed when the checker has returned
	drain    clockTimer         // closes the backend's flows at the drain deadline; nil when none
	drainGen uint64             // tells a firing deadline whether it is still the current one
}

// entryLocked returns the entry of b, creating it.
func (hc *healthChecks) entryLocked(b *backend) *healthEntry {
	if hc.entries == nil {
		hc.entries = make(map[*backend]*healthEntry)
	}
	e, ok := hc.entries[b]
	if !ok {
		e = &healthEntry{}
		hc.entries[b] = e
	}
	return e
}

// stopChecker stops the checker and returns what to wait for, if any.
func (e *healthEntry) stopChecker() []chan struct{} {
	e.synced = false
	if e.cancel == nil {
		return nil
	}
	e.cancel()
	e.cancel = nil
	return []chan struct{}{e.done}
}

// stopDrain cancels a pending drain deadline.
func (e *healthEntry) stopDrain() {
	if e.drain != nil {
		e.drain.Stop()
		e.drain = nil
	}
	e.drainGen++
}

// passiveFailure counts a failed dial or a reset on connect against a
// backend, as a failed health check would. Without active checks nothing
// could bring the backend back, so then only the error is kept. Whether
// checks run is what the backend's entry says now, under hc.mu, not what
// the table the flow was classified by said: a reload may have turned
// them off (and forgotten the backend's state) while the dial was in
// flight.
func (g *Gateway) passiveFailure(svc *service, b *backend, err error) {
	err = fmt.Errorf("dial: %w", unwrapOp(err))
	g.log.Debug("backend dial failed", "service", svc.spec.Name, "backend", b.label(), "err", err)
	hc := &svc.st.health
	hc.mu.Lock()
	defer hc.mu.Unlock()
	e := hc.entries[b]
	if e == nil || !e.synced || e.spec.Type == catalog.HealthNone {
		b.noteError(err.Error())
		return
	}
	g.observe(svc.st.name, b, e.spec, err)
}

// startHealth starts the active checks of every service in the current
// table. syncHealth is called after every change of the table or of a
// service's backends.
func (g *Gateway) startHealth() { g.syncHealth() }

// syncHealth starts checks for new (service, backend) pairs of the current
// table and stops those no longer in it; a pair whose [service.health]
// changed gets a new check. It returns once the stopped checks have
// returned. Calls are serialised and each reads the table once it holds
// healthMu: a call that read a table just swapped out (discovery's) is
// followed by the swap's own, which stops what it started for a removed
// service.
func (g *Gateway) syncHealth() {
	g.healthMu.Lock()
	defer g.healthMu.Unlock()
	t := g.tbl.Load()
	var waits []chan struct{}
	for _, st := range g.serviceStates() {
		var (
			want []*backend
			spec catalog.Health
		)
		if svc := t.byName[st.name]; svc != nil && svc.st == st {
			want, spec = st.backends.Load().list, svc.spec.Health
		}
		waits = append(waits, g.syncChecks(st, want, spec)...)
	}
	for _, done := range waits {
		<-done
	}
}

// syncChecks makes the checks of st those of want with spec, and returns
// the stopped checks to wait for. A
// backend that left is untracked and its series, labelled by
// backend.label, deleted (unless a backend that stays has its label,
// which only the same address and port have).
func (g *Gateway) syncChecks(st *serviceState, want []*backend, spec catalog.Health) []chan struct{} {
	hc := &st.health
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.closed {
		return nil
	}
	keep := make(map[*backend]bool, len(want))
	keepLabel := make(map[string]bool, len(want))
	for _, b := range want {
		keep[b], keepLabel[b.label()] = true, true
	}
	var waits []chan struct{}
	for b, e := range hc.entries {
		if !keep[b] {
			waits = append(waits, e.stopChecker()...)
			e.stopDrain()
			delete(hc.entries, b)
			b.untrack()
			if l := b.label(); !keepLabel[l] {
				g.m.backendHealthy.DeleteLabelValues(st.name, l)
				g.m.dialErrors.DeleteLabelValues(st.name, l)
			}
		}
	}
	if g.closing.Load() { // stopHealth has run or is running: start nothing
		return waits
	}
	for _, b := range want {
		b.track()
		e := hc.entryLocked(b)
		g.rearmDrainLocked(st, hc, e, b)
		port := checkPort(spec, b)
		if e.synced && e.spec == spec && e.port == port && (spec.Type != catalog.HealthHTTP || e.host == b.checkHost()) {
			continue // a checker as wanted runs (an HTTP one sending the backend's name now)
		}
		waits = append(waits, e.stopChecker()...)
		e.spec, e.port, e.synced = spec, port, true
		if spec.Type == catalog.HealthNone {
			g.forget(st.name, b)
		}
		g.setHealthGauge(st.name, b)
		g.startChecker(st, hc, e, b)
	}
	return waits
}

// checkPort is the port the active checks of b probe. A health.port
// given in the configuration (h.PortSet) is the port the operator asked
// for on every backend (an admin or a sidecar's port, or the traffic's
// written out): it is probed on all, SRV backends too. Without one the
// checks follow the traffic: h.Port is then its default, the first target
// of the check's protocol, which a backend from an SRV record replaces
// with the record's port (backend.portFor), where its flows go.
func checkPort(h catalog.Health, b *backend) uint16 {
	if h.PortSet {
		return h.Port
	}
	return b.portFor(h.Port)
}

// startChecker starts the check goroutine of e, owned by e: stopChecker
// cancels it and hands back its done channel to wait for.
func (g *Gateway) startChecker(st *serviceState, hc *healthChecks, e *healthEntry, b *backend) {
	spec := e.spec
	e.host = b.checkHost()
	mk := newProber
	if hc.newProber != nil {
		mk = hc.newProber
	}
	p := mk(spec, e.port, e.host, g.cfg.DNS.Zone)
	if p == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &checker{
		target: netip.AddrPortFrom(b.addr, e.port),
		spec:   spec,
		probe:  p,
		clock:  hc.clockOr(g),
		randN:  hc.randN,
		report: func(err error, took time.Duration) { g.checked(ctx, hc, st.name, b, spec, err, took) },
	}
	if c.randN == nil {
		c.randN = defaultRandN
	}
	e.cancel, e.done = cancel, make(chan struct{})
	done := e.done
	go func() {
		defer close(done)
		c.run(ctx)
	}()
}

// clockOr returns the registry's clock, or the gateway's wall clock.
func (hc *healthChecks) clockOr(g *Gateway) clock {
	if hc.clock != nil {
		return hc.clock
	}
	return realClock{now: g.now}
}

// checked accounts one active check of the checker whose context is ctx
// and applies its result. A result that arrives once its checker was
// stopped — a reload turned the checks off, replaced them or removed the
// backend, between the checker's last look at ctx and now — is dropped:
// it belongs to no check, and counted it would take a backend down that
// no check may bring back (checks off) or count against settings it was
// not made with. Stopping a checker cancels ctx under hc.mu, so looking
// at ctx under hc.mu orders the two.
func (g *Gateway) checked(ctx context.Context, hc *healthChecks, svc string, b *backend, h catalog.Health, err error, took time.Duration) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "fail"
	}
	g.m.healthChecks.WithLabelValues(svc, result).Inc()
	g.m.healthDuration.WithLabelValues(svc).Observe(took.Seconds())
	g.observe(svc, b, h, err)
}

// stopHealth stops every check and drain deadline and waits for the
// checks to return.
func (g *Gateway) stopHealth() {
	var waits []chan struct{}
	for _, st := range g.serviceStates() {
		waits = append(waits, st.health.close()...)
	}
	for _, done := range waits {
		<-done
	}
}

// close stops every check and drain deadline for good and returns the
// checks to wait for.
func (hc *healthChecks) close() []chan struct{} {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	hc.closed = true
	var waits []chan struct{}
	for _, e := range hc.entries {
		waits = append(waits, e.stopChecker()...)
		e.stopDrain()
	}
	hc.entries = nil
	return waits
}

// serviceStates returns the long-lived state of every service in the
// table, and of removed ones not freed yet (their flows still run).
func (g *Gateway) serviceStates() []*serviceState {
	g.statesMu.Lock()
	defer g.statesMu.Unlock()
	out := make([]*serviceState, 0, len(g.states))
	for _, st := range g.states {
		out = append(out, st)
	}
	return out
}
