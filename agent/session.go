package agent

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// startTunnel keeps the agent connected to [tunnel] server, redialling with
// backoff, at once when the host's network changes after a failed dial
// (watchNetwork); the data path never waits for it.
func (a *Agent) startTunnel() {
	r := &tunnel.Redialer{
		Wake: a.watchNetwork(),
		Addr: a.cfg.Tunnel.Server,
		Config: tunnel.DialConfig{
			Credentials: a.creds,
			ServerName:  a.cfg.Tunnel.ServerName,
			ServerRoles: []string{tunnel.RoleRelay, tunnel.RoleGateway},
			Hello:       a.hello(),
			Registerer:  a.m.reg,
		},
		Log:          a.root.With("component", "tunnel"),
		OnSession:    a.serve,
		OnDisconnect: a.link.Down,
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		r.Run(a.ctx)
	}()
}

// watchNetwork returns what the host's network changes wake (nil without
// a TUN device: tests): a laptop whose Wi-Fi comes back dials again at
// once, not at the end of a wait grown while it was gone. The same changes
// make the resolver's keeper check the host's resolver, which the program
// that manages the new network may have reset (the session itself may go
// on: QUIC carries it to a new address), end the direct paths' backoffs,
// and check the host's networks against the pool (a network joined that
// is numbered like it). Changes of the agent's own TUN are not the
// network's.
func (a *Agent) watchNetwork() <-chan struct{} {
	if a.tun == nil {
		return nil
	}
	also := []func(){a.direct.networkChanged, func() {
		a.tun.WarnOverlapping(a.log, tunRoutes(a.dir.Load().pool, a.gatewayAddr()))
	}}
	if a.resolved != nil {
		also = append(also, a.resolved.wake)
	}
	return netstack.NetworkWake(a.ctx, a.tun.Name(), a.log, a.wg.Go, also...)
}

// hello is what the agent says to every server, relay or gateway.
func (a *Agent) hello() tunnel.Hello {
	return tunnel.Hello{Role: tunnel.RoleAgent, Name: a.cfg.Name, Version: "ztgate", InnerAddr: a.cfg.TUN.Address}
}

// serve runs one tunnel session: it sizes the TUN for the path, takes the
// directories the server pushes and writes the server's packets to the TUN.
func (a *Agent) serve(ctx context.Context, s *tunnel.Session) error {
	a.fitMTU(s)
	a.link.Up(s)
	if a.resolved != nil {
		a.resolved.wake() // a new network may have reset the host's resolver
	}
	a.sess.Store(s)
	defer a.sess.CompareAndSwap(s, nil)
	a.m.connected.Set(1)
	defer a.m.connected.Set(0)

	// The control loop reads until the session ends: end it when the agent
	// closes, or Close would wait forever.
	stop := context.AfterFunc(ctx, func() { s.Close("agent shutting down") })
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer cancel()
		a.receive(ctx, s, func(n int) { a.m.down.Add(float64(n)) }, nil)
	}()
	err := a.control(s)
	cancel()
	wg.Wait()
	return err
}

// fitMTU lowers the TUN's MTU so that every packet it takes fits a datagram
// to the server with its framing, and every reply fits the server's path.
func (a *Agent) fitMTU(s *tunnel.Session) {
	mtu := tunnelMTU(a.cfg.TUN.MTU, s.MaxDatagram(), s.Welcome().MaxPacket)
	var setTUN func(int) error
	if a.tun != nil {
		setTUN = a.tun.SetMTU
	}
	a.applyMTU(mtu, setTUN)
}

// applyMTU sizes the TUN (setTUN; nil when a device replaces it) and the
// local link to mtu. a.mtu records mtu only once both are sized: after a
// failure it keeps the size in force, so the next session retries.
func (a *Agent) applyMTU(mtu int, setTUN func(int) error) {
	if int64(mtu) == a.mtu.Load() {
		return
	}
	if setTUN != nil {
		if err := setTUN(mtu); err != nil {
			a.log.Error("cannot size the TUN for the tunnel", "mtu", mtu, "err", err)
			return
		}
	}
	a.local.SetMTU(mtu)
	a.mtu.Store(int64(mtu))
	a.log.Info("TUN MTU fitted to the tunnel", "mtu", mtu)
}

// minMTU is the floor of the TUN's MTU: the IPv4 datagram every host must
// take (RFC 791).
const minMTU = 576

// tunnelMTU is the TUN's MTU for a session: the configured bound, lowered
// so that a packet fits the session's largest datagram (maxDatagram) with a
// 0x2F header for the longest service name, and the largest packet the
// server carries onwards (maxPacket, from its welcome). A size of 0 is
// unknown (an ended session, a server that sent none) and lowers nothing.
func tunnelMTU(configured, maxDatagram, maxPacket int) int {
	mtu := configured
	if m := routedMTU(maxDatagram); m > 0 {
		mtu = min(mtu, m)
	}
	if maxPacket > 0 {
		mtu = min(mtu, maxPacket)
	}
	return max(mtu, minMTU)
}

