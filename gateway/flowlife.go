package gateway

import (
	"context"
	"log/slog"
	"net/netip"
	"time"
)

// refuse counts a refused flow.
func (g *Gateway) refuse(proto, reason string) {
	g.m.refuse(proto, reason)
}

// newFlow registers an admitted flow bound to its peer, service and backend.
func (g *Gateway) newFlow(proto string, client, vip netip.AddrPort, d decision, b *backend) *flow {
	now := g.now()
	sm := d.svc.st.m
	fm, made := sm.flowStarted(d.peer.tenant, proto)
	if made {
		// Of a tenant absent now (a reload removed its [[tenant]], or its
		// last ingress closed, while the flow's handshake was in flight),
		// they go with their last flow.
		g.retireAbsent(sm, fm, d.peer.tenant)
	}
	f := &flow{
		proto:     proto,
		client:    client,
		vip:       vip,
		peer:      d.peer,
		svc:       d.svc,
		backend:   b,
		target:    netip.AddrPortFrom(b.addr, b.portFor(d.port.Target)),
		start:     now,
		done:      make(chan struct{}),
		upBytes:   sm.up,
		downBytes: sm.down,
		metrics:   fm,
	}
	f.touch(now)
	b.active.Add(1)
	g.flows.add(f)
	if g.closing.Load() { // Close listed the flows before this one was added
		f.close("shutdown")
	} else if g.ingressGone(d.peer, client.Addr()) {
		// closeIngress listed the ingress's flows before this one was added.
		f.cut("ingress_closed")
	} else if stranded(g.tbl.Load(), d.peer, client.Addr()) {
		// A reload took the source out of every tenant, and ended the
		// flows then listed (endStranded), while this one was set up.
		f.cut("source_removed")
	} else if g.directUnreachable(g.tbl.Load(), f) {
		// A reload took the service from the direct agent, and ended the
		// flows then listed (endUnreachable), while this one was set up.
		f.cut("rights_removed")
	} else if g.ns != nil && !g.ns.InPools(vip.Addr()) {
		// The relay moved its pools away from the VIP, and endUnrouted
		// ended the flows then listed, while this one was set up: the
		// netstack drops its client's packets from SetPools on.
		f.cut("vip_unrouted")
	}
	// After the add: a change of the table from now on drains f with the
	// others, and one before is in the table departed reads.
	g.drainLate(f)
	return f
}

// ingressGone reports whether client is the synthetic address of a tunnel
// ingress that closed (or was replaced) since classify found it as p.
// closeIngress marks the ingress closed before it lists its flows, and
// newFlow adds the flow before it asks: one of the two sees the other.
func (g *Gateway) ingressGone(p peer, client netip.Addr) bool {
	if g.ingresses == nil || !synthPrefix.Contains(client) {
		return false
	}
	in := g.ingresses.lookup(client)
	return in == nil || in.closed.Load() || in.peer != p
}

// endFlow unregisters a finished flow, releases its slots and writes its
// one log line.
func (g *Gateway) endFlow(f *flow) {
	f.close("done")
	g.flows.remove(f)
	f.backend.active.Add(-1)
	// The held children, lowered before release may free the service's
	// series: a lookup by labels would make the series again.
	f.svc.st.m.flowEnded(f.metrics)
	g.release(f.svc, f.peer.tenant)
	name := f.svc.spec.Name
	// LogAttrs, not Info's key-value list: no value is boxed but the
	// three addresses, one line per flow (BenchmarkTCPConnection).
	g.log.LogAttrs(context.Background(), slog.LevelInfo, "flow",
		slog.String("proto", f.proto),
		slog.Any("client", f.client),
		slog.Any("vip", f.vip),
		slog.String("tenant", f.peer.tenant),
		slog.String("identity", f.peer.identity),
		slog.String("service", name),
		slog.Any("backend", f.target),
		slog.Int64("bytes_up", f.up.Load()),
		slog.Int64("bytes_down", f.down.Load()),
		slog.Duration("duration", g.now().Sub(f.start).Round(time.Millisecond)),
		slog.String("reason", f.reason),
	)
}
