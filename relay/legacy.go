package relay

import (
	"errors"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// legacyRegistration answers a ztna-v1 registration datagram. An agent
// registration (0x10) is ACKed when the agent's certificate grants the
// service (v1MayRegister), as the original relay does, else NACKed "denied": an original
// agent takes a NACK as final for its connection, so one for a service
// that has no gateway yet (a relay or gateway restarting) would cut it off
// until it reconnects. Each new flow is checked then (newFlowTag: the
// service, a gateway admitting the tenant). A service id that is not UTF-8 gets NACK
// "invalid" with an empty id, as the original relay does. Connector
// registrations (0x11) are always denied: raw return traffic cannot be
// bound to the agent that opened a flow. Truncated requests are dropped.
func (r *Relay) legacyRegistration(a *agent, b []byte) {
	role, id, err := tunnel.ParseRegistration(b)
	switch {
	case errors.Is(err, tunnel.ErrInvalidServiceID):
		r.m.registrations.WithLabelValues(roleAgent, regBadID).Inc()
		r.nack(a, tunnel.StatusInvalid, "")
		return
	case err != nil:
		r.m.dropFromAgent(dropMalformed)
		return
	}
	service := string(id)
	if role == tunnel.TypeAgentRegistration && r.v1MayRegister(a, service) {
		a.registered[service] = true
		r.m.registrations.WithLabelValues(roleAgent, regOK).Inc()
		ack, _ := tunnel.AppendAck(nil, service)
		_ = a.s.SendDatagram(ack)
		return
	}
	r.m.registrations.WithLabelValues(roleAgent, regDenied).Inc()
	if a.mayWarn() {
		r.log.Warn("v1 registration denied", "session", a.s.ID(), "identity", a.id.String(),
			"service", service, "connector", role == tunnel.TypeGatewayRegistration)
	}
	r.nack(a, tunnel.StatusDenied, service)
}

// nack sends a registration NACK.
func (r *Relay) nack(a *agent, status tunnel.Status, service string) {
	nack, err := tunnel.AppendNack(nil, status, service)
	if err == nil {
		_ = a.s.SendDatagram(nack)
	}
}

// v1MayRegister reports whether a ztna-v1 agent's registration of service
// is ACKed and kept: its certificate must grant the service. A certificate
// of the original system lists its services, so what it may register is
// bounded; one of a whole tenant (or an unverified peer of an insecure
// relay) names none, so only a service of its tenant that the relay knows
// is kept for it: a gateway serves it to the tenant, or no gateway serves
// it and its VIP is allocated or held (as while its gateways restart) and
// the tenant was among those it was last admitted to while gateways served
// it (lastAdmitted). Made-up names cannot grow the registry of its
// session, and a service served to other tenants only, now or last, is
// NACKed as a name no one serves is: an ACK would tell the agent what
// other tenants have. After a relay restart the relay knows no tenants of
// an unserved service (the pool's state keeps none): its allocated or held
// name is ACKed for any tenant until a gateway registers it, so that
// original agents survive a restart of the relay before the gateways are
// back; their flows are authorised one by one (newFlowTag).
func (r *Relay) v1MayRegister(a *agent, service string) bool {
	if !a.id.Permits(service) {
		return false
	}
	if a.id.Services != nil {
		return true
	}
	// The pool is asked under mu too: a gateway's register remembers its
	// tenants (under mu) before it allocates the VIP, so an allocation
	// seen here is never one whose tenants were not.
	r.mu.RLock()
	defer r.mu.RUnlock()
	if svc, served := r.services[service]; served {
		return a.may(svc)
	}
	if last, known := r.lastAdmitted[service]; known && !last.tenants.admits(a.id.Tenant) {
		return false
	}
	_, allocated := r.pool.Lookup(service)
	return allocated || r.pool.Holds(service)
}

// admittedOnce is the tenants a service no gateway serves now was last
// admitted to: those of the last definition of its last gateway, or those
// of the gateway registering it, until it is entered. at is when.
type admittedOnce struct {
	tenants tenantSet
	at      time.Time
}

// now is the relay's clock for the VIP pool's hold-down.
func (r *Relay) now() time.Time {
	if r.opts.Now != nil {
		return r.opts.Now()
	}
	return time.Now()
}

// sweepAdmitted forgets the tenants of the services whose VIP is neither
// allocated nor held any more: the hold-down after their release has
// passed (a pinned service's stays allocated, and its tenants are kept).
// Their names are NACKed then whatever the memory, so it is bounded by the
// pool: one entry per VIP allocated or held. Only entries older than the
// hold-down are looked up; one that is kept is looked up again a hold-down
// later.
func (r *Relay) sweepAdmitted() {
	now := r.now()
	due := func() []string {
		var names []string
		for name, last := range r.lastAdmitted {
			if now.Sub(last.at) >= r.cfg.VIPHoldDown {
				names = append(names, name)
			}
		}
		return names
	}
	r.mu.RLock()
	names := due()
	r.mu.RUnlock()
	if len(names) == 0 {
		return
	}
	r.regMu.Lock() // the pool and lastAdmitted do not change meanwhile
	defer r.regMu.Unlock()
	owned := make(map[string]bool, len(names))
	for _, name := range names {
		_, allocated := r.pool.Lookup(name)
		owned[name] = allocated || r.pool.Holds(name)
	}
	r.mu.Lock()
	for name, owned := range owned {
		switch last, ok := r.lastAdmitted[name]; {
		case !ok:
		case !owned:
			delete(r.lastAdmitted, name)
		default:
			last.at = now
			r.lastAdmitted[name] = last
		}
	}
	r.mu.Unlock()
}
