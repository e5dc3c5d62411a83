package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/ztgate/ztgate/internal/listenaddr"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/resolver"
	"github.com/ztgate/ztgate/tunnel"
)

// Options are the parts of an agent that tests replace.
type Options struct {
	// Device replaces the TUN device (tests); nil opens [tun].
	Device netstack.Device
	// Registry receives the metrics; nil creates one.
	Registry *prometheus.Registry
	// resolver replaces the host's systemd-resolved (tests); with a
	// Device it is set for the configured TUN name.
	resolver *resolverHost
}

// Agent is the agent role.
type Agent struct {
	cfg   *conf.Agent
	opts  Options
	root  *slog.Logger
	log   *slog.Logger
	m     *metrics
	creds *tunnel.Credentials
	// serverMoves: the file of the last reload names another tunnel.server
	// than the agent runs with (restart-only): the TLS files wait for the
	// restart with it (applyReload, ReloadCredentials).
	serverMoves atomic.Bool

	tun   *netstack.TUN   // nil when Options.Device replaces it
	dev   netstack.Device // where the agent's own traffic comes from
	stack *netstack.Stack // the local stack: DNS at the gateway address, fast refusals
	local *netstack.Link
	dns   []*resolver.Server

	dir    atomic.Pointer[directory]
	sess   atomic.Pointer[tunnel.Session]
	link   tunnel.Link      // the session to the server, for Status
	mtu    atomic.Int64     // the TUN's MTU now
	direct *direct          // direct paths to gateways
	api    *adminapi.Server // [api] listen; nil when off
	// resolved keeps systemd-resolved pointed at the agent; nil when the
	// agent leaves the host's resolver alone, and resolverNote says why.
	resolved     *resolverKeeper
	resolverNote ResolverStatus

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New prepares an agent; Start brings it up.
func New(cfg *conf.Agent, opts Options, log *slog.Logger) (*Agent, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	a := &Agent{cfg: cfg, opts: opts, root: log, log: log.With("component", "agent")}
	a.m = newMetrics(opts.Registry)
	creds, err := tunnel.NewCredentials(tunnel.CredentialsConfig{
		CertFile: cfg.Tunnel.Cert, KeyFile: cfg.Tunnel.Key, CAFile: cfg.Tunnel.CA, Insecure: cfg.Tunnel.Insecure,
		Role: tunnel.RoleAgent,
	}, log.With("component", "tunnel"))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.creds = creds
	a.dir.Store(emptyDirectory(cfg.TUN.Pool))
	a.mtu.Store(int64(cfg.TUN.MTU))
	a.ctx, a.cancel = context.WithCancel(context.Background())
	return a, nil
}

// gatewayAddr is where the agent answers DNS: the first host of the pool.
func (a *Agent) gatewayAddr() netip.Addr { return a.cfg.TUN.GatewayAddr() }

// Start opens the TUN device with the agent's address and the pool routed
// into it, starts the local DNS and connects the tunnel.
func (a *Agent) Start() error {
	if a.cfg.Tunnel.Insecure {
		a.log.Warn("INSECURE: [tunnel] insecure_allow_unauthenticated is on; never use this in production")
	}
	pool := a.dir.Load().pool
	st, err := netstack.New(netstack.Config{
		Pools:   []netip.Prefix{pool},
		Local:   []netip.Addr{a.gatewayAddr()},
		Handler: refuser{},
	}, a.root.With("component", "netstack"))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.stack = st
	dev := a.opts.Device
	if dev == nil {
		t, err := netstack.OpenTUN(a.cfg.TUN.Name, a.cfg.TUN.MTU)
		if err != nil {
			a.Close()
			return fmt.Errorf("agent: %w", err)
		}
		a.tun, dev = t, t
	}
	a.dev = dev
	link, err := st.NewLink(netstack.LinkConfig{
		Name: "local", MTU: dev.MTU(), Output: dev,
		Headroom: dev.Headroom(), WriteCap: dev.WriteCap(), BatchSize: dev.BatchSize(),
	})
	if err != nil {
		a.Close()
		return fmt.Errorf("agent: %w", err)
	}
	a.local = link
	if a.tun != nil {
		if err := a.tun.AddAddress(netip.PrefixFrom(a.cfg.TUN.Address, 32)); err != nil {
			a.Close()
			return fmt.Errorf("agent: %w", err)
		}
		if err := a.tun.Up(tunRoutes(pool, a.gatewayAddr())); err != nil {
			a.Close()
			return fmt.Errorf("agent: %w", err)
		}
		a.log.Info("TUN up", "device", a.tun.Name(), "address", a.cfg.TUN.Address, "routes", pool)
		a.tun.WarnShadowed(a.log, tunRoutes(pool, a.gatewayAddr()))
		a.tun.WarnOverlapping(a.log, tunRoutes(pool, a.gatewayAddr()))
	}
	a.direct = newDirect(a)
	a.wg.Go(a.direct.run)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		dev.Run(newRouter(a))
	}()
	if err := a.startDNS(); err != nil {
		a.Close()
		return err
	}
	if a.cfg.DNS.SetResolver {
		switch {
		case a.opts.resolver != nil:
			a.startResolver(*a.opts.resolver, a.cfg.TUN.Name)
		case a.tun != nil:
			a.startResolver(systemResolved(), a.tun.Name())
		}
	}
	if err := a.startAPI(); err != nil {
		a.Close()
		return err
	}
	a.startTunnel()
	a.log.Info("agent started", "name", a.cfg.Name, "server", a.cfg.Tunnel.Server, "address", a.cfg.TUN.Address,
		"procs", runtime.GOMAXPROCS(0))
	return nil
}

