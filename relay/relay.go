package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/tunnel"
)

// DefaultStaleGrace is how long after start the relay keeps the VIPs of
// services (from its state file) that no gateway registered: long enough
// for every gateway to reconnect with its backoff.
const DefaultStaleGrace = 2 * tunnel.RedialMax

// Options are the parts of a relay that tests replace. The zero value is
// what production uses.
type Options struct {
	// Registry receives the metrics; nil creates one.
	Registry *prometheus.Registry
	// Now is the clock of the VIP pool; nil is time.Now.
	Now func() time.Time
	// StaleGrace overrides DefaultStaleGrace.
	StaleGrace time.Duration
	// PingInterval and DeadAfter override DefaultPingInterval and
	// DefaultDeadAfter, the liveness check of gateway sessions.
	PingInterval, DeadAfter time.Duration
}

// pinPair is a service's central pins, one per family.
type pinPair struct{ vip, vip6 netip.Addr }

// Relay is the relay role. Create it with New, start it with Start, stop
// it with Close.
type Relay struct {
	cfg   *conf.Relay
	opts  Options
	root  *slog.Logger
	log   *slog.Logger
	m     *metrics
	pool  *catalog.Pool
	pins  map[string]pinPair
	creds *tunnel.Credentials
	ln    *tunnel.Listener
	// outboxes bounds the datagrams queued in all sessions' outboxes
	// together.
	outboxes *tunnel.OutboxBudget
	api      *adminapi.Server // nil when [api] listen is off

	// regMu serialises registry changes that involve the pool (file I/O),
	// so that mu is only held for in-memory updates. Order: regMu, mu.
	regMu sync.Mutex

	mu       sync.RWMutex
	services map[string]*service   // guarded by mu
	gateways map[*gateway]struct{} // guarded by mu
	agents   map[*agent]struct{}   // guarded by mu
	// byIdentity holds the sessions of each bounded agent identity
	// (addAgent); guarded by mu.
	byIdentity map[identityKey]map[*agent]struct{}
	tags       map[uint32]*tag // guarded by mu: every live tag
	// recentTags holds when each tag died, for tagQuarantine: its number is
	// not drawn again meanwhile (packets of its flows may still be on the
	// way, either direction). Guarded by mu; recentSwept is its last sweep.
	recentTags  map[uint32]time.Time
	recentSwept time.Time
	drained     map[string]bool           // guarded by mu: names of gateways that take no new flows
	tagRand     func([]byte) (int, error) // guarded by mu: the tags' randomness; nil is crypto/rand (tests replace it)

	// lastAdmitted holds, for each service no gateway serves now whose VIP
	// may still be allocated or held, the tenants it was last admitted to
	// (v1MayRegister). Guarded by mu; changed with regMu held too.
	lastAdmitted map[string]admittedOnce

	sigMu sync.Mutex
	sig   *signaling // guarded by sigMu

	fwd *forwarding // nil without forward_ports

	ctx    context.Context    // cancelled by Close
	cancel context.CancelFunc // cancels ctx
	wg     sync.WaitGroup     // accept loop, sessions, API, stale release
	once   sync.Once
}

// New opens the VIP pool in the state directory and loads the TLS
// credentials. It listens on nothing yet; Start does.
func New(cfg *conf.Relay, opts Options, log *slog.Logger) (*Relay, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.StaleGrace <= 0 {
		opts.StaleGrace = DefaultStaleGrace
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = DefaultPingInterval
	}
	if opts.DeadAfter <= 0 {
		opts.DeadAfter = DefaultDeadAfter
	}
	r := &Relay{
		cfg:          cfg,
		opts:         opts,
		root:         log,
		log:          log.With("component", "relay"),
		m:            newMetrics(opts.Registry),
		pins:         make(map[string]pinPair),
		services:     make(map[string]*service),
		gateways:     make(map[*gateway]struct{}),
		agents:       make(map[*agent]struct{}),
		byIdentity:   make(map[identityKey]map[*agent]struct{}),
		tags:         make(map[uint32]*tag),
		drained:      make(map[string]bool),
		lastAdmitted: make(map[string]admittedOnce),
		sig:          newSignaling(),
		outboxes:     tunnel.NewOutboxBudget(outboxBudget),
	}
	r.m.registerOutboxes(r.outboxes)
	r.fwd = newForwarding(cfg.ForwardPorts, cfg.Listen, newForwardMetrics(r.m.reg), r.root.With("component", "forward"))
	r.ctx, r.cancel = context.WithCancel(context.Background())
	pool, warnings, err := catalog.OpenPool(catalog.PoolConfig{
		Prefix: cfg.Pool, Prefix6: cfg.Pool6, StateDir: cfg.StateDir, HoldDown: cfg.VIPHoldDown, Now: opts.Now,
		Exclusive: true, // one process per state directory
	})
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	for _, w := range warnings {
		r.log.Warn("VIP state", "warning", w)
	}
	r.pool = pool
	r.m.pool.Store(pool) // ztgate_vip_pool_used reads it
	_, _, capacity := pool.Usage()
	r.m.poolCapacity.Set(float64(capacity)) // the pool changes only at a restart
	if err := r.reservePins(); err != nil {
		r.closeUnstarted()
		return nil, err
	}
	r.creds, err = tunnel.NewCredentials(tunnel.CredentialsConfig{
		CertFile: cfg.Cert, KeyFile: cfg.Key, CAFile: cfg.CA, Insecure: cfg.Insecure, Role: tunnel.RoleRelay,
	}, r.root.With("component", "tunnel"))
	if err != nil {
		r.closeUnstarted()
		return nil, fmt.Errorf("relay: %w", err)
	}
	return r, nil
}

