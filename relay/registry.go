package relay

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"unicode/utf8"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/tunnel"
)

// service is a service that at least one live gateway serves. What it is
// (tenants, ports, ICMP) is each gateway's definition (gateway.defs);
// definition.go merges them.
type service struct {
	name      string
	vip, vip6 netip.Addr
	gateways  []*gateway // serving it, in registration order; guarded by Relay.mu
}

// An assign answers a register that fits in a control message, and must
// fit in one too, or the gateway never learns its VIPs. A register of
// tunnel.MaxMessageSize may hold thousands of bad services, or a name of
// hundreds of KiB that a rejection would repeat in its reason: so the
// assign lists the first maxRejections, each name and reason cut to
// maxRejectionText bytes, and counts the rest in one last entry.
const (
	maxRejections    = 64
	maxRejectionText = 256
)

// clip cuts s to at most n bytes, at a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n - len("…")
	for i > 0 && !utf8.RuneStart(s[i]) { // s[:i] must not end inside a rune
		i--
	}
	return s[:i] + "…"
}

// register applies a gateway's whole service set: VIPs for new services,
// the gateway added to (or removed from) each service, its definition of
// each replaced, tags of services it dropped (or of tenants its new
// definition no longer admits) closed, and the assign answer. Registry
// changes are serialised by regMu, which also covers the pool; the
// messages the change causes are sent after it is released, so that no
// peer slow to read holds up another's registration.
func (r *Relay) register(g *gateway, msg *tunnel.Register) {
	r.regMu.Lock()
	accepted := make(map[string]tunnel.ServiceInfo, len(msg.Services))
	answer := tunnel.Assign{
		Type: tunnel.MessageAssign, Zone: r.cfg.Zone, TTL: int(r.cfg.TTL.Seconds()),
		Pool: r.cfg.Pool, Pool6: r.cfg.Pool6, VIPs: []tunnel.VIPAssignment{},
	}
	rejected := 0
	reject := func(name, result, detail string) {
		r.m.registrations.WithLabelValues(roleGateway, result).Inc()
		rejected++
		name, detail = clip(name, maxRejectionText), clip(detail, maxRejectionText)
		if len(answer.Rejected) < maxRejections {
			answer.Rejected = append(answer.Rejected, tunnel.Rejection{Service: name, Reason: detail})
		}
		if g.mayWarn() {
			r.log.Warn("service registration rejected", "gateway", g.id.String(), "service", name, "reason", detail)
		}
	}
	allocs := make(map[string]catalog.Allocation, len(msg.Services))
	for _, info := range msg.Services {
		if result, detail := checkService(g.id, info, accepted); result != "" {
			reject(info.Name, result, detail)
			continue
		}
		alloc, err := r.allocation(info)
		if err != nil {
			reject(info.Name, regAllocation, err.Error())
			continue
		}
		accepted[info.Name], allocs[info.Name] = info, alloc
		r.m.registrations.WithLabelValues(roleGateway, regOK).Inc()
		answer.VIPs = append(answer.VIPs, tunnel.VIPAssignment{Service: info.Name, VIP: alloc.VIP, VIP6: alloc.VIP6})
	}
	slices.SortFunc(answer.VIPs, func(a, b tunnel.VIPAssignment) int { return cmp.Compare(a.Service, b.Service) })
	if n := rejected - len(answer.Rejected); n > 0 {
		answer.Rejected = append(answer.Rejected, tunnel.Rejection{
			Reason: fmt.Sprintf("%d more services rejected (ztgate_relay_registrations_total counts them by result)", n)})
	}

	closed := make(tagsByGateway)
	r.mu.Lock()
	var emptied, dropped []string
	for name := range g.services {
		if _, keep := accepted[name]; keep {
			continue
		}
		dropped = append(dropped, name)
		if r.stopServingLocked(g, name, closed) {
			emptied = append(emptied, name)
		}
	}
	var changed []definition // definitions g changed
	var disputed []string    // services g now disagrees on with another gateway
	for name, info := range accepted {
		svc := r.services[name]
		if svc == nil {
			a := allocs[name]
			svc = &service{name: name, vip: a.VIP, vip6: a.VIP6}
			r.services[name] = svc
			delete(r.lastAdmitted, name) // its gateways' definitions say now
		}
		if !slices.Contains(svc.gateways, g) {
			svc.gateways = append(svc.gateways, g)
		}
		old, had := g.defs[name]
		if had && sameDefinition(old.ServiceInfo, info) {
			// The same tenants and ports: the sets stay, only the rest
			// (health) is new.
			old.ServiceInfo = info
			g.services[name], g.defs[name] = info.Healthy, old
			continue
		}
		def := newDefinition(info)
		g.services[name], g.defs[name] = info.Healthy, def
		if had {
			changed = append(changed, def)
			r.closeRevokedLocked(g, name, closed)
		}
		if svc.disputedLocked() {
			disputed = append(disputed, name)
		}
	}
	g.candidates = r.usableCandidates(g, msg.Candidates)
	r.m.services.Set(float64(len(r.services)))
	r.countConflictsLocked()
	r.mu.Unlock()

	r.releaseLocked(emptied)
	r.regMu.Unlock()

	closed.send()
	for _, info := range msg.Services {
		if _, ok := accepted[info.Name]; ok && !info.Healthy {
			r.retireDirectPaths(g, info.Name, tunnel.CodeServiceDown)
		}
	}
	for _, name := range dropped {
		r.retireDirectPaths(g, name, tunnel.CodeServiceDown)
	}
	for _, def := range changed {
		r.log.Info("gateway changed a service's definition", "gateway", g.id.String(), "service", def.Name,
			"tenants", def.Tenants, "ports", portList(def.Ports), "icmp", def.ICMP)
		r.retireDirectPathsWhere(g, def.Name, func(a *agent) bool { return !def.admits(a.id.Tenant) },
			tunnel.CodeNotAuthorized)
	}
	for _, name := range disputed {
		r.logDispute(name)
	}
	// Posted after the tag_close messages it caused, so g reads them first.
	if err := g.s.Post(&answer); err != nil {
		r.log.Warn("cannot send assign", "gateway", g.id.String(), "err", err)
	}
	r.log.Info("gateway registered services", "gateway", g.id.String(), "session", g.s.ID(),
		"accepted", len(answer.VIPs), "rejected", rejected, "changed", len(changed))
	r.directoryChanged()
}

