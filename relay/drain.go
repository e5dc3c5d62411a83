package relay

import "github.com/ztgate/ztgate/tunnel"

// setDrained drains (or undrains) the gateways named name: a drained
// gateway takes no new flows, neither relayed nor direct, while its
// existing flows go on. The mark belongs to the name, so it survives the
// gateway's reconnections (not a relay restart). It reports false, and
// changes nothing, when no gateway of that name is connected nor drained.
func (r *Relay) setDrained(name string, drained bool) bool {
	r.mu.Lock()
	var live []*gateway
	for g := range r.gateways {
		if gatewayName(g) == name {
			live = append(live, g)
		}
	}
	known := len(live) > 0 || r.drained[name]
	if known {
		if drained {
			r.drained[name] = true
		} else {
			delete(r.drained, name)
		}
	}
	r.mu.Unlock()
	if !known {
		return false
	}
	r.log.Info("gateway drain changed", "gateway", name, "drained", drained, "sessions", len(live))
	r.directoryChanged() // a service whose gateways are all drained is down
	if drained {
		for _, g := range live {
			r.retireDirectPaths(g, "", tunnel.CodeDrained)
		}
	}
	return true
}

// gatewayStateLocked is a gateway's state for a service in the API: draining
// when drained, else healthy or down as it reports. Callers hold r.mu.
func (r *Relay) gatewayStateLocked(g *gateway, service string) string {
	switch {
	case r.drained[gatewayName(g)]:
		return "draining"
	case g.services[service]:
		return "healthy"
	}
	return "down"
}
