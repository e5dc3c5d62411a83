package gateway

import (
	"net/netip"
	"time"
)

// refuse counts a refused flow.
func (g *Gateway) refuse(proto, reason string) {
	g.m.flowsRefused.WithLabelValues(proto, reason).Inc()
}

// newFlow registers an admitted flow bound to its peer, service and backend.
func (g *Gateway) newFlow(proto string, client, vip netip.AddrPort, d decision, b *backend) *flow {
	now := g.now()
	name := d.svc.spec.Name
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
		upBytes:   g.m.bytes.WithLabelValues(name, "up"),
		downBytes: g.m.bytes.WithLabelValues(name, "down"),
	}
	f.touch(now)
	b.active.Add(1)
	g.flows.add(f)
	if g.closing.Load() { // Close listed the flows before this one was added
		f.close("shutdown")
	}
	g.m.flowsTotal.WithLabelValues(name, d.peer.tenant, proto).Inc()
	g.m.flowsActive.WithLabelValues(name, d.peer.tenant, proto).Inc()
	return f
}

// endFlow unregisters a finished flow, releases its slots and writes its
// one log line.
func (g *Gateway) endFlow(f *flow) {
	f.close("done")
	g.flows.remove(f)
	f.backend.active.Add(-1)
	g.release(f.svc, f.peer.tenant)
	name := f.svc.spec.Name
	g.m.flowsActive.WithLabelValues(name, f.peer.tenant, f.proto).Dec()
	g.log.Info("flow",
		"proto", f.proto,
		"client", f.client,
		"vip", f.vip,
		"tenant", f.peer.tenant,
		"identity", f.peer.identity,
		"service", name,
		"backend", f.target,
		"bytes_up", f.up.Load(),
		"bytes_down", f.down.Load(),
		"duration", g.now().Sub(f.start).Round(time.Millisecond),
		"reason", f.reason,
	)
}
