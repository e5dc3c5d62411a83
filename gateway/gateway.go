package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/internal/gopool"
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/resolver"
	"github.com/ztgate/ztgate/tunnel"
)

// Options are the parts of a gateway that tests replace. The zero value
// is what production uses.
type Options struct {
	// Device is the LAN ingress. Nil opens the TUN device of the config's
	// [tun] section and routes the pools into it.
	Device netstack.Device
	// Registry receives the metrics; nil creates one.
	Registry *prometheus.Registry
	// DialTimeout bounds a backend connection attempt (default 3s).
	DialTimeout time.Duration
	// Pinger sends ICMP echo to backends; nil uses ICMP sockets.
	Pinger Pinger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// HandshakeTimeout bounds how long a client may take to complete its
	// TCP handshake (default: netstack's, 10s).
	HandshakeTimeout time.Duration
}

// Gateway is the gateway role. Create it with New, start it with Start (or
// Run), stop it with Close.
type Gateway struct {
	cfg  *conf.Gateway // as started: the static settings (TUN, pools, listeners)
	opts Options
	root *slog.Logger // for the components the gateway owns
	log  *slog.Logger
	m    *metrics
	now  func() time.Time
	// dial connects to a backend; nil is a net.Dialer's. Tests hold dials
	// in progress with it.
	dial func(ctx context.Context, network, address string) (net.Conn, error)
	// noWatch, set before Start, leaves the configuration file unwatched:
	// tests that reload by hand.
	noWatch bool

	pool *catalog.Pool
	tbl  atomic.Pointer[table]

	// reloadMu serialises changes of the service table: reloads and API
	// additions and deletions.
	reloadMu    sync.Mutex
	running     *conf.Gateway                // the applied configuration
	readFile    func(string) ([]byte, error) // os.ReadFile; tests inject read faults
	apiServices []catalog.Service            // added through the API, persisted in the state directory
	apiStore    *apiStore
	stateLock   io.Closer // the state directory's lock when no pool holds it (attached to a relay)

	// states are the services' long-lived states by name (build.go); a
	// removed service's is freed when its last flow ends.
	statesMu sync.Mutex
	states   map[string]*serviceState
	healthMu sync.Mutex // serialises syncHealth

	disc         *discovery
	flows        *flowTable
	flowCount    atomic.Int64
	limits       *flowLimits // limits.go
	pingerInit   sync.Once
	pinger       Pinger
	pingerWarned atomic.Bool // warnPinger logged
	echoLimits   *echoLimits // echo requests in flight (echolimits.go)

	ns      *netstack.Stack
	stack   atomic.Pointer[netstack.Stack] // ns, for the metrics collector
	reactor *reactor                       // backend sockets' readiness for the TCP splices
	workers *gopool.Pool                   // goroutines of the TCP splices' workers
	tun     *netstack.TUN
	dev     netstack.Device
	lan     *netstack.Link
	api     *adminapi.Server // nil when [api] listen is off

	dnsStack *resolver.Server // 10.100.0.1:53 inside the netstack
	dnsHost  *resolver.Server // [dns] listen
	// dnsPools are the pools whose reverse zones the DNS servers answer
	// for, once followRelayPools gave them the relay's (under reloadMu).
	dnsPools [2]netip.Prefix

	// Tunnel ingress ([tunnel] relay and listen).
	creds     *tunnel.Credentials
	ingresses *ingressTable
	tunLink   *netstack.Link
	relay     *relayState // nil unless attached to a relay
	relayLink tunnel.Link // the session to the relay, for GET /v1/relay and the metric
	direct    *tunnel.Listener

	// relayMoves: the file of the last reload names another tunnel.relay
	// than the gateway runs with (restart-only): the [tunnel] files wait
	// for the restart with it (liveTunnelFiles, ReloadCredentials).
	relayMoves atomic.Bool

	// directSessions counts each agent identity's direct sessions;
	// directAgents lists them for the API.
	directSessions identitySessions
	directAgents   directAgents
	// presence says whose flow series are kept: the configured tenants
	// and those with an ingress open.
	presence tenantPresence
	// outboxes bounds the replies queued in all the tunnel sessions'
	// outboxes together; nil (tests that build a Gateway by hand): none.
	outboxes *tunnel.OutboxBudget

	// Lifecycle: ctx is cancelled by Close; every goroutine serving a flow
	// or a request enters wg through enter, which fails once closing.
	ctx     context.Context
	cancel  context.CancelFunc
	lifeMu  sync.Mutex
	closing atomic.Bool
	wg      sync.WaitGroup
}

