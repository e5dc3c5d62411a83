package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// healthReportInterval is how often the health of the services is compared
// with what the relay was last told; a change is reported at once.
const healthReportInterval = 500 * time.Millisecond

// pendingTagLimit bounds the packets held for a tag whose tag_open has not
// arrived yet (datagrams can overtake the control stream).
// pendingTagsMax bounds the tags held at once; pendingTagTimeout is how long
// a tag's packets are held.
const (
	pendingTagLimit   = 16
	pendingTagsMax    = 1024
	pendingTagTimeout = 2 * time.Second
	// closedTagsMax bounds the closed tags remembered (rs.closed): a
	// tag_close of more within pendingTagTimeout leaves the rest to be
	// held like unknown ones.
	closedTagsMax = 4 * pendingTagsMax
)

// relayOutboxLen bounds the replies waiting for the relay session, which
// carries those of every relayed agent: twice a direct session's.
const relayOutboxLen = 2 * directOutboxLen

// relayState is the gateway's view of its relay: the VIPs it assigned.
type relayState struct {
	mu    sync.Mutex
	vips  map[string]tunnel.VIPAssignment
	pool  netip.Prefix
	pool6 netip.Prefix
	// zone is the DNS zone of the last assign that named one, lower case
	// with a trailing dot; "" before.
	zone string
}

// relayPools returns the VIP pools the relay assigned: ok is false until
// it has (or without a relay). pool6 is invalid when the relay has no IPv6
// pool.
func (g *Gateway) relayPools() (pool, pool6 netip.Prefix, ok bool) {
	if g.relay == nil {
		return netip.Prefix{}, netip.Prefix{}, false
	}
	g.relay.mu.Lock()
	defer g.relay.mu.Unlock()
	return g.relay.pool, g.relay.pool6, g.relay.pool.IsValid()
}

// relayAllocations returns the relay's VIPs of svcs (services the relay has
// not assigned yet get none, so they are not reachable yet).
func (g *Gateway) relayAllocations(svcs []catalog.Service) map[string]catalog.Allocation {
	g.relay.mu.Lock()
	defer g.relay.mu.Unlock()
	out := make(map[string]catalog.Allocation, len(svcs))
	for _, s := range svcs {
		if a, ok := g.relay.vips[s.Name]; ok {
			out[s.Name] = catalog.Allocation{Service: s.Name, VIP: a.VIP, VIP6: a.VIP6}
		}
	}
	return out
}

// tunName is the gateway's TUN device, "" without one.
func (g *Gateway) tunName() string {
	if g.tun == nil {
		return ""
	}
	return g.tun.Name()
}

func (g *Gateway) startRelayClient() {
	r := &tunnel.Redialer{
		Addr: g.cfg.Tunnel.Relay,
		Config: tunnel.DialConfig{
			Credentials: g.creds,
			ServerName:  g.cfg.Tunnel.ServerName,
			ServerRoles: []string{tunnel.RoleRelay},
			Hello:       tunnel.Hello{Role: tunnel.RoleGateway, Name: g.cfg.Name, Version: "ztgate"},
			Registerer:  g.m.reg,
		},
		Log:          g.root.With("component", "relay-client"),
		OnSession:    g.serveRelay,
		OnDisconnect: g.relayLink.Down,
		// An uplink that comes back (a DHCP lease, a cable) ends the
		// wait for the next dial, which grew while it was gone.
		Wake: netstack.NetworkWake(g.ctx, g.tunName(), g.log, g.wg.Go),
	}
	g.m.registerRelayLink(&g.relayLink)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		r.Run(g.ctx)
	}()
}

// relaySession is one connection to the relay and the tags it opened.
type relaySession struct {
	g *Gateway
	s *tunnel.Session
	// out sends the replies of every tag (tunnel.Outbox): one session
	// carries every relayed agent, so one outbox keeps the tunnel link's
	// writer from waiting for its send queue; the relay's outbox per agent
	// keeps the relayed agents from each other on its side.
	out  *tunnel.Outbox
	mu   sync.Mutex
	tags map[uint32]*ingress
	// pending holds packets of tags not announced yet; swept is when its
	// expired entries were last removed.
	pending map[uint32]*pendingTag
	swept   time.Time
	// closed holds when each tag a tag_close named was closed, for
	// pendingTagTimeout: the packets still in flight under it are dropped,
	// not held, so that none can reach a new tag of the same number. Swept
	// with pending.
	closed map[uint32]time.Time
}

