package gateway

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/ztgate/ztgate/catalog"
)

// tenantTable maps a LAN client address to its tenant by the tenants'
// source prefixes, most specific prefix first.
type tenantTable struct {
	entries []tenantPrefix
	limits  map[string]catalog.FlowLimits // the [[tenant]] limits by name; absent: none of its own
}

type tenantPrefix struct {
	prefix netip.Prefix
	tenant string
}

func newTenantTable(tenants []catalog.Tenant) tenantTable {
	t := tenantTable{limits: make(map[string]catalog.FlowLimits)}
	for _, tn := range tenants {
		if tn.FlowLimits != (catalog.FlowLimits{}) {
			t.limits[tn.Name] = tn.FlowLimits
		}
		for _, p := range tn.Sources {
			t.entries = append(t.entries, tenantPrefix{prefix: p.Masked(), tenant: tn.Name})
		}
	}
	slices.SortStableFunc(t.entries, func(a, b tenantPrefix) int {
		return cmp.Compare(b.prefix.Bits(), a.prefix.Bits())
	})
	return t
}

// lookup returns the tenant of a client address.
func (t *tenantTable) lookup(addr netip.Addr) (string, bool) {
	addr = addr.Unmap()
	for _, e := range t.entries {
		if e.prefix.Contains(addr) {
			return e.tenant, true
		}
	}
	return "", false
}