// enter registers a goroutine with the gateway's lifetime; it returns false
// once Close has begun.
func (g *Gateway) enter() bool {
	g.lifeMu.Lock()
	defer g.lifeMu.Unlock()
	if g.closing.Load() {
		return false
	}
	g.wg.Add(1)
	return true
}

// leave ends what enter began.
func (g *Gateway) leave() { g.wg.Done() }

// New validates what the config alone cannot (VIP allocation against the
// state directory), builds the service table and prepares the metrics.
// It changes nothing on the host; Start does.
func New(cfg *conf.Gateway, opts Options, log *slog.Logger) (*Gateway, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 3 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	g := &Gateway{
		cfg:        cfg,
		opts:       opts,
		root:       log,
		log:        log.With("component", "gateway"),
		now:        opts.Now,
		states:     make(map[string]*serviceState),
		flows:      newFlowTable(),
		limits:     newFlowLimits(),
		echoLimits: newEchoLimits(),
		readFile:   os.ReadFile,
		workers:    gopool.New(0, 0),
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.m = newMetrics(opts.Registry)
	registerStackMetrics(g, opts.Registry)
	g.outboxes = tunnel.NewOutboxBudget(outboxBudget)
	g.m.registerOutboxes(g.outboxes)
	if cfg.Tunnel.Relay != "" {
		// The relay allocates the VIPs: no local pool. The state
		// directory keeps the API's services all the same: one process
		// per directory, as the pool's lock makes it otherwise.
		g.relay = &relayState{vips: make(map[string]tunnel.VIPAssignment)}
		if cfg.StateDir != "" {
			lock, err := catalog.LockStateDir(cfg.StateDir)
			switch {
			case errors.Is(err, catalog.ErrStateDirInUse):
				return nil, fmt.Errorf("gateway: %w", err)
			case err != nil:
				// Such a gateway needs no privilege, and no state but
				// the API's services: a user who may not create the
				// directory (the default /var/lib/ztgate) runs it all
				// the same, as before, with the API unable to keep
				// services until the directory is there.
				g.log.Warn("state directory not locked: the API's services cannot be kept there",
					"state_dir", cfg.StateDir, "err", err)
			default:
				g.stateLock = lock
			}
		}
	} else if err := g.openPool(); err != nil {
		return nil, err
	}
	g.running = cfg
	g.disc = newDiscovery(g)
	if err := g.loadServices(cfg); err != nil {
		// The pool holds the state directory's lock: a New in this
		// process once the cause is fixed must find it free.
		g.closeUnstarted()
		return nil, err
	}
	return g, nil
}

// loadServices builds the first table of cfg's services and the API's
// stored ones.
func (g *Gateway) loadServices(cfg *conf.Gateway) error {
	g.apiStore = newAPIStore(cfg.StateDir)
	api, err := g.apiStore.load(cfg.ServiceContext())
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	services, err := mergeServices(cfg.Services, api)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.apiServices = api
	t, err := g.buildTable(services, cfg.Tenants, cfg.Limits, cfg.DrainTimeout)
	if err != nil {
		return err
	}
	g.tbl.Store(t)
	return nil
}

// closeUnstarted releases what a New that failed had taken: the pool and
// its lock, the lookups and the workers.
func (g *Gateway) closeUnstarted() {
	g.cancel()
	g.disc.stop()
	g.workers.Close()
	if g.pool != nil {
		g.pool.Close()
	}
	if g.stateLock != nil {
		g.stateLock.Close()
	}
}

// openPool opens the local VIP allocator on the state directory.
func (g *Gateway) openPool() error {
	pool, warnings, err := catalog.OpenPool(catalog.PoolConfig{
		Prefix:   g.cfg.TUN.Pool,
		Prefix6:  g.cfg.TUN.Pool6,
		StateDir: g.cfg.StateDir,
		HoldDown: g.cfg.VIPHoldDown,
		Now:      g.opts.Now,
		InUse:    g.vipInUse,
		// One process per state directory: a second gateway (or a relay)
		// on it is refused before it reads or writes anything there.
		Exclusive: true,
	})
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	for _, w := range warnings {
		g.log.Warn("VIP state", "warning", w)
	}
	g.pool = pool
	g.m.pool.Store(pool) // ztgate_vip_pool_used reads it
	_, _, capacity := pool.Usage()
	g.m.poolCapacity.Set(float64(capacity)) // the pool changes only at a restart
	return nil
}

// Registry returns the registry the gateway's metrics are in.
func (g *Gateway) Registry() *prometheus.Registry { return g.m.reg }

// Start brings up the netstack, the LAN ingress (the TUN device with the
// pools routed into it) and the admin API.
func (g *Gateway) Start() error {
	var pools []netip.Prefix
	pools = append(pools, g.cfg.TUN.Pool.Masked())
	if g.cfg.TUN.Pool6.IsValid() {
		pools = append(pools, g.cfg.TUN.Pool6.Masked())
	}
	ns, err := netstack.New(netstack.Config{
		Pools:                 pools,
		Local:                 g.localAddrs(),
		Handler:               g,
		MaxInflightHandshakes: g.cfg.Limits.MaxInflightHandshake,
		HandshakeTimeout:      g.opts.HandshakeTimeout,
		OnDrop:                g.m.drop,
	}, g.root.With("component", "netstack"))
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.ns = ns
	g.stack.Store(ns)
	r, err := newReactor()
	if err != nil {
		g.Close()
		return fmt.Errorf("gateway: %w", err)
	}
	g.reactor = r
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.sweepIdle()
	}()
	if g.tunnelOn() {
		// Before the LAN link starts: its packets' sources are looked up
		// here (identify).
		g.ingresses = newIngressTable(g.m.ingresses, g)
	}
	if err := g.startLAN(pools); err != nil {
		g.Close()
		return err
	}
	if err := g.startTunnel(); err != nil {
		g.Close()
		return err
	}
	if err := g.startDNS(); err != nil {
		g.Close()
		return err
	}
	g.startHealth()
	g.disc.sync(g.tbl.Load())
	if err := g.startAPI(); err != nil {
		g.Close()
		return err
	}
	g.watchConfig()
	g.warnLimits()
	g.log.Info("gateway started", "name", g.cfg.Name, "pool", g.cfg.TUN.Pool, "services", len(g.tbl.Load().byName))
	return nil
}

