package gateway

import (
	"net/netip"
	"testing"
)

// TestViewUndeclaredTenant: a tenant no service names and no [[tenant]]
// declares (a tunnel agent's certificate tenant) gets one shared view per
// table generation, not a new one per query, since the resolver caches
// answers by view; it sees only the services open to every tenant.
func TestViewUndeclaredTenant(t *testing.T) {
	tbl := classifyTable(0)
	tbl.buildViews([]string{"acme", "globex"})
	v1, v2 := tbl.view("agent-cert"), tbl.view("other-cert")
	if v1 != v2 || v1 != tbl.view("agent-cert") {
		t.Fatalf("undeclared tenants got views %p, %p: want one shared view", v1, v2)
	}
	if _, ok := v1.Lookup("open"); !ok {
		t.Error("service open to * not in the shared view")
	}
	if _, ok := v1.Lookup("web"); ok {
		t.Error("acme-only service web in the shared view")
	}
	if _, ok := v1.Reverse(netip.MustParseAddr("10.100.0.10")); ok {
		t.Error("web's VIP resolves in the shared view")
	}
	if e, ok := v1.Reverse(netip.MustParseAddr("10.100.0.11")); !ok || e.Name != "open" {
		t.Errorf("reverse of open's VIP = %+v, %v", e, ok)
	}
	if tbl.view("acme") == v1 {
		t.Error("declared tenant acme got the shared view")
	}
	if _, ok := tbl.view("acme").Lookup("web"); !ok {
		t.Error("acme does not see web")
	}
}
