package conf

import (
	"net/netip"
	"strings"

	"github.com/ztgate/ztgate/catalog"
)

// name validates a required DNS label and returns it lower-cased.
func (v *validator) name(path, s string) string {
	if s == "" {
		v.addf(path, "required")
		return ""
	}
	if err := checkLabel(s); err != nil {
		v.add(path, err)
	}
	return strings.ToLower(s)
}

// serviceName validates a service name: a DNS label that is not "ns",
// which names the zone's name server (ns.<zone>).
func (v *validator) serviceName(path, s string) string {
	n := v.name(path, s)
	if n == "ns" {
		v.addf(path, `"ns" is reserved for the zone's name server (ns.<zone>); choose another name`)
	}
	return n
}

// tenants validates the [[tenant]] tables: unique names, sources that are
// network addresses and that no two tenants share, limits within global.
func (v *validator) tenants(rs []rawTenant, global Limits) []catalog.Tenant {
	type owned struct {
		prefix netip.Prefix
		tenant int
		path   string
	}
	var (
		out   = make([]catalog.Tenant, len(rs))
		seen  = make(map[string]int)
		owner []owned
	)
	for i, r := range rs {
		path := index("tenant", i)
		t := catalog.Tenant{
			Name: v.name(join(path, "name"), r.Name),
			FlowLimits: v.flowLimits(path, catalog.FlowLimits{
				MaxFlows:              r.MaxFlows,
				MaxInflightHandshakes: r.MaxInflightHandshakes,
				NewFlowsPerSecond:     r.NewFlowsPerSecond,
				NewFlowsBurst:         r.NewFlowsBurst,
			}, global),
		}
		if j, dup := seen[t.Name]; dup && t.Name != "" {
			v.addf(join(path, "name"), "%q is also the name of tenant[%d]", t.Name, j)
		} else {
			seen[t.Name] = i
		}
		if len(r.Sources) == 0 {
			v.addf(join(path, "sources"), "required: at least one prefix such as \"198.51.100.0/24\"")
		}
		for k, s := range r.Sources {
			sp := index(join(path, "sources"), k)
			p, ok := v.network(sp, s)
			if !ok {
				continue
			}
			for _, o := range owner {
				switch {
				case o.tenant == i && o.prefix == p:
					v.addf(sp, "%s is listed twice", p)
				case o.tenant != i && o.prefix.Overlaps(p):
					v.addf(sp, "%s of tenant %q overlaps %s of tenant %q (%s): a source belongs to one tenant",
						p, t.Name, o.prefix, out[o.tenant].Name, o.path)
				}
			}
			owner = append(owner, owned{p, i, sp})
			t.Sources = append(t.Sources, p)
		}
		out[i] = t
	}
	return out
}