// routedMTU is the largest packet a session whose largest datagram is
// maxDatagram carries with a 0x2F header for the longest service name; 0 or
// less when none fits.
func routedMTU(maxDatagram int) int { return maxDatagram - tunnel.MaxRoutedOverhead }

// control applies the server's control messages.
func (a *Agent) control(s *tunnel.Session) error {
	for {
		msg, err := tunnel.DecodeControl(s.Next())
		if err != nil {
			if reply, ok := tunnel.ReplyFor(err); ok {
				s.Send(reply)
				continue
			}
			return err
		}
		switch m := msg.(type) {
		case *tunnel.Directory:
			a.applyDirectory(m, s.RemoteAddr().Addr())
		case *tunnel.Answer:
			a.direct.event(m)
		case *tunnel.ErrorMessage:
			if m.SessionID != 0 {
				a.direct.event(m)
				continue
			}
			a.log.Warn("server error", "code", m.Code, "message", m.Message)
		case *tunnel.Ping:
			s.Send(&tunnel.Pong{Type: tunnel.MessagePong, Seq: m.Seq})
		}
	}
}

// applyDirectory makes a pushed directory the agent's: DNS answers from it
// at once, and the pool's route follows it. A pool the agent must not
// route into its TUN (poolProblem) is refused and the one in force kept.
// The services it no longer holds leave their direct paths (onGone). A
// service whose VIP is one of the agent's own addresses is left out, and
// logged when it comes so (logLocalVIPs).
func (a *Agent) applyDirectory(m *tunnel.Directory, server netip.Addr) {
	next := newDirectory(m)
	local := []netip.Addr{a.gatewayAddr(), a.cfg.TUN.Address}
	switch why := poolProblem(next.pool, a.cfg.TUN.Address, server); {
	case why != "":
		a.log.Error("refusing the server's VIP pool; keeping the one in force, without the services outside it",
			"pool", next.pool, "reason", why)
		next.keepPool(a.dir.Load().pool, local...)
	case !next.pool.IsValid(): // none pushed: the pool in force stays
		next.keepPool(a.dir.Load().pool, local...)
	default: // a service outside the pool would not be routed into the TUN
		next.keepPool(next.pool, local...)
	}
	// The DNS servers' reverse zones (PTR of the VIPs) follow the pool
	// before the directory is in force: who sees the new directory (a
	// query, Status) sees them too.
	if cur := a.dir.Load(); next.pool != cur.pool || next.pool6 != cur.pool6 {
		for _, srv := range a.dns {
			srv.SetPools(next.pool, next.pool6)
		}
		if a.resolved != nil {
			a.resolved.setPools(next.pool, next.pool6)
		}
	}
	prev := a.dir.Swap(next)
	a.logLocalVIPs(prev, next)
	var gone servicesGone
	for name := range prev.byName {
		if next.byName[name] == nil {
			gone = append(gone, name)
		}
	}
	if len(gone) > 0 && a.direct != nil {
		a.direct.event(gone)
	}
	if next.pool != prev.pool && next.pool.IsValid() {
		a.stack.SetPools([]netip.Prefix{next.pool})
		if a.tun != nil {
			routes := tunRoutes(next.pool, a.gatewayAddr())
			if err := a.tun.SetRoutes(routes); err != nil {
				a.log.Error("routing the pool", "pool", next.pool, "err", err)
			}
			a.tun.WarnShadowed(a.log, routes)
			a.tun.WarnOverlapping(a.log, routes)
		}
	}
	if next.zone != "" && next.zone != a.cfg.DNS.Zone {
		a.log.Warn("the server's zone differs from [dns] zone; answering for the configured zone", "server", next.zone, "configured", a.cfg.DNS.Zone)
	}
	if len(next.ignored) > 0 {
		a.log.Warn("ignoring directory entries whose name or VIP an earlier entry has", "services", next.ignored)
	}
	a.log.Info("directory", "services", len(next.byName))
}

// logLocalVIPs logs an error for each service next leaves out for a VIP
// that is one of the agent's own addresses and prev did not (once, not at
// every directory), naming the fix, and sets the gauge of them.
func (a *Agent) logLocalVIPs(prev, next *directory) {
	a.m.localVIPs.Set(float64(len(next.atLocal)))
	names := slices.Sorted(maps.Keys(next.atLocal))
	for _, name := range names {
		vip := next.atLocal[name]
		if old, ok := prev.atLocal[name]; ok && old == vip {
			continue
		}
		if vip == a.gatewayAddr() {
			a.log.Error("leaving out a service whose VIP is the agent's gateway address, where it answers DNS and ping itself: "+
				"give the server a VIP pool (relay.pool, a gateway's tun.pool) that does not hold this address except as its first host, "+
				"or pin the service to another VIP (the relay's [[pin]], a gateway's service.vip)",
				"service", name, "vip", vip, "pool", next.pool)
			continue
		}
		a.log.Error("leaving out a service whose VIP is the agent's tun.address: set a tun.address outside the server's VIP pool",
			"service", name, "vip", vip, "pool", next.pool)
	}
}

