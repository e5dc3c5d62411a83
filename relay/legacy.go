package relay

import (
	"errors"

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
// it and its VIP is allocated or held (as after a relay restart before the
// gateways are back). Made-up names cannot grow the registry of its
// session, and a service served to other tenants only is NACKed as a name
// no one serves is: an ACK would tell the agent what other tenants have.
func (r *Relay) v1MayRegister(a *agent, service string) bool {
	if !a.id.Permits(service) {
		return false
	}
	if a.id.Services != nil {
		return true
	}
	r.mu.RLock()
	svc, served := r.services[service]
	admitted := served && a.may(svc)
	r.mu.RUnlock()
	if served {
		return admitted
	}
	_, allocated := r.pool.Lookup(service)
	return allocated || r.pool.Holds(service)
}