// localAddrs are the gateway's own addresses in the netstack.
func (g *Gateway) localAddrs() []netip.Addr {
	addrs := []netip.Addr{g.cfg.TUN.GatewayAddr()}
	if p := g.cfg.TUN.Pool6; p.IsValid() {
		addrs = append(addrs, p.Masked().Addr().Next())
	}
	return addrs
}

// startLAN attaches the LAN ingress: LAN clients are admitted by their
// tenant's source prefixes, everyone else is dropped and counted.
func (g *Gateway) startLAN(pools []netip.Prefix) error {
	if !g.cfg.TUN.Enabled && g.opts.Device == nil {
		return nil
	}
	dev := g.opts.Device
	if dev == nil {
		t, err := netstack.OpenTUN(g.cfg.TUN.Name, g.cfg.TUN.MTU)
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		g.tun = t
		dev = t
		g.m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ztgate_tun_read_errors_total",
			Help: "Reads from the TUN device that failed or held no packet the gateway could take (dropped whole).",
		}, func() float64 { return float64(t.ReadErrors()) }))
	}
	g.dev = dev
	tunnelOn := g.tunnelOn()
	link, err := g.ns.AttachDevice(dev, netstack.LinkConfig{
		Name: "lan",
		// Every packet goes out through the link's writer goroutine: the
		// sender writing on an idle link gained nothing in connections/s
		// or idle round trips, and writing always in the sender lost
		// (docs/performance.md, "Also measured, and not kept").
		Async: true,
		Admit: func(src netip.Addr) bool {
			// The tunnel's synthetic sources come only from its own link:
			// a LAN packet with one would pose as that agent, with its
			// identity and tenant, and reach its flows.
			if tunnelOn && synthPrefix.Contains(src) {
				return false
			}
			_, ok := g.tbl.Load().tenants.lookup(src)
			return ok
		},
		// An ICMP error about a packet sent to dst is taken from dst, or
		// from a source of dst's tenant (a router on the LAN): never from
		// another tenant's, nor about a tunnel session.
		ICMPErrorFrom: func(src, dst netip.Addr) bool {
			if src == dst {
				return true
			}
			if tunnelOn && synthPrefix.Contains(dst) {
				return false
			}
			tenants := g.tbl.Load().tenants
			ts, okS := tenants.lookup(src)
			td, okD := tenants.lookup(dst)
			return okS && okD && ts == td
		},
	})
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.lan = link
	if g.tun != nil {
		if err := g.tun.Up(pools); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		g.log.Info("TUN up", "device", g.tun.Name(), "mtu", g.cfg.TUN.MTU, "routes", pools, "batch", g.tun.BatchSize())
		g.tun.WarnShadowed(g.log, pools)
		g.tun.WarnOverlapping(g.log, pools)
		g.warnForwarding(pools)
	}
	return nil
}

