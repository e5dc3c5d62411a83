package relay

import (
	"bytes"
	"cmp"
	"encoding/json"
	"slices"

	"github.com/ztgate/ztgate/tunnel"
)

// directoryFor returns the services the agent may reach: those a gateway
// serves for the agent's tenant (or "*") and that its identity permits,
// each as those gateways define it (definition.go), healthy while one of
// them that is not drained reports it healthy: a drained gateway takes no
// new flow, and the agent refuses at once a new flow of a service down.
func (r *Relay) directoryFor(a *agent) tunnel.Directory {
	d := tunnel.Directory{
		Type: tunnel.MessageDirectory, Zone: r.cfg.Zone, TTL: int(r.cfg.TTL.Seconds()),
		Pool: r.cfg.Pool, Pool6: r.cfg.Pool6, Services: []tunnel.DirectoryService{},
	}
	r.mu.RLock()
	for _, svc := range r.services {
		if !a.may(svc) {
			continue
		}
		v := svc.viewForLocked(a.id.Tenant)
		d.Services = append(d.Services, tunnel.DirectoryService{
			Name: svc.name, VIP: svc.vip, VIP6: svc.vip6, Ports: v.ports, ICMP: v.icmp,
			Healthy: r.takesNewFlowsLocked(svc, a.id.Tenant),
		})
	}
	r.mu.RUnlock()
	slices.SortFunc(d.Services, func(x, y tunnel.DirectoryService) int { return cmp.Compare(x.Name, y.Name) })
	return d
}

// takesNewFlowsLocked reports whether a gateway of svc that admits tenant
// and is not drained reports it healthy. Callers hold r.mu.
func (r *Relay) takesNewFlowsLocked(svc *service, tenant string) bool {
	for _, g := range svc.gateways {
		if g.services[svc.name] && g.admits(svc.name, tenant) && !r.drained[gatewayName(g)] {
			return true
		}
	}
	return false
}

// pushDirectory sends the agent its directory at connect and again after
// every change that alters it, until the session ends. One goroutine per
// agent and a wake-up channel keep the pushes in order and coalesce
// bursts of changes.
//
// A directory that cannot be sent as a message (over
// tunnel.MaxMessageSize) is logged and counted, and the agent keeps its
// last one; the next change that alters the directory is tried again.
func (r *Relay) pushDirectory(a *agent) {
	var last []byte
	for {
		body, err := json.Marshal(r.directoryFor(a))
		if err == nil && !bytes.Equal(body, last) {
			last = body
			if err := a.s.Send(json.RawMessage(body)); err != nil {
				if a.s.Err() != nil {
					return
				}
				r.m.dirFailed.Inc()
				r.log.Error("cannot send an agent its directory; it keeps its last one", "agent", a.id.String(),
					"session", a.s.ID(), "bytes", len(body), "err", err)
			}
		}
		select {
		case <-a.s.Done():
			return
		case <-a.dirty:
		}
	}
}

// directoryChanged wakes every agent's pusher.
func (r *Relay) directoryChanged() {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for a := range r.agents {
		wake(a.dirty)
	}
}