// closeRevokedLocked closes g's tags of service whose agents g's
// definition no longer admits: their flows end at the gateway, and their
// next packets are authorised again (and go to another gateway, or are
// refused). Callers hold r.mu.
func (r *Relay) closeRevokedLocked(g *gateway, service string, closed tagsByGateway) {
	def := g.defs[service] // its tenant set: a look-up per tag, not a scan of the tenants
	for _, t := range g.tags {
		if t.service == service && !def.admits(t.agent.id.Tenant) {
			closed.add(t)
			r.killTagLocked(t)
		}
	}
}

// countConflictsLocked exports how many services have gateways that
// disagree on their definition. Callers hold r.mu.
func (r *Relay) countConflictsLocked() {
	n := 0
	for _, svc := range r.services {
		if svc.disputedLocked() {
			n++
		}
	}
	r.m.conflicts.Set(float64(n))
}

// logDispute warns that the gateways of a service registered different
// definitions, with each gateway's.
func (r *Relay) logDispute(name string) {
	r.mu.RLock()
	var defs []string
	if svc := r.services[name]; svc != nil {
		for _, g := range svc.gateways {
			if def, ok := g.defs[name]; ok {
				defs = append(defs, fmt.Sprintf("%s: tenants=%v ports=%v icmp=%t",
					g.id.String(), def.Tenants, portList(def.Ports), def.ICMP))
			}
		}
	}
	r.mu.RUnlock()
	r.log.Warn("gateways disagree on a service; each gateway takes the tenants it admits, agents see the union",
		"service", name, "definitions", defs)
}

// portList renders ports for a log line: "tcp/443", "udp/53".
func portList(ports []tunnel.PortInfo) []string {
	out := make([]string, len(ports))
	for i, p := range ports {
		out[i] = fmt.Sprintf("%s/%d", p.Protocol, p.Port)
	}
	return out
}