func newRelaySession(g *Gateway, s *tunnel.Session, out *tunnel.Outbox) *relaySession {
	return &relaySession{g: g, s: s, out: out, tags: make(map[uint32]*ingress),
		pending: make(map[uint32]*pendingTag), closed: make(map[uint32]time.Time)}
}

type pendingTag struct {
	since time.Time
	pkts  [][]byte
}

// relayOutbox starts the outbox of the relay session s. It stays out of
// the budget of the direct sessions' outboxes: it carries the replies of
// every relayed agent, and slow direct agents that spent the budget must
// not hold all of them to tunnel.OutboxReserve.
func (g *Gateway) relayOutbox(s tunnel.DatagramSender) *tunnel.Outbox {
	return tunnel.NewOutbox(s, relayOutboxLen, nil, func(error) { g.m.tunnelDrop("send_error") })
}

// serveRelay runs one relay session: it registers the services, applies
// the VIPs the relay assigns, keeps the relay told of health changes, and
// carries the tagged packets of agents.
func (g *Gateway) serveRelay(ctx context.Context, s *tunnel.Session) error {
	g.relayLink.Up(s)
	rs := newRelaySession(g, s, g.relayOutbox(s))
	defer rs.out.Close() // after the tags: deferred calls run last first
	defer rs.closeAll("relay session ended")
	g.fitLink(s, tunnel.TagReturnOverhead)
	registered := g.serviceInfos()
	if err := s.Send(tunnel.Register{Type: tunnel.MessageRegister, Services: registered, Candidates: g.directCandidates(s.Welcome().Observed)}); err != nil {
		return fmt.Errorf("register: %w", err)
	}

	// The control loop reads until the session ends: end it when the
	// gateway closes, or Close would wait until the relay goes away.
	stop := context.AfterFunc(ctx, func() { s.Close("gateway shutting down") })
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer cancel()
		rs.datagrams(ctx)
	}()
	go func() {
		defer wg.Done()
		rs.reportHealth(ctx, registered)
	}()
	err := rs.control()
	cancel()
	wg.Wait()
	return err
}

// control handles the relay's control messages until the session ends.
func (rs *relaySession) control() error {
	g := rs.g
	for {
		msg, err := tunnel.DecodeControl(rs.s.Next())
		if err != nil {
			if reply, ok := tunnel.ReplyFor(err); ok {
				rs.s.Send(reply)
				continue
			}
			return err
		}
		if rs.signalMessage(msg) {
			continue
		}
		switch m := msg.(type) {
		case *tunnel.Assign:
			g.applyAssign(m, rs.s.RemoteAddr().Addr())
		case *tunnel.TagOpen:
			rs.openTag(m)
		case *tunnel.TagClose:
			for _, tag := range m.Tags {
				rs.closeTag(tag, "tag_closed")
			}
		case *tunnel.ErrorMessage:
			g.log.Warn("relay error", "code", m.Code, "message", m.Message)
		}
	}
}

