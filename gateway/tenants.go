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
	names   map[string]bool               // the [[tenant]] names
}

type tenantPrefix struct {
	prefix netip.Prefix
	tenant string
}

func newTenantTable(tenants []catalog.Tenant) tenantTable {
	t := tenantTable{limits: make(map[string]catalog.FlowLimits), names: make(map[string]bool, len(tenants))}
	for _, tn := range tenants {
		t.names[tn.Name] = true
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

// configures reports whether name is a [[tenant]] of the table.
func (t *tenantTable) configures(name string) bool { return t.names[name] }

// tenantChanges compares the [[tenant]] names of two tables: true for a
// tenant old has and t lacks (it left), false for one t has and old lacks
// (it came, or came back). Tenants named only by agents' certificates are
// in neither table: their series follow their agents (tenantPresence).
func tenantChanges(old, t *tenantTable) map[string]bool {
	changes := make(map[string]bool)
	for name := range old.names {
		if !t.names[name] {
			changes[name] = true
		}
	}
	for name := range t.names {
		if !old.names[name] {
			changes[name] = false
		}
	}
	return changes
}

// forgetTenants deletes the flow series of the tenants that left the
// configuration between old and t, of every service: at once where no
// flow is open on them, else when the last one ends. A tenant that left
// while one of its agents is connected stays present until the last one
// leaves (tenantPresence). (Their limit counters go by themselves with
// their last flow and handshake: flowLimits.giveTenant.)
func (g *Gateway) forgetTenants(old, t *table) {
	changes := tenantChanges(&old.tenants, &t.tenants)
	if len(changes) == 0 {
		return
	}
	g.presence.mu.Lock()
	defer g.presence.mu.Unlock()
	for name, gone := range changes {
		if gone && g.presence.ingresses[name] > 0 {
			delete(changes, name)
		}
	}
	g.tenantsChangedLocked(changes)
}