// Run starts the agent and serves until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	return a.Close()
}

// Close disconnects, removes the TUN device and its routes and waits for
// every goroutine.
func (a *Agent) Close() error {
	a.cancel()
	a.stopAPI()
	var errs []error
	for _, s := range a.dns {
		ctx, cancel := context.WithTimeout(context.Background(), 2e9)
		s.Shutdown(ctx)
		cancel()
	}
	if a.dev != nil {
		if err := a.dev.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	a.wg.Wait()
	if a.local != nil {
		a.local.Close()
	}
	if a.stack != nil {
		a.stack.Close()
	}
	return errors.Join(errs...)
}

// dnsDirectory serves every client the agent's directory: the agent is one
// identity, and its host listeners are its own.
type dnsDirectory struct{ a *Agent }

// View implements resolver.Directory.
func (d dnsDirectory) View(netip.Addr) resolver.View { return d.a.dir.Load() }

// startDNS answers the zone at the gateway address through the TUN and on
// every [dns] listen address, from the directory.
func (a *Agent) startDNS() error {
	d := a.dir.Load()
	cfg := resolver.Config{
		Zone: a.cfg.DNS.Zone, TTL: a.cfg.DNS.TTL, NSAddr: a.gatewayAddr(), Pool: d.pool, Pool6: d.pool6,
		Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"listener": "agent"}, a.m.reg),
	}
	srv, err := resolver.New(cfg, dnsDirectory{a}, a.root.With("component", "dns"))
	if err != nil {
		return fmt.Errorf("agent: dns: %w", err)
	}
	a.dns = append(a.dns, srv)
	ap := netip.AddrPortFrom(a.gatewayAddr(), 53)
	pc, err := a.stack.ListenUDP(ap)
	if err != nil {
		return fmt.Errorf("agent: dns on %s: %w", ap, err)
	}
	l, err := a.stack.ListenTCP(ap)
	if err != nil {
		pc.Close()
		return fmt.Errorf("agent: dns on %s: %w", ap, err)
	}
	a.serveDNS(srv, pc, l)
	for _, ap := range a.cfg.DNS.Listen {
		pc, err := listenaddr.ListenPacket(ap.String())
		if err != nil {
			return fmt.Errorf("agent: dns listen %s: %w", ap, err)
		}
		l, err := listenaddr.Listen(ap.String())
		if err != nil {
			pc.Close()
			return fmt.Errorf("agent: dns listen %s: %w", ap, err)
		}
		a.serveDNS(srv, pc, l)
	}
	return nil
}

func (a *Agent) serveDNS(srv *resolver.Server, pc net.PacketConn, l net.Listener) {
	a.wg.Add(2)
	go func() { defer a.wg.Done(); srv.ServePacket(pc) }()
	go func() { defer a.wg.Done(); srv.ServeStream(l) }()
}