// applyAssign takes the VIPs of the relay at relay and rebuilds the
// service table. An assign that does not fit (assignProblem) is ignored,
// counted and logged: the VIPs and pools in force stay.
func (g *Gateway) applyAssign(m *tunnel.Assign, relay netip.Addr) {
	if err := assignProblem(m, relay); err != nil {
		g.m.controlRejected("bad_assign")
		g.log.Error("ignoring the relay's VIP assignment; keeping the one in force", "err", err)
		return
	}
	g.relay.mu.Lock()
	g.relay.vips = make(map[string]tunnel.VIPAssignment, len(m.VIPs))
	for _, v := range m.VIPs {
		g.relay.vips[v.Service] = v
	}
	g.relay.pool, g.relay.pool6 = m.Pool, m.Pool6
	g.relay.mu.Unlock()
	g.noteRelayZone(m.Zone)
	for _, r := range m.Rejected {
		g.log.Error("relay rejected a service", "service", r.Service, "reason", r.Reason)
	}
	pools := []netip.Prefix{m.Pool}
	if m.Pool6.IsValid() {
		pools = append(pools, m.Pool6)
	}
	g.ns.SetPools(pools)
	g.endUnrouted()
	g.ns.ResetOutsidePools() // what the flows left: connections closed already, still sending their FIN
	g.routeRelayPools(pools)
	g.reloadMu.Lock()
	d, err := g.applyLocked(g.running, g.apiServices)
	g.reloadMu.Unlock()
	if err != nil {
		g.log.Error("applying the relay's VIPs", "err", err)
		return
	}
	g.log.Info("VIPs assigned by the relay", "services", len(m.VIPs), "pool", m.Pool, "changed", len(d.Changed)+len(d.Added))
}

// endUnrouted ends the flows to a VIP outside the netstack's pools, the
// relay's pools now (SetPools): the netstack drops their clients' packets
// from now on (not_routed), so they could carry nothing until their idle
// timeout while holding their backend's connection, and a TCP one resent
// what its client's answers to were dropped; ended, the client is told at
// once (a TCP flow is reset on both sides). A flow set up meanwhile asks
// the same in newFlow.
func (g *Gateway) endUnrouted() {
	for _, f := range g.flows.list(func(f *flow) bool { return !g.ns.InPools(f.vip.Addr()) }) {
		f.cut("vip_unrouted")
	}
}

// routeRelayPools routes the relay's pools into the LAN device (the TUN),
// with the gateway's own tun.pool and tun.pool6 (its address, which LAN
// clients ask DNS at): LAN clients reach the VIPs the relay assigned only
// through routes to them. Before, the TUN kept the routes of the file's
// own pools from the start, and a relay's pool other than tun.pool (or a
// relay.pool6) was routed nowhere. A device without routes (a test's
// client stack) is left as it is.
func (g *Gateway) routeRelayPools(pools []netip.Prefix) {
	dev, ok := g.dev.(interface{ SetRoutes([]netip.Prefix) error })
	if !ok {
		return
	}
	routes := []netip.Prefix{g.cfg.TUN.Pool.Masked()}
	if p := g.cfg.TUN.Pool6; p.IsValid() {
		routes = append(routes, p.Masked())
	}
	for _, p := range pools {
		if p = p.Masked(); !slices.Contains(routes, p) {
			routes = append(routes, p)
		}
	}
	if err := dev.SetRoutes(routes); err != nil {
		g.log.Error("routing the relay's VIP pools into the TUN", "routes", routes, "err", err)
	}
	if g.tun != nil {
		g.tun.WarnShadowed(g.log, routes)
		g.tun.WarnOverlapping(g.log, routes)
	}
}

// noteRelayZone takes the zone of an applied assign. The gateway answers
// in its own dns.zone whatever the relay's (its agents resolve in the
// relay's): when the relay's zone changes to one that differs from it,
// one warning names both, so that operators see the mismatch; another
// assign in the same zone says nothing more.
func (g *Gateway) noteRelayZone(zone string) {
	if zone == "" {
		return
	}
	z := strings.ToLower(zone)
	if !strings.HasSuffix(z, ".") {
		z += "."
	}
	g.relay.mu.Lock()
	changed := z != g.relay.zone
	g.relay.zone = z
	g.relay.mu.Unlock()
	if own := g.cfg.DNS.Zone; changed && z != own {
		g.log.Warn("the relay's DNS zone differs from dns.zone: agents resolve the services in the relay's zone, this gateway's DNS answers in its own",
			"relay_zone", z, "zone", own)
	}
}

