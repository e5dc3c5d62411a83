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
	entries  []tenantPrefix
	maxFlows map[string]int // [[tenant]] max_flows by name; absent or 0: unlimited
}

type tenantPrefix struct {
	prefix netip.Prefix
	tenant string
}

func newTenantTable(tenants []catalog.Tenant) tenantTable {
	t := tenantTable{maxFlows: make(map[string]int)}
	for _, tn := range tenants {
		if tn.MaxFlows > 0 {
			t.maxFlows[tn.Name] = tn.MaxFlows
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
