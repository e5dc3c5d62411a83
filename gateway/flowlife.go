package gateway

import (
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
	if made && d.peer.lan() && !g.tbl.Load().tenants.configures(d.peer.tenant) {
		// A LAN tenant the running table lacks: the flow was classified
		// before a reload removed it (its handshake was in flight), and
		// its series were made after that reload's forgetTenants. They
		// go with their last flow.
		sm.retire(fm)
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
	}
	return f
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
