package conf

import "github.com/ztgate/ztgate/catalog"

// flowLimits validates the limit keys a [[tenant]] and a [[service]] share
// (max_flows, max_inflight_handshakes, new_flows_per_second,
// new_flows_burst) under path. Zero sets no limit of its own. The gateway's
// [limits] in global cap them: a tenant or service cannot be allowed more
// than the whole gateway, and a value above the cap would silently do
// nothing. A zero field of global caps nothing.
func (v *validator) flowLimits(path string, l catalog.FlowLimits, global Limits) catalog.FlowLimits {
	const most = 1 << 30 // as [limits]: twice a rate must not overflow
	for _, k := range []struct {
		key string
		n   int
	}{
		{"max_flows", l.MaxFlows},
		{"max_inflight_handshakes", l.MaxInflightHandshakes},
		{"new_flows_per_second", l.NewFlowsPerSecond},
		{"new_flows_burst", l.NewFlowsBurst},
	} {
		switch {
		case k.n < 0:
			v.addf(join(path, k.key), "must not be negative")
		case k.n > most:
			v.addf(join(path, k.key), "%d is out of range 0..%d", k.n, most)
		}
	}
	capped := func(key string, n, bound int, what string) {
		if bound > 0 && n > bound {
			v.addf(join(path, key), "%d is more than limits.%s %d, %s", n, key, bound, what)
		}
	}
	capped("max_inflight_handshakes", l.MaxInflightHandshakes, global.MaxInflightHandshake, "the bound of the whole gateway")
	capped("new_flows_per_second", l.NewFlowsPerSecond, global.NewFlowsPerSecond, "which bounds every source")
	if global.NewFlowsPerSecond > 0 {
		capped("new_flows_burst", l.NewFlowsBurst, global.NewFlowsBurst, "which bounds every source")
	}
	if l.NewFlowsBurst > 0 && l.NewFlowsPerSecond == 0 {
		v.addf(join(path, "new_flows_burst"), "needs new_flows_per_second in the same table: a burst belongs to a rate")
	}
	return l
}