// allocation returns the VIPs of a registered service: those it has when
// another gateway serves it already, else from the pool. Callers hold
// regMu.
func (r *Relay) allocation(info tunnel.ServiceInfo) (catalog.Allocation, error) {
	r.mu.RLock()
	svc := r.services[info.Name]
	r.mu.RUnlock()
	if svc != nil {
		return catalog.Allocation{Service: svc.name, VIP: svc.vip, VIP6: svc.vip6}, nil
	}
	// The VIP is allocated before the service is entered, and a ztna-v1
	// agent of any tenant must not be ACKed for it meanwhile as for a name
	// no gateway serves since the relay started (v1MayRegister): the
	// registering gateway's tenants are remembered until the service is.
	r.mu.Lock()
	_, known := r.lastAdmitted[info.Name]
	if !known {
		r.lastAdmitted[info.Name] = admittedOnce{tenants: newTenantSet(info.Tenants), at: r.now()}
	}
	r.mu.Unlock()
	a, err := r.acquire(info)
	if err != nil && !known {
		r.mu.Lock()
		delete(r.lastAdmitted, info.Name)
		r.mu.Unlock()
	}
	return a, err
}

// acquire allocates a new service's VIPs: a relay pin first, then the
// gateway's pin (only while the service has no allocation of its own, nor
// a VIP held for it after a release, so that a VIP never moves), then
// automatically. A gateway pin the pool refuses is ignored with a warning.
// Callers hold regMu.
func (r *Relay) acquire(info tunnel.ServiceInfo) (catalog.Allocation, error) {
	pin := r.pins[info.Name]
	req := catalog.Request{Service: info.Name, VIP: pin.vip, VIP6: pin.vip6}
	if _, allocated := r.pool.Lookup(info.Name); !allocated && !r.pool.Holds(info.Name) {
		if !req.VIP.IsValid() {
			req.VIP = info.VIP
		}
		if !req.VIP6.IsValid() {
			req.VIP6 = info.VIP6
		}
	}
	a, err := r.pool.Acquire(req)
	if err != nil && (req.VIP != pin.vip || req.VIP6 != pin.vip6) {
		r.log.Warn("gateway's VIP pin ignored", "service", info.Name, "err", err)
		a, err = r.pool.Acquire(catalog.Request{Service: info.Name, VIP: pin.vip, VIP6: pin.vip6})
	}
	return a, err
}

// stopServingLocked removes g from a service it served and closes the tags
// of that pair; it reports whether the service is left without gateway
// (and so removed). Callers hold regMu and r.mu.
func (r *Relay) stopServingLocked(g *gateway, name string, closed tagsByGateway) bool {
	def := g.defs[name]
	delete(g.services, name)
	delete(g.defs, name)
	for _, t := range g.tags {
		if t.service == name {
			closed.add(t)
			r.killTagLocked(t)
		}
	}
	svc := r.services[name]
	if svc == nil {
		return false
	}
	svc.gateways = slices.DeleteFunc(svc.gateways, func(x *gateway) bool { return x == g })
	if len(svc.gateways) > 0 {
		return false
	}
	delete(r.services, name)
	r.lastAdmitted[name] = admittedOnce{tenants: def.tenants, at: r.now()}
	return true
}

// releaseLocked gives the VIPs of services no gateway serves any more back
// to the pool (held for the hold-down), except pinned ones, which stay
// reserved. Callers hold regMu.
func (r *Relay) releaseLocked(names []string) {
	for _, name := range names {
		if _, pinned := r.pins[name]; pinned {
			continue
		}
		if err := r.pool.Release(name); err != nil {
			r.log.Error("cannot release VIP", "service", name, "err", err)
			continue
		}
		r.log.Info("service no longer served; VIP released", "service", name)
	}
}

// health applies a gateway's health report to the services it registered.
// Agents with a direct path to g for a service now down are told to start
// no new flows on it.
func (r *Relay) health(g *gateway, msg *tunnel.Health) {
	var down []string
	changed := false
	r.mu.Lock()
	for name, healthy := range msg.Services {
		if old, ok := g.services[name]; ok && old != healthy {
			g.services[name] = healthy
			changed = true
			if !healthy {
				down = append(down, name)
			}
		}
	}
	r.mu.Unlock()
	if changed {
		r.directoryChanged()
	}
	for _, name := range down {
		r.retireDirectPaths(g, name, tunnel.CodeServiceDown)
	}
}