// tunRoutes are the prefixes routed into the TUN for pool: the pool, and
// the gateway address, where the zone is answered, when the pool does not
// hold it (a relay's pool other than the agent's default).
func tunRoutes(pool netip.Prefix, gateway netip.Addr) []netip.Prefix {
	if pool.Contains(gateway) {
		return []netip.Prefix{pool}
	}
	return []netip.Prefix{pool, netip.PrefixFrom(gateway, 32)}
}

// poolProblem says why the agent must not route pool into its TUN, or ""
// when it may: it must be an IPv4 prefix of /8 to /29, as the relay's and
// the gateway's configuration demand, and hold neither the agent's own
// address nor the server's (whose packets would then go into the tunnel
// they carry).
func poolProblem(pool netip.Prefix, own, server netip.Addr) string {
	switch {
	case !pool.IsValid():
		return "" // none pushed: the pool in force stays
	case !catalog.PoolSizeOK(pool):
		return "not an IPv4 prefix of /8 to /29"
	case pool.Contains(own):
		return "it holds the agent's [tun] address"
	case server.IsValid() && pool.Contains(server.Unmap()):
		return "it holds the server's address"
	}
	return ""
}

// receive writes the packets of a session (the server's, or a direct
// path's) to the TUN, telling written how many each batch wrote. Only IPv4 packets to the
// agent's own address from the pool are taken; on a direct path (serves
// not nil) only from a VIP of a service the path serves. Each run of datagrams that
// arrived together is written in one batch, so that the TUN coalesces a
// flow's TCP segments into one packet (GRO) and the kernel's TCP receives
// it once, as wireguard-go does.
func (a *Agent) receive(ctx context.Context, s *tunnel.Session, written func(n int), serves func(service string) bool) {
	w := newTUNWriter(a.dev)
	flush := func() {
		n := w.len()
		if n == 0 {
			return
		}
		if err := w.flush(); err != nil {
			for range n {
				a.m.drop(dropTUNWrite)
			}
			return
		}
		written(n)
	}
	_ = s.ReceiveBatches(ctx, func(b []byte) {
		if a.acceptDown(b, serves) {
			w.add(b)
			if w.full() {
				flush()
			}
		}
	}, flush)
}

// maxWriteBatch bounds a TUN write batch, and so the buffers it holds (each
// with room to coalesce up to 64 KiB).
const maxWriteBatch = 32

// acceptDown reports whether a datagram from a server is a packet for the
// TUN, counting what it drops. A relay checks that a gateway sends only
// from its own services' VIPs (its path's wrong_source); a gateway on a
// direct path is checked here, against the services whose flows the agent
// started on that path (serves), so that it cannot pose as another
// gateway's service.
func (a *Agent) acceptDown(b []byte, serves func(service string) bool) bool {
	switch tunnel.Kind(b) {
	case tunnel.TypeIP:
	case tunnel.TypeQAD:
		return false
	default:
		a.m.drop(dropUnexpectedDatagram)
		return false
	}
	src, dst, ok := netstack.IPv4Addrs(b)
	d := a.dir.Load()
	if !ok || dst != a.cfg.TUN.Address || !d.pool.Contains(src) {
		a.m.drop(dropForeignPacket)
		return false
	}
	if serves != nil {
		if svc := d.byVIP[src]; svc == nil || !serves(svc.name) {
			a.m.drop(dropWrongGateway)
			return false
		}
	}
	return true
}

// tunWriter gathers packets into buffers laid out as the device wants them
// (headroom in front, room to coalesce behind) and writes them as one
// batch. Buffers are made on first use, so a quiet session holds one.
type tunWriter struct {
	dev  netstack.Output
	hr   int      // headroom
	size int      // capacity of each buffer
	max  int      // packets per batch
	bufs [][]byte // buffers made so far, reused
	out  [][]byte // the batch: bufs[:n], each cut to its packet
}

func newTUNWriter(dev netstack.Device) *tunWriter {
	n := min(max(dev.BatchSize(), 1), maxWriteBatch)
	return &tunWriter{
		dev:  dev,
		hr:   dev.Headroom(),
		size: max(dev.WriteCap(), dev.Headroom()+65535),
		max:  n,
		out:  make([][]byte, 0, n),
	}
}

// add copies pkt into the next buffer of the batch.
func (w *tunWriter) add(pkt []byte) {
	i := len(w.out)
	if i == len(w.bufs) {
		w.bufs = append(w.bufs, make([]byte, w.size))
	}
	n := copy(w.bufs[i][w.hr:], pkt)
	w.out = append(w.out, w.bufs[i][:w.hr+n])
}

func (w *tunWriter) len() int   { return len(w.out) }
func (w *tunWriter) full() bool { return len(w.out) == w.max }

// flush writes the batch and empties it, whatever the outcome.
func (w *tunWriter) flush() error {
	err := w.dev.WritePackets(w.out)
	w.out = w.out[:0]
	return err
}
