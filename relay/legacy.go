package relay

import (
	"errors"

	"github.com/ztgate/ztgate/tunnel"
)

// legacyRegistration answers a ztna-v1 registration datagram. An agent
// registration (0x10) is ACKed when the agent's certificate names the
// service, as the original relay does, else NACKed "denied": an original
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
	if role == tunnel.TypeAgentRegistration && a.id.Permits(service) {
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