// usableCandidates keeps the direct-path candidates of a registration an
// agent could dial, at most tunnel.MaxCandidates. Callers hold r.mu.
func (r *Relay) usableCandidates(g *gateway, cs []netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, c := range cs {
		if !usableCandidate(c) || len(out) == tunnel.MaxCandidates {
			if g.mayWarn() {
				r.log.Warn("gateway candidate ignored", "gateway", g.id.String(), "candidate", c.String())
			}
			continue
		}
		out = append(out, c)
	}
	return out
}

// addGateway enters a gateway session into the registry. An older session
// of the same gateway (same identity and name) is closed: the gateway
// restarted, and its old session would only linger until the idle timeout.
//
// A bounded identity (identityKeyOf) may have gateways of
// tunnel.MaxIdentitySessions names: an operator may run a few gateways
// under one certificate, each with its own name, but a copied certificate,
// or a gateway that restarts under ever new names, must not grow the
// registry, its services and outboxes without end. A session of another
// name beyond them is refused, not the oldest closed as for agents: the
// live gateways serve flows, and a restart keeps its name, so it still
// replaces its old session at the bound.
func (r *Relay) addGateway(g *gateway) *refusal {
	key, bounded := identityKeyOf(&g.peer)
	r.mu.Lock()
	var replaced []*gateway
	names := make(map[string]struct{}) // of g's identity's other gateways
	for old := range r.gateways {
		if sameGateway(old, g) {
			replaced = append(replaced, old)
		} else if k, ok := identityKeyOf(&old.peer); bounded && ok && k == key {
			names[old.name] = struct{}{}
		}
	}
	if len(names) >= tunnel.MaxIdentitySessions {
		r.mu.Unlock()
		return &refusal{refuseTooManySessions, fmt.Sprintf(
			"%s has gateways of %d other names connected already; a restarted gateway must keep its name",
			g.id.String(), len(names))}
	}
	r.gateways[g] = struct{}{}
	r.mu.Unlock()
	r.m.gwGauge.Inc()
	for _, old := range replaced {
		r.log.Info("gateway reconnected; closing its old session", "gateway", g.id.String(), "old_session", old.s.ID())
		_ = old.s.Close("replaced by a new session of the same gateway")
	}
	return nil
}

// sameGateway reports whether two gateway sessions are the same gateway:
// the same hello name and the same identity, all of it. Identity.String()
// alone would confuse a legacy identity with the URI identity of its
// common name in tenant default, legacy identities of one common name with
// different rights, and an unverified peer of an insecure relay with a
// verified gateway of the name its hello claims.
func sameGateway(a, b *gateway) bool {
	return a.name == b.name && a.id.String() == b.id.String() && a.id.Legacy == b.id.Legacy &&
		slices.Equal(a.id.Services, b.id.Services) && (a.s.Peer().Tenant == "") == (b.s.Peer().Tenant == "")
}

// removeGateway takes an ended gateway session out of the registry: its
// tags die (agents draw new ones on other gateways), services it alone
// served are removed.
func (r *Relay) removeGateway(g *gateway) {
	r.regMu.Lock()
	r.mu.Lock()
	delete(r.gateways, g)
	var emptied []string
	for name := range g.services {
		if r.stopServingLocked(g, name, tagsByGateway{}) {
			emptied = append(emptied, name)
		}
	}
	for _, t := range g.tags {
		r.killTagLocked(t)
	}
	r.m.services.Set(float64(len(r.services)))
	r.countConflictsLocked()
	r.mu.Unlock()
	r.m.gwGauge.Dec()
	if r.ctx.Err() == nil {
		r.releaseLocked(emptied)
	} // else the relay is stopping: the state file keeps every VIP, and the next start releases the stale ones after its grace (releaseStale)
	r.regMu.Unlock()
	r.directoryChanged()
	r.dropSignaling(party{g: g})
}