// closeUnstarted releases what a New that failed had taken: the pool and
// the state directory's lock, which a New in this process must find free
// once the cause is fixed.
func (r *Relay) closeUnstarted() {
	r.cancel()
	r.pool.Close()
}

// reservePins allocates the central pins at start, so that no automatic
// allocation takes a pinned address before its service registers.
func (r *Relay) reservePins() error {
	r.pins = pinPairs(r.cfg.Pins)
	if err := acquirePins(r.pool, r.pins); err != nil {
		return fmt.Errorf("relay: pins: %w", err)
	}
	return nil
}

// pinPairs groups a configuration's [[pin]] tables by service.
func pinPairs(pins []conf.Pin) map[string]pinPair {
	out := make(map[string]pinPair, len(pins))
	for _, p := range pins {
		name := strings.ToLower(p.Service)
		pp := out[name]
		if p.VIP.Is4() {
			pp.vip = p.VIP
		} else {
			pp.vip6 = p.VIP
		}
		out[name] = pp
	}
	return out
}

// acquirePins allocates each service's pins in pool, in the order of the
// services' names; the error names every pin the pool refused.
func acquirePins(pool *catalog.Pool, pins map[string]pinPair) error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(pins)) {
		pp := pins[name]
		if _, err := pool.Acquire(catalog.Request{Service: name, VIP: pp.vip, VIP6: pp.vip6}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Registry returns the registry the relay's metrics are in.
func (r *Relay) Registry() *prometheus.Registry { return r.m.reg }

// Start listens for tunnel sessions and serves the admin API.
func (r *Relay) Start() error {
	if r.cfg.Insecure {
		r.log.Warn("INSECURE: insecure_allow_unauthenticated is set; peers without a verified identity are admitted in tenant " +
			tunnel.DefaultTenant + " with the role their hello claims (development only)")
	}
	ln, err := tunnel.Listen(r.cfg.Listen, tunnel.ListenConfig{
		Credentials: r.creds, Registerer: r.m.reg, ResetKeyFile: tunnel.ResetKeyFile(r.cfg.StateDir),
	}, r.root.With("component", "tunnel"))
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	r.ln = ln
	if err := r.startAPI(); err != nil {
		_ = r.Close()
		return err
	}
	r.wg.Add(3)
	go r.acceptLoop()
	go r.releaseStale()
	go r.janitor()
	r.log.Info("relay started", "name", r.cfg.Name, "listen", ln.Addr().String(), "pool", r.cfg.Pool,
		"state", r.pool.Path(), "forward_ports", r.cfg.ForwardPorts.String())
	return nil
}

// Addr returns the UDP address of the tunnel listener (after Start).
func (r *Relay) Addr() net.Addr { return r.ln.Addr() }

// Close stops the API and the listener, which ends every session, and
// waits for the relay's goroutines.
func (r *Relay) Close() error {
	var err error
	r.once.Do(func() {
		r.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r.api.Shutdown(ctx)
		cancel()
		if r.ln != nil {
			err = errors.Join(err, r.ln.Close())
		}
		r.wg.Wait()
		r.fwd.shutdown()
		err = errors.Join(err, r.pool.Close())
		r.log.Info("relay stopped")
	})
	return err
}

// acceptLoop serves every admitted session in its own goroutine.
func (r *Relay) acceptLoop() {
	defer r.wg.Done()
	for {
		s, err := r.ln.Accept(r.ctx)
		if err != nil {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.serve(s)
		}()
	}
}

// releaseStale releases, once the grace after start has passed, the VIPs
// of services in the state file that no gateway registered. Pinned
// services keep theirs.
func (r *Relay) releaseStale() {
	defer r.wg.Done()
	t := time.NewTimer(r.opts.StaleGrace)
	defer t.Stop()
	select {
	case <-r.ctx.Done():
		return
	case <-t.C:
	}
	r.regMu.Lock()
	defer r.regMu.Unlock()
	var stale []string
	r.mu.RLock()
	for _, a := range r.pool.Allocations() {
		if r.services[a.Service] == nil {
			stale = append(stale, a.Service)
		}
	}
	r.mu.RUnlock()
	r.releaseLocked(stale)
}
