package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/ztgate/ztgate/internal/listenaddr"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/resolver"
)

// dnsView is what one tenant sees of the zone in one table generation. It
// is immutable, so the resolver may cache answers per view.
type dnsView struct {
	byName map[string]resolver.Entry
	byAddr map[netip.Addr]resolver.Entry
}

var _ resolver.View = (*dnsView)(nil)

// Lookup implements resolver.View.
func (v *dnsView) Lookup(label string) (resolver.Entry, bool) {
	e, ok := v.byName[label]
	return e, ok
}

// Reverse implements resolver.View.
func (v *dnsView) Reverse(addr netip.Addr) (resolver.Entry, bool) {
	e, ok := v.byAddr[addr.Unmap()]
	return e, ok
}

func (v *dnsView) add(s *service) {
	e := resolver.Entry{Name: s.spec.Name, VIP: s.vip, VIP6: s.vip6, Ports: s.spec.Ports}
	v.byName[e.Name] = e
	if e.VIP.IsValid() {
		v.byAddr[e.VIP] = e
	}
	if e.VIP6.IsValid() {
		v.byAddr[e.VIP6] = e
	}
}

func newDNSView() *dnsView {
	return &dnsView{byName: make(map[string]resolver.Entry), byAddr: make(map[netip.Addr]resolver.Entry)}
}

// buildViews gives every tenant named by a service (and every declared
// tenant) its view, every other tenant (a tunnel agent's certificate
// tenant, say) one shared view of the services open to "*", and the
// operator the view of every service. Views are built once per table
// generation: the resolver caches answers by view.
func (t *table) buildViews(tenants []string) {
	t.all = newDNSView()
	t.open = newDNSView()
	t.views = make(map[string]*dnsView)
	for _, name := range tenants {
		t.views[name] = newDNSView()
	}
	for _, s := range t.byName {
		t.all.add(s)
		for _, tn := range s.spec.Tenants {
			if tn == "*" {
				t.open.add(s)
				continue
			}
			if t.views[tn] == nil {
				t.views[tn] = newDNSView()
			}
		}
	}
	for tn, v := range t.views {
		for _, s := range t.byName {
			if s.spec.Allows(tn) {
				v.add(s)
			}
		}
	}
}

// view returns a tenant's view; a tenant no service names and no [[tenant]]
// declares sees the shared view of the services open to every tenant.
func (t *table) view(tenant string) *dnsView {
	if v, ok := t.views[tenant]; ok {
		return v
	}
	return t.open
}

// stackDirectory answers DNS inside the netstack: the client's tenant comes
// from its ingress identity.
type stackDirectory struct{ g *Gateway }

// View implements resolver.Directory. A tunnel ingress whose identity may
// reach only some of its tenant's services (a certificate of the original
// system, a relay tag's one service) sees only those: what it may not reach
// it may not name either.
func (d stackDirectory) View(client netip.Addr) resolver.View {
	t := d.g.tbl.Load()
	if d.g.ingresses != nil && synthPrefix.Contains(client) {
		in := d.g.ingresses.lookup(client)
		if in == nil || in.closed.Load() {
			return nil
		}
		var v resolver.View = t.view(in.peer.tenant)
		if in.services != nil {
			v = restrictedView{v.(*dnsView), in.services}
		}
		return tunnelView{v}
	}
	p, ok := d.g.identify(t, client)
	if !ok {
		return nil
	}
	return t.view(p.tenant)
}

// tunnelView is the view of a tunnel ingress: names have no AAAA, as the
// agent answers them, because a gateway takes only IPv4 from a tunnel (a
// client that preferred the IPv6 VIP would find nothing there). The PTR
// of either VIP stays. Comparable when the view it wraps is: cached alike.
type tunnelView struct{ resolver.View }

// Lookup implements resolver.View.
func (v tunnelView) Lookup(label string) (resolver.Entry, bool) {
	e, ok := v.View.Lookup(label)
	e.VIP6 = netip.Addr{}
	return e, ok
}

// restrictedView is a tenant's view of which only the services named show.
type restrictedView struct {
	v     *dnsView
	names []string
}

// Lookup implements resolver.View.
func (r restrictedView) Lookup(label string) (resolver.Entry, bool) {
	if e, ok := r.v.Lookup(label); ok && slices.Contains(r.names, e.Name) {
		return e, true
	}
	return resolver.Entry{}, false
}

// Reverse implements resolver.View.
func (r restrictedView) Reverse(addr netip.Addr) (resolver.Entry, bool) {
	if e, ok := r.v.Reverse(addr); ok && slices.Contains(r.names, e.Name) {
		return e, true
	}
	return resolver.Entry{}, false
}

// hostDirectory answers DNS on the host listeners: loopback is the
// router's operator and sees every service; others by their source prefix.
type hostDirectory struct{ g *Gateway }

