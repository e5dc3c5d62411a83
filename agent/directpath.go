package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/ztgate/ztgate/internal/monoclock"
	"github.com/ztgate/ztgate/tunnel"
)

// path is a direct session to a gateway. The router sends on it and reads
// dead; the manager owns services, usedSeen and quietSince.
type path struct {
	gateway string         // the gateway's identity, as the relay vouched for it
	addr    netip.AddrPort // the candidate that answered
	// forwarded: addr is the relay's forwarder (docs/direct-path.md,
	// "Forwarded paths"); the session is still end to end.
	forwarded bool
	s         *tunnel.Session
	since     time.Time // when it came up

	dead     atomic.Bool   // set when its liveness check failed or it ended
	used     atomic.Uint64 // packets on it, both ways: the router's and those written to the TUN
	lastPong atomic.Int64  // monoclock stamp of the last message from the gateway

	// served holds every service whose new flows were ever started here
	// (the router's flows keep the path after the service leaves it): the
	// gateway's packets must come from one of their VIPs. Written by the
	// manager only (copy on write), read by the path's receiver.
	served atomic.Pointer[map[string]struct{}]

	services   map[string]uint64 // services whose new flows start here → their signaling session
	usedSeen   uint64
	quietSince time.Time
}

// dial connects to the first of cands that answers within
// directDialTimeout, all at once, and reports to the manager as soon as
// one did (or all failed). The relay's forwarder, when valid, is dialled
// forwardDelay later unless a candidate answered by then. Connections
// that answer later are closed.
func (d *direct) dial(r dialed, cands []netip.AddrPort, forwarded netip.AddrPort) {
	ctx, cancel := context.WithTimeout(d.ctx, directDialTimeout+forwardDelay)
	cfg := tunnel.DialConfig{
		Credentials:    d.a.creds,
		ExpectIdentity: r.gateway,
		Hello:          d.a.hello(),
		Registerer:     d.a.m.reg,
	}
	n := len(cands)
	if forwarded.IsValid() {
		n++
	}
	results := make(chan dialed, n)
	won := make(chan struct{}) // closed once a connection answered
	try := func(c netip.AddrPort, fwd bool) {
		cctx, ccancel := context.WithTimeout(ctx, directDialTimeout)
		defer ccancel()
		s, err := tunnel.Dial(cctx, c.String(), cfg, d.a.root.With("component", "direct"))
		results <- dialed{s: s, addr: c, forwarded: fwd, err: err}
	}
	for _, c := range cands {
		d.wg.Go(func() { try(c, false) })
	}
	if forwarded.IsValid() {
		d.wg.Go(func() {
			t := time.NewTimer(forwardDelay)
			defer t.Stop()
			select {
			case <-t.C:
				try(forwarded, true)
			case <-won:
				results <- dialed{addr: forwarded, forwarded: true, err: fmt.Errorf("relay forwarder %s: not dialled, a candidate answered", forwarded)}
			case <-ctx.Done():
				results <- dialed{addr: forwarded, forwarded: true, err: fmt.Errorf("relay forwarder %s: %w", forwarded, ctx.Err())}
			}
		})
	}
	d.wg.Go(func() {
		defer cancel()
		var errs []error
		reported := false
		for range n {
			res := <-results
			switch {
			case res.s != nil && !reported:
				reported = true
				close(won)
				r.s, r.addr, r.forwarded = res.s, res.addr, res.forwarded
				if !d.event(r) {
					_ = res.s.Close("agent shutting down")
				}
			case res.s != nil:
				_ = res.s.Close("another candidate answered first")
			default:
				errs = append(errs, res.err) // each names its address
			}
		}
		if !reported {
			r.err = errors.Join(errs...)
			d.event(r)
		}
	})
}

// startPath starts the goroutines of a new direct session: the gateway's
// packets to the TUN, its control messages, the liveness check.
func (d *direct) startPath(gateway string, addr netip.AddrPort, forwarded bool, s *tunnel.Session, now time.Time) *path {
	p := &path{gateway: gateway, addr: addr, forwarded: forwarded, s: s, since: now, quietSince: now, services: make(map[string]uint64)}
	p.lastPong.Store(monoclock.Now())
	p.served.Store(&map[string]struct{}{})
	if mtu := routedMTU(s.MaxDatagram()); mtu < int(d.a.mtu.Load()) {
		d.log.Warn("the direct path carries less than the TUN's MTU; larger packets take the relay",
			"gateway", gateway, "direct_mtu", mtu, "mtu", d.a.mtu.Load())
	}
	// A path that carries only the gateway's packets (a download, a
	// server's push) is in use as much as one that carries the agent's.
	written := func(n int) {
		p.used.Add(uint64(n))
		d.a.m.downDirect.Add(float64(n))
	}
	d.wg.Go(func() { d.a.receive(d.ctx, s, written, p.serves) })
	d.wg.Go(func() { d.control(p) })
	d.wg.Go(func() { d.watch(p) })
	return p
}

// serve adds service to what the path carries. The manager calls it.
func (p *path) serve(service string) {
	old := *p.served.Load()
	if _, ok := old[service]; ok {
		return
	}
	m := make(map[string]struct{}, len(old)+1)
	for s := range old {
		m[s] = struct{}{}
	}
	m[service] = struct{}{}
	p.served.Store(&m)
}

// serves reports whether flows of service were ever started on the path.
func (p *path) serves(service string) bool {
	_, ok := (*p.served.Load())[service]
	return ok
}

// control reads the gateway's control messages: any message proves the
// path alive; pings are answered. The gateway's directory is its own view:
// the relay's is the agent's.
func (d *direct) control(p *path) {
	for {
		msg, err := tunnel.DecodeControl(p.s.Next())
		if err != nil {
			if reply, ok := tunnel.ReplyFor(err); ok {
				_ = p.s.Send(reply)
				continue
			}
			return
		}
		p.lastPong.Store(monoclock.Now())
		switch m := msg.(type) {
		case *tunnel.Ping:
			_ = p.s.Send(&tunnel.Pong{Type: tunnel.MessagePong, Seq: m.Seq})
		case *tunnel.ErrorMessage:
			d.log.Warn("gateway error on the direct path", "gateway", p.gateway, "code", m.Code, "message", m.Message)
		}
	}
}

// watch pings the gateway every directPingEvery and declares the path dead
// when nothing came back for directDeadAfter over directDeadPings pings at
// least, or when the session ends. Time alone does not kill a path: an
// agent that did not run for a while (starved of CPU, a paused VM) finds
// the gateway silent for that long at its next tick, though the answers
// wait unread; it pings again first.
func (d *direct) watch(p *path) {
	t := time.NewTicker(directPingEvery)
	defer t.Stop()
	why := "session ended"
	heard, unanswered := p.lastPong.Load(), 0
	for seq := uint64(1); ; seq++ {
		select {
		case <-p.s.Done():
		case <-t.C:
			if last := p.lastPong.Load(); last != heard {
				heard, unanswered = last, 0
			}
			silent := time.Duration(monoclock.Now() - heard)
			if silent < directDeadAfter || unanswered < directDeadPings {
				err := p.s.Send(&tunnel.Ping{Type: tunnel.MessagePing, Seq: seq})
				if err == nil {
					unanswered++
					continue
				}
				why = "a ping could not be sent: " + err.Error()
			} else {
				why = fmt.Sprintf("no answer to pings for %s (%d pings)", silent.Round(time.Millisecond), unanswered)
			}
			_ = p.s.Close("direct path: " + why)
		}
		p.dead.Store(true)
		d.event(pathDown{p: p, why: why})
		return
	}
}