// assignProblem says why an assign must not be applied, or nil. Its pool
// and pool6 (if any) must have the sizes every VIP pool has
// (catalog.PoolSizeOK), as a relay's configuration demands (protocol.md,
// "assign"): without a pool the netstack would route nothing and drop
// every packet. Each VIP must be of its family and inside its pool, each
// service named once and each address given to one service only.
func assignProblem(m *tunnel.Assign, relay netip.Addr) error {
	switch p := m.Pool; {
	case !p.IsValid():
		return errors.New("the assign has no pool")
	case !catalog.PoolSizeOK(p):
		return fmt.Errorf("pool %s is not an IPv4 prefix of /8 to /29", p)
	}
	if p := m.Pool6; p.IsValid() && !catalog.Pool6SizeOK(p) {
		return fmt.Errorf("pool6 %s is not an IPv6 prefix of /64 to /126", p)
	}
	// The pools are routed into the TUN (routeRelayPools): one holding
	// the relay's own address would take the session to it, as the agent
	// refuses a pool holding its server's (poolProblem).
	relay = relay.Unmap()
	for _, p := range []netip.Prefix{m.Pool, m.Pool6} {
		if p.IsValid() && p.Contains(relay) {
			return fmt.Errorf("pool %s holds the relay's address %s", p, relay)
		}
	}
	names := make(map[string]bool, len(m.VIPs))
	owner := make(map[netip.Addr]string, 2*len(m.VIPs))
	for _, v := range m.VIPs {
		if v.Service == "" || names[v.Service] {
			return fmt.Errorf("service %q is assigned VIPs twice or has no name", v.Service)
		}
		names[v.Service] = true
		for _, a := range []struct {
			addr netip.Addr
			pool netip.Prefix
			key  string
		}{{v.VIP, m.Pool, "vip"}, {v.VIP6, m.Pool6, "vip6"}} {
			if !a.addr.IsValid() {
				continue
			}
			if !a.pool.IsValid() {
				return fmt.Errorf("service %q: %s %s without a pool6", v.Service, a.key, a.addr)
			}
			if a.addr.Is4() != a.pool.Addr().Is4() || !a.pool.Contains(a.addr) {
				return fmt.Errorf("service %q: %s %s is outside the pool %s", v.Service, a.key, a.addr, a.pool)
			}
			if other, dup := owner[a.addr]; dup {
				return fmt.Errorf("%s is assigned to both service %q and service %q", a.addr, other, v.Service)
			}
			owner[a.addr] = v.Service
		}
	}
	return nil
}

// openTag registers the ingress of a tag the relay opened. A tag already
// open is refused before it takes a synthetic address. Tags are opened and
// closed by the control loop alone, so the check holds until the add.
func (rs *relaySession) openTag(m *tunnel.TagOpen) {
	g := rs.g
	tag := m.Tag
	rs.mu.Lock()
	_, dup := rs.tags[tag]
	rs.mu.Unlock()
	if dup {
		return
	}
	in := &ingress{
		peer:     peer{tenant: m.Tenant, identity: m.Identity},
		service:  m.Service,
		services: []string{m.Service},
		out:      rs.out,
		tag:      tag,
		tagged:   true,
	}
	in.pinInner(m.InnerAddr)
	if err := g.ingresses.add(in); err != nil {
		g.m.tunnelDrop("ingress_full")
		return
	}
	rs.mu.Lock()
	if old := rs.tags[tag]; old != nil {
		rs.mu.Unlock()
		g.closeIngress(in, "duplicate_tag")
		return
	}
	rs.tags[tag] = in
	delete(rs.closed, tag) // the relay drew this number again
	p := rs.pending[tag]
	delete(rs.pending, tag)
	rs.mu.Unlock()
	if p == nil {
		return
	}
	if p.expired(time.Now()) {
		rs.giveUp(p)
		return
	}
	for _, pkt := range p.pkts {
		g.deliverTunnel(in, m.Service, pkt, g.tunLink)
	}
}

// giveUp counts the packets held for a tag that are dropped: they
// expired, their tag closed, or the relay session ended before their
// tag_open came.
func (rs *relaySession) giveUp(p *pendingTag) {
	for range p.pkts {
		rs.g.m.tunnelDrop("unknown_tag")
	}
}

