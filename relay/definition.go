package relay

import (
	"github.com/ztgate/ztgate/tunnel"
)

// Each gateway's latest definition of a service (tenants, ports, ICMP) is
// kept per gateway session: a register replaces that gateway's, and no
// other. When the gateways of a service disagree, nothing is discarded:
//
//   - an agent may reach the service when at least one of its gateways
//     admits the agent's tenant, and its new flows go only to those
//     gateways;
//   - the agent's directory shows the union of the ports of those
//     gateways, ICMP when one of them allows it, healthy when one of them
//     reports it healthy;
//   - a new TCP or UDP flow prefers the gateways that serve its
//     destination port, an ICMP flow those that allow ICMP.
//
// The disagreement is logged and counted (ztgate_relay_service_conflicts);
// it is expected for a moment while gateways are reloaded one by one.

// definition is one gateway's registration of a service, with its tenants
// and ports also as sets, built once when the gateway registers it (in
// time linear in its size, as the comparison with the last one): every new
// flow asks whether a gateway's definition admits the agent's tenant and
// serves the flow's port, and a definition may list tens of thousands of
// each, so that look-up must not scan the lists.
type definition struct {
	tunnel.ServiceInfo
	tenants tenantSet
	ports   map[portKey]struct{}
}

func newDefinition(info tunnel.ServiceInfo) definition {
	d := definition{ServiceInfo: info, tenants: newTenantSet(info.Tenants), ports: make(map[portKey]struct{}, len(info.Ports))}
	for _, p := range info.Ports {
		d.ports[portKey{p.Protocol, p.Port}] = struct{}{}
	}
	return d
}

// admits reports whether the definition lists tenant or "*".
func (d definition) admits(tenant string) bool { return d.tenants.admits(tenant) }

// hasPort reports whether the definition lists protocol/port.
func (d definition) hasPort(protocol string, port uint16) bool {
	return hasKey(d.ports, portKey{protocol, port})
}

// serviceView is the merged definitions of some of a service's gateways:
// the union of their tenants and of their ports (each once, in the order
// the gateways registered), ICMP when one allows it, healthy when one
// reports it healthy.
type serviceView struct {
	tenants []string
	ports   []tunnel.PortInfo
	icmp    bool
	healthy bool
}

// viewLocked merges the definitions of the gateways of s that include
// takes (every gateway when include is nil). Callers hold Relay.mu. Its
// time is linear in the definitions' size: a register of
// tunnel.MaxMessageSize may hold tens of thousands of tenants and ports,
// and every agent's directory merges them under the lock.
func (s *service) viewLocked(include func(definition) bool) serviceView {
	v := serviceView{tenants: []string{}, ports: []tunnel.PortInfo{}}
	tenants := make(map[string]struct{})
	ports := make(map[portKey]struct{})
	for _, g := range s.gateways {
		def, ok := g.defs[s.name]
		if !ok || (include != nil && !include(def)) {
			continue
		}
		for _, t := range def.Tenants {
			if _, dup := tenants[t]; !dup {
				tenants[t] = struct{}{}
				v.tenants = append(v.tenants, t)
			}
		}
		for _, p := range def.Ports {
			if k := (portKey{p.Protocol, p.Port}); !hasKey(ports, k) {
				ports[k] = struct{}{}
				v.ports = append(v.ports, p)
			}
		}
		v.icmp = v.icmp || def.ICMP
		v.healthy = v.healthy || g.services[s.name]
	}
	return v
}

// portKey is a port of a service, as definition.hasPort compares them.
type portKey struct {
	protocol string
	port     uint16
}

// hasKey reports whether set holds k.
func hasKey[K comparable](set map[K]struct{}, k K) bool {
	_, ok := set[k]
	return ok
}

// viewForLocked is the view of s an agent of tenant gets: the gateways
// that admit the tenant. Callers hold Relay.mu.
func (s *service) viewForLocked(tenant string) serviceView {
	return s.viewLocked(func(def definition) bool { return def.admits(tenant) })
}

// admitsLocked reports whether a gateway serving s admits tenant. Callers
// hold Relay.mu.
func (s *service) admitsLocked(tenant string) bool {
	for _, g := range s.gateways {
		if g.admits(s.name, tenant) {
			return true
		}
	}
	return false
}

// disputedLocked reports whether the gateways of s registered different
// definitions. Callers hold Relay.mu.
func (s *service) disputedLocked() bool {
	var first *tunnel.ServiceInfo
	for _, g := range s.gateways {
		def, ok := g.defs[s.name]
		if !ok {
			continue
		}
		if first == nil {
			first = &def.ServiceInfo
			continue
		}
		if !sameDefinition(*first, def.ServiceInfo) {
			return true
		}
	}
	return false
}

// sameDefinition reports whether two registrations of a service agree on
// what agents see and who may reach it: tenants and ports (in any order)
// and ICMP. Linear in their size, as viewLocked: a register compares each
// definition with the last under the registry's lock.
func sameDefinition(a, b tunnel.ServiceInfo) bool {
	if a.ICMP != b.ICMP || len(a.Ports) != len(b.Ports) || !sameSet(a.Tenants, b.Tenants) {
		return false
	}
	ports := make(map[tunnel.PortInfo]struct{}, len(b.Ports))
	for _, p := range b.Ports {
		ports[p] = struct{}{}
	}
	for _, p := range a.Ports {
		if !hasKey(ports, p) {
			return false
		}
	}
	return true
}

// sameSet reports whether a and b hold the same strings, ignoring order
// and repetition.
func sameSet(a, b []string) bool {
	as := make(map[string]struct{}, len(a))
	for _, x := range a {
		as[x] = struct{}{}
	}
	bs := make(map[string]struct{}, len(b))
	for _, x := range b {
		if !hasKey(as, x) {
			return false
		}
		bs[x] = struct{}{}
	}
	return len(as) == len(bs)
}

// flowWants is what a new flow asks of the gateway chosen for it: that it
// admit the agent's tenant and, when the packet tells (proto not 0), that
// it serve the destination port or allow ICMP.
type flowWants struct {
	tenant string
	proto  uint8
	port   uint16
}

// wantsOf describes the new flow f (nil: a packet the flow table cannot
// key) of an agent of tenant.
func wantsOf(tenant string, f *tunnel.Flow) flowWants {
	w := flowWants{tenant: tenant}
	if f != nil {
		w.proto, w.port = f.Key.Proto, f.Key.DstPort
	}
	return w
}

// servedBy reports whether def serves what the flow needs beyond the
// tenant; a flow of unknown kind is served by any definition.
func (w flowWants) servedBy(def definition) bool {
	switch w.proto {
	case tunnel.ProtoTCP:
		return def.hasPort("tcp", w.port)
	case tunnel.ProtoUDP:
		return def.hasPort("udp", w.port)
	case tunnel.ProtoICMP:
		return def.ICMP
	}
	return true
}