// Run starts the gateway, serves until ctx is done and shuts down.
func (g *Gateway) Run(ctx context.Context) error {
	if err := g.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	return g.Close()
}

// Close stops accepting, closes every flow, removes the TUN device and its
// routes and waits for every goroutine. The order matters: no new packets,
// then no flows, then no stack.
func (g *Gateway) Close() error {
	g.lifeMu.Lock()
	if !g.closing.CompareAndSwap(false, true) {
		g.lifeMu.Unlock()
		return nil
	}
	g.lifeMu.Unlock()
	g.cancel()
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	g.api.Shutdown(ctx)
	cancel()
	g.stopHealth()
	g.disc.stop()
	g.stopDNS()
	if g.dev != nil {
		if err := g.dev.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if g.direct != nil {
		g.direct.Close()
	}
	for _, f := range g.flows.list(nil) {
		f.close("shutdown")
		if t := f.splice.Load(); t != nil {
			t.teardown("shutdown")
		}
	}
	if g.lan != nil {
		g.lan.Close()
	}
	if g.tunLink != nil {
		g.tunLink.Close()
	}
	g.wg.Wait()
	// Flows whose splice started while the first pass ran.
	for _, f := range g.flows.list(nil) {
		if t := f.splice.Load(); t != nil {
			t.teardown("shutdown")
		}
	}
	if g.reactor != nil {
		g.reactor.close()
	}
	if g.workers != nil {
		g.workers.Close()
	}
	if g.ns != nil {
		g.ns.Close()
	}
	if g.pinger != nil && g.opts.Pinger == nil {
		g.pinger.Close()
	}
	if err := g.pool.Close(); err != nil {
		errs = append(errs, err)
	}
	if g.stateLock != nil {
		if err := g.stateLock.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	g.log.Info("gateway stopped")
	return errors.Join(errs...)
}

// vipInUse tells the allocator whether flows to a VIP are alive, so a
// removed service's VIP is held while they drain.
func (g *Gateway) vipInUse(vip netip.Addr) bool {
	for _, f := range g.flows.list(nil) {
		if f.vip.Addr() == vip {
			return true
		}
	}
	return false
}