func (rs *relaySession) closeTag(tag uint32, reason string) {
	rs.mu.Lock()
	in := rs.tags[tag]
	delete(rs.tags, tag)
	p := rs.pending[tag]
	delete(rs.pending, tag)
	now := time.Now()
	if len(rs.closed) >= closedTagsMax {
		rs.sweepLocked(now)
	}
	if len(rs.closed) < closedTagsMax {
		rs.closed[tag] = now
	}
	rs.mu.Unlock()
	if p != nil {
		rs.giveUp(p)
	}
	if in != nil {
		rs.g.closeIngress(in, reason)
	}
}

func (rs *relaySession) closeAll(reason string) {
	rs.mu.Lock()
	tags, pending := rs.tags, rs.pending
	rs.tags, rs.pending = map[uint32]*ingress{}, map[uint32]*pendingTag{}
	rs.mu.Unlock()
	for _, p := range pending {
		rs.giveUp(p)
	}
	ins := make([]*ingress, 0, len(tags))
	for _, in := range tags {
		ins = append(ins, in)
	}
	rs.g.closeIngresses(reason, ins...)
}

// closeIngress ends an ingress, the flows bound to it and, for a direct
// session, its outbox.
func (g *Gateway) closeIngress(in *ingress, reason string) { g.closeIngresses(reason, in) }

// closeIngresses ends ingresses, the flows bound to them and, for a
// direct session, its outbox. Their flows are cut: their client can send
// nothing more. So are the netstack's TCP connections of theirs that no
// flow holds any more (closed gracefully just before, their FIN not yet
// acknowledged), which would otherwise send it for minutes to no one;
// before their synthetic addresses go back to the table, so that no new
// ingress's connection is taken for one of theirs. Many at once (a relay
// session's tags) take one pass over the flows and the connections.
func (g *Gateway) closeIngresses(reason string, ins ...*ingress) {
	closing := make(map[netip.Addr]*ingress, len(ins))
	for _, in := range ins {
		if in.closed.CompareAndSwap(false, true) {
			closing[in.synth] = in
		}
	}
	if len(closing) == 0 {
		return
	}
	for _, f := range g.flows.list(func(f *flow) bool { return closing[f.client.Addr()] != nil }) {
		f.cut(reason)
	}
	if g.ns != nil {
		g.ns.ResetTCP(func(_, remote netip.AddrPort) bool { return closing[remote.Addr().Unmap()] != nil })
	}
	for _, in := range closing {
		g.ingresses.remove(in)
		if !in.tagged { // a tag's outbox is its relay session's, closed with it
			in.out.Close() // waits for a send in progress: SendDatagram's 5 ms at most
		}
	}
}

// datagrams carries the relay's tagged packets into the netstack, each run
// of them that arrived together as one batch (GRO merges a flow's
// segments).
func (rs *relaySession) datagrams(ctx context.Context) {
	g := rs.g
	batch := g.tunLink.NewBatch()
	_ = rs.s.ReceiveBatches(ctx, func(b []byte) {
		d, err := tunnel.Parse(tunnel.V2, b)
		if err != nil {
			g.m.tunnelDrop("malformed_datagram")
			return
		}
		switch d.Type {
		case tunnel.TypeTagged:
			rs.mu.Lock()
			in := rs.tags[d.Tag]
			if in == nil {
				rs.holdLocked(d.Tag, d.Packet)
			}
			rs.mu.Unlock()
			if in != nil {
				g.deliverTunnel(in, in.service, d.Packet, batch)
			}
		case tunnel.TypeQAD:
		default:
			g.m.tunnelDrop("unexpected_datagram")
		}
	}, batch.Flush)
}

