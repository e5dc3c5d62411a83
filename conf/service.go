package conf

import (
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/ztgate/ztgate/catalog"
)

// service validates one [[service]] table (or API object) at path against
// ctx. Checks across services and against the pool are in validateServices.
func (v *validator) service(path string, r *rawService, ctx *ServiceContext) catalog.Service {
	s := catalog.Service{
		Name:        v.serviceName(join(path, "name"), r.Name),
		Tenants:     v.serviceTenants(join(path, "tenants"), r.Tenants, ctx),
		Backends:    v.backends(join(path, "backends"), r.Backends, r.BackendsSRV != ""),
		BackendsSRV: r.BackendsSRV,
		ICMP:        r.ICMP == nil || *r.ICMP,
		Ports:       v.ports(join(path, "port"), r.Ports),
		FlowLimits: v.flowLimits(path, catalog.FlowLimits{
			MaxFlows:              r.MaxFlows,
			MaxInflightHandshakes: r.MaxInflightHandshakes,
			NewFlowsPerSecond:     r.NewFlowsPerSecond,
			NewFlowsBurst:         r.NewFlowsBurst,
		}, ctx.Limits),
	}
	if r.VIP != "" {
		s.VIP = v.vip(join(path, "vip"), r.VIP, true)
	}
	if r.VIP6 != "" {
		s.VIP6 = v.vip(join(path, "vip6"), r.VIP6, false)
	}
	if r.BackendsSRV != "" {
		if err := checkSRVName(r.BackendsSRV); err != nil {
			v.add(join(path, "backends_srv"), err)
		}
		s.BackendsSRV = strings.ToLower(r.BackendsSRV)
	}
	if r.Balance != "" {
		b, ok := catalog.ParseBalance(r.Balance)
		if !ok {
			v.addf(join(path, "balance"), "%q is not round_robin, least_conn or source_hash", r.Balance)
		}
		if ok {
			s.Balance = b
		}
	}
	s.Health = v.health(join(path, "health"), r.Health, s.Ports)
	s.Timeouts = v.timeouts(join(path, "timeouts"), r.Timeouts)
	return s
}

// vip parses a pinned VIP of one family.
func (v *validator) vip(path, s string, want4 bool) netip.Addr {
	a, ok := v.addr(path, s)
	switch {
	case !ok:
	case want4 && !a.Is4():
		v.addf(path, "%s is not an IPv4 address (an IPv6 pin goes in vip6)", s)
	case !want4 && (!a.Is6() || a.Is4In6()):
		v.addf(path, "%s is not an IPv6 address (an IPv4 pin goes in vip)", s)
	default:
		return a
	}
	return netip.Addr{}
}

// serviceTenants validates who may reach a service: "*" or tenant names
// declared in ctx (any label when ctx allows unknown tenants).
func (v *validator) serviceTenants(path string, names []string, ctx *ServiceContext) []string {
	if len(names) == 0 {
		v.addf(path, "required: the tenants that may reach the service, or [\"*\"] for every tenant")
		return nil
	}
	out := make([]string, 0, len(names))
	for i, n := range names {
		p := index(path, i)
		if n != "*" {
			n = v.name(p, n)
			if ctx.unknownTenant(n) {
				v.addf(p, unknownTenant, n)
			}
		}
		if slices.Contains(out, n) {
			v.addf(p, "%q is listed twice", n)
		}
		out = append(out, n)
	}
	// "*" with names would read as "these tenants" while it admits every
	// one: refuse it rather than guess what was meant.
	if len(out) > 1 && slices.Contains(out, "*") {
		v.addf(path, `"*" (every tenant) cannot be listed with tenant names: write ["*"] alone, or only the names`)
	}
	return out
}

// backends validates backend addresses: IP literals or host names without
// ports, no duplicates; at least one unless SRV discovery is configured.
func (v *validator) backends(path string, ss []string, srv bool) []string {
	if len(ss) == 0 && !srv {
		v.addf(path, "required: at least one IP address or host name (or set backends_srv)")
	}
	var out []string
	for i, s := range ss {
		p := index(path, i)
		b, ok := v.backend(p, s)
		if !ok {
			continue
		}
		if slices.Contains(out, b) {
			v.listedTwice(p, s, b)
			continue
		}
		out = append(out, b)
	}
	return out
}

// backend normalises one backend: an IP in canonical form or a lower-cased
// host name. An IPv4-mapped IPv6 address is its IPv4 address, which is what
// a dial to it reaches: ::ffff:192.0.2.1 and 192.0.2.1 are one backend.
func (v *validator) backend(path, s string) (string, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String(), true
	}
	if _, _, err := net.SplitHostPort(s); err == nil {
		v.addf(path, "%q: a backend has no port (ports come from [[service.port]] target)", s)
		return "", false
	}
	if err := checkHostName(s); err != nil {
		v.add(path, err)
		return "", false
	}
	return strings.ToLower(s), true
}
