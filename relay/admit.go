package relay

import (
	"cmp"
	"fmt"

	"github.com/ztgate/ztgate/tunnel"
)

// refusal is why a session is not admitted: a metric reason and a
// message for the peer.
type refusal struct {
	reason, message string
}

// admit decides who a session speaks for. A verified identity must have
// the role its hello claims (agent or gateway); ztna-v1 serves agents
// only. In insecure mode a session without a verified identity is taken
// at its word: the hello's role (v1: agent), tenant "default", every
// service of that tenant.
func (r *Relay) admit(s *tunnel.Session) (peer, *refusal) {
	id := s.Peer()
	role := s.Hello().Role
	if s.Version() == tunnel.V1 { // no hello: what the certificate says, else an agent
		role = cmp.Or(id.Role, tunnel.RoleAgent)
	}
	if id.Tenant == "" {
		if !r.cfg.Insecure {
			return peer{}, &refusal{refuseNoIdentity, "no verified ztgate identity"}
		}
		id = tunnel.Identity{Tenant: tunnel.DefaultTenant, Role: role, Name: s.Hello().Name}
		r.log.Warn("INSECURE: admitting an unverified peer with the role it claims",
			"session", s.ID(), "role", role, "tenant", id.Tenant, "remote", s.RemoteAddr().String())
	}
	switch {
	case role != roleAgent && role != roleGateway:
		return peer{}, &refusal{refuseWrongRole, fmt.Sprintf("the relay serves agents and gateways, not %q", role)}
	case id.Role != role:
		return peer{}, &refusal{refuseWrongRole, fmt.Sprintf("a %s identity cannot connect as %s", id.Role, role)}
	case role == roleGateway && s.Version() != tunnel.V2:
		return peer{}, &refusal{refuseVersion, "gateways need " + tunnel.ALPNV2}
	case role == roleAgent && s.Version() == tunnel.V2 && !s.Hello().InnerAddr.IsValid():
		return peer{}, &refusal{refuseBadHello, "an agent's hello needs its inner_addr"}
	}
	return newPeer(s, role, id), nil
}