// holdLocked drops a packet of a tag closed less than pendingTagTimeout
// ago (one still in flight when its tag_close came); it keeps one of an
// unannounced tag for a moment: at most
// pendingTagLimit of a tag, of at most pendingTagsMax tags, for
// pendingTagTimeout. Every packet held is delivered after its tag_open or
// counted as unknown_tag (giveUp), as is every one over the bounds. Expired
// tags are swept when the map is full or a timeout has passed since the
// last sweep, not for every packet: a flood of unknown tags must not walk
// the whole map each time under rs.mu.
func (rs *relaySession) holdLocked(tag uint32, pkt []byte) {
	now := time.Now()
	if len(rs.pending) >= pendingTagsMax || now.Sub(rs.swept) > pendingTagTimeout {
		rs.sweepLocked(now)
	}
	if at, ok := rs.closed[tag]; ok && now.Sub(at) <= pendingTagTimeout {
		rs.g.m.tunnelDrop("unknown_tag")
		return
	}
	p := rs.pending[tag]
	if p != nil && p.expired(now) {
		delete(rs.pending, tag)
		rs.giveUp(p)
		p = nil
	}
	if p == nil {
		if len(rs.pending) >= pendingTagsMax {
			rs.g.m.tunnelDrop("unknown_tag")
			return
		}
		p = &pendingTag{since: now}
		rs.pending[tag] = p
	}
	if len(p.pkts) >= pendingTagLimit {
		rs.g.m.tunnelDrop("unknown_tag")
		return
	}
	p.pkts = append(p.pkts, slices.Clone(pkt)) // pkt's buffer is the session's again once delivered
}

// sweepLocked removes the expired pending tags and forgets the tags
// closed longer than pendingTagTimeout ago.
func (rs *relaySession) sweepLocked(now time.Time) {
	for t, p := range rs.pending {
		if p.expired(now) {
			delete(rs.pending, t)
			rs.giveUp(p)
		}
	}
	for t, at := range rs.closed {
		if now.Sub(at) > pendingTagTimeout {
			delete(rs.closed, t)
		}
	}
	rs.swept = now
}

// expired reports whether p's packets have been held too long.
func (p *pendingTag) expired(now time.Time) bool { return now.Sub(p.since) > pendingTagTimeout }

// reportHealth keeps the relay's view of the services current: it
// registers again when what the relay holds of a service changes (the
// service set, a service's tenants, ports, ICMP or VIP pins, as after a
// reload), else reports the services whose health changed. registered is
// what the session's first register carried.
func (rs *relaySession) reportHealth(ctx context.Context, registered []tunnel.ServiceInfo) {
	g := rs.g
	rep := relayReport{last: registered}
	t := time.NewTicker(healthReportInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		register, health := rep.next(g.serviceInfos())
		var err error
		switch {
		case register:
			err = rs.s.Send(tunnel.Register{Type: tunnel.MessageRegister, Services: rep.last,
				Candidates: g.directCandidates(rs.s.Welcome().Observed)})
		case len(health) > 0:
			err = rs.s.Send(tunnel.Health{Type: tunnel.MessageHealth, Services: health})
		}
		if err != nil {
			return
		}
	}
}

// relayReport is what the relay was last told of the services.
type relayReport struct {
	last []tunnel.ServiceInfo // sorted by name, as serviceInfos returns them
}

// next compares the services now (sorted by name) with what the relay was
// last told and records them: register when the relay must get the whole
// set again (a service added or removed, or its definition changed: a
// register carries health too), else the services whose health changed
// (nil when none did).
func (r *relayReport) next(infos []tunnel.ServiceInfo) (register bool, health map[string]bool) {
	defer func() { r.last = infos }()
	if !slices.EqualFunc(r.last, infos, sameRegistration) {
		return true, nil
	}
	for i, si := range infos {
		if r.last[i].Healthy != si.Healthy {
			if health == nil {
				health = make(map[string]bool)
			}
			health[si.Name] = si.Healthy
		}
	}
	return false, health
}

// sameRegistration reports whether two registrations of a service agree
// on everything but health.
func sameRegistration(a, b tunnel.ServiceInfo) bool {
	return a.Name == b.Name && slices.Equal(a.Tenants, b.Tenants) && slices.Equal(a.Ports, b.Ports) &&
		a.ICMP == b.ICMP && a.VIP == b.VIP && a.VIP6 == b.VIP6
}