// View implements resolver.Directory.
func (d hostDirectory) View(client netip.Addr) resolver.View {
	t := d.g.tbl.Load()
	if client.Unmap().IsLoopback() {
		return t.all
	}
	tenant, ok := t.tenants.lookup(client)
	if !ok {
		return nil
	}
	return t.view(tenant)
}

// startDNS serves the zone at the gateway address inside the netstack (UDP
// and TCP port 53) and on every [dns] listen host address.
func (g *Gateway) startDNS() error {
	base := resolver.Config{
		Zone:           g.cfg.DNS.Zone,
		TTL:            g.cfg.DNS.TTL,
		NSAddr:         g.cfg.TUN.GatewayAddr(),
		Pool:           g.cfg.TUN.Pool,
		Pool6:          g.cfg.TUN.Pool6,
		Upstreams:      g.cfg.DNS.Upstreams,
		ForwardTimeout: g.cfg.DNS.ForwardTimeout,
	}
	log := g.root.With("component", "dns")
	if g.ns != nil {
		cfg := base
		cfg.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"listener": "netstack"}, g.m.reg)
		srv, err := resolver.New(cfg, stackDirectory{g}, log)
		if err != nil {
			return fmt.Errorf("gateway: dns: %w", err)
		}
		g.reloadMu.Lock() // a relay's assign may come already (followRelayPools)
		g.dnsStack = srv
		g.followRelayPools()
		g.reloadMu.Unlock()
		for _, a := range g.localAddrs() {
			ap := netip.AddrPortFrom(a, 53)
			pc, err := g.ns.ListenUDP(ap)
			if err != nil {
				return fmt.Errorf("gateway: dns on %s/udp: %w", ap, err)
			}
			l, err := g.ns.ListenTCP(ap)
			if err != nil {
				pc.Close()
				return fmt.Errorf("gateway: dns on %s/tcp: %w", ap, err)
			}
			g.serveDNS(srv, pc, l)
		}
	}
	if len(g.cfg.DNS.Listen) == 0 {
		return nil
	}
	cfg := base
	cfg.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"listener": "host"}, g.m.reg)
	srv, err := resolver.New(cfg, hostDirectory{g}, log)
	if err != nil {
		return fmt.Errorf("gateway: dns: %w", err)
	}
	g.reloadMu.Lock()
	g.dnsHost = srv
	if p := g.dnsPools; p[0].IsValid() { // followed already, for dnsStack
		srv.SetPools(p[0], p[1])
	} else {
		g.followRelayPools()
	}
	g.reloadMu.Unlock()
	for _, ap := range g.cfg.DNS.Listen {
		pc, err := listenaddr.ListenPacket(ap.String())
		if err != nil {
			return fmt.Errorf("gateway: dns listen %s/udp: %w", ap, err)
		}
		l, err := listenaddr.Listen(ap.String())
		if err != nil {
			pc.Close()
			return fmt.Errorf("gateway: dns listen %s/tcp: %w", ap, err)
		}
		g.serveDNS(srv, pc, l)
		log.Info("dns listening", "addr", ap)
	}
	return nil
}

func (g *Gateway) serveDNS(srv *resolver.Server, pc net.PacketConn, l net.Listener) {
	g.wg.Add(2)
	go func() {
		defer g.wg.Done()
		if err := srv.ServePacket(pc); err != nil {
			g.log.Error("dns stopped", "addr", pc.LocalAddr().String(), "err", err)
		}
	}()
	go func() {
		defer g.wg.Done()
		if err := srv.ServeStream(l); err != nil {
			g.log.Error("dns stopped", "addr", l.Addr().String(), "err", err)
		}
	}()
}

// followRelayPools makes the reverse zones of the DNS servers those of the
// pools the relay assigned, once it has: behind a relay the VIPs are the
// relay's, and the PTR of each must be answered as it is without one,
// whatever the gateway's own tun.pool (and with a relay.pool6, though the
// file has no tun.pool6). A relay that moved its pools moves the zones.
// The caller holds reloadMu; it is called whenever the relay's VIPs are
// applied (applyLocked) and when a server starts.
func (g *Gateway) followRelayPools() {
	pool, pool6, ok := g.relayPools()
	if !ok || g.dnsPools == [2]netip.Prefix{pool, pool6} {
		return
	}
	g.dnsPools = [2]netip.Prefix{pool, pool6}
	for _, srv := range []*resolver.Server{g.dnsStack, g.dnsHost} {
		if srv != nil {
			srv.SetPools(pool, pool6)
		}
	}
}

// stopDNS shuts the DNS servers down; Serve* return and close their conns.
func (g *Gateway) stopDNS() {
	for _, srv := range []*resolver.Server{g.dnsStack, g.dnsHost} {
		if srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2e9)
			srv.Shutdown(ctx)
			cancel()
		}
	}
}
