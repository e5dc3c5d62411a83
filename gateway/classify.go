package gateway

import (
	"net/netip"

	"github.com/ztgate/ztgate/catalog"
)

// Reasons a new flow is refused; they label ztgate_flows_refused_total.
const (
	refuseUnknownSource = "unknown_source"
	refuseNoService     = "no_service"
	refuseTenant        = "tenant_denied"
	refusePort          = "port_not_mapped"
	refuseICMP          = "icmp_disabled"
	refuseNoBackend     = "no_healthy_backend"
	refuseDial          = "dial_failed"
	refuseHandshake     = "handshake_failed" // the client did not complete its TCP handshake in time, or reset it
	// The reasons of the limits are in limits.go.
)

// decision is the classification of a new flow: where it may go, or why
// it may not.
type decision struct {
	t       *table // the generation that decided it, whose limits apply
	svc     *service
	port    catalog.Port
	peer    peer
	set     *backendSet // the backends it may go to: svc's generation's
	refused string      // empty when the flow may proceed
}

// classify decides a new flow: the source is known and within its rate of
// new flows; destination VIP:port → service and port mapping; (tenant,
// service) → allowed; the source within its rate to the service. proto 0
// classifies an ICMP echo.
func (g *Gateway) classify(t *table, proto catalog.Protocol, src netip.Addr, dst netip.AddrPort) decision {
	p, ok := g.identify(t, src)
	if !ok {
		return decision{refused: refuseUnknownSource}
	}
	if reason := g.allowSource(t, p.tenant, src); reason != "" {
		return decision{peer: p, refused: reason}
	}
	svc := t.lookupVIP(dst.Addr())
	if svc == nil {
		return decision{peer: p, refused: refuseNoService}
	}
	if !svc.spec.Allows(p.tenant) {
		return decision{peer: p, svc: svc, refused: refuseTenant}
	}
	var port catalog.Port
	if proto == 0 {
		if !svc.spec.ICMP {
			return decision{peer: p, svc: svc, refused: refuseICMP}
		}
	} else if port, ok = svc.spec.PortFor(proto, dst.Port()); !ok {
		return decision{peer: p, svc: svc, refused: refusePort}
	}
	if !g.allowToService(t, svc, src) {
		return decision{peer: p, svc: svc, refused: refuseServiceRate}
	}
	return decision{t: t, peer: p, svc: svc, port: port}.withBackends(proto, src, dst)
}

// withBackends gives d the backend set to pick from: its service's, of the
// same generation as the service it was classified to. A reload gives the
// service's state the new backends while it builds the new table, and the
// flow may have loaded the table before that one was put in: paired with
// the generation before (its targets, tenants), those backends sent a flow
// to an address and port no configuration named, or a tenant to backends
// it may no longer reach. Such a flow is decided by the generation of the
// backends, the newer one: its VIP, tenants, echo and ports, as if it had
// come a moment later (it was charged its rates already): a LAN client's
// tenant too, which that generation's tenants name by its source (a
// reload that moved the source and the service to another tenant refused
// it as the first's, which neither configuration does), and the limits.
func (d decision) withBackends(proto catalog.Protocol, src netip.Addr, dst netip.AddrPort) decision {
	d.set = d.svc.st.backends.Load()
	svc := d.set.owner
	if svc == nil || svc == d.svc {
		return d
	}
	d.svc = svc
	if t := svc.table(); t != nil {
		d.t = t
		if d.peer.identity == lanIdentity {
			tenant, ok := t.tenants.lookup(src)
			if !ok {
				d.refused = refuseUnknownSource
				return d
			}
			d.peer.tenant = tenant
		}
	}
	vip := dst.Addr().Unmap()
	switch {
	case svc.vip != vip && svc.vip6 != vip:
		d.refused = refuseNoService
	case !svc.spec.Allows(d.peer.tenant):
		d.refused = refuseTenant
	case proto == 0:
		if !svc.spec.ICMP {
			d.refused = refuseICMP
		}
	default:
		var ok bool
		if d.port, ok = svc.spec.PortFor(proto, dst.Port()); !ok {
			d.refused = refusePort
		}
	}
	return d
}

// identify returns who a source address is: a tunnel ingress by its
// synthetic address, or a LAN client of a tenant by its source prefix.
func (g *Gateway) identify(t *table, src netip.Addr) (peer, bool) {
	if g.ingresses != nil && synthPrefix.Contains(src) {
		if in := g.ingresses.lookup(src); in != nil && !in.closed.Load() {
			return in.peer, true
		}
		return peer{}, false
	}
	if tenant, ok := t.tenants.lookup(src); ok {
		return peer{tenant: tenant, identity: lanIdentity}, true
	}
	return peer{}, false
}
