package gateway

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
)

// apiStoreContext is the service context FuzzAPIStoreLoad loads against:
// a pool and two tenants.
var apiStoreContext = conf.ServiceContext{
	Pool:    netip.MustParsePrefix("10.100.0.0/24"),
	Tenants: []catalog.Tenant{{Name: "acme"}, {Name: "globex"}},
}

// FuzzAPIStoreLoad loads arbitrary api-services.json files (the state
// file of the services added through the API, read at every start): load
// never panics, and what it accepts is one service per name, each with its
// stored body, as the table built from them needs.
func FuzzAPIStoreLoad(f *testing.F) {
	db := `{"name": "db", "tenants": ["acme"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 5432}]}`
	web := `{"name": "web", "tenants": ["*"], "vip": "10.100.0.9", "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 80}]}`
	for _, s := range []string{
		`{"version": 1, "services": []}`,
		`{"version": 1, "services": [` + db + `]}`,
		`{"version": 1, "services": [` + db + `, ` + web + `]}`,
		`{"version": 1, "services": [` + db + `, ` + db + `]}`,
		`{"version": 2, "services": [` + db + `]}`,
		`{"version": 1, "services": [null, 1, "x", {}]}`,
		`{"version": 1, "services": null}`,
		``, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, apiServicesFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		s := newAPIStore(dir)
		svcs, err := s.load(apiStoreContext)
		if err != nil {
			if svcs != nil {
				t.Fatalf("error %v with services %v", err, svcs)
			}
			return
		}
		seen := map[string]bool{}
		for _, svc := range svcs {
			if seen[svc.Name] {
				t.Fatalf("service %q loaded twice", svc.Name)
			}
			seen[svc.Name] = true
			if s.bodies[svc.Name] == nil || svc.Source != "api" {
				t.Fatalf("service %q loaded without its body or source", svc.Name)
			}
		}
		if len(s.bodies) != len(svcs) {
			t.Fatalf("%d bodies for %d services", len(s.bodies), len(svcs))
		}
	})
}

// TestAPIStoreDuplicateEntry: a file naming a service in two entries (say
// a hand-edited or merged one) stops the start with both entries named, as
// an entry that no longer validates does. Before, both loaded: the table
// kept the last one under the name while the store kept the last body,
// and nothing said the file held two.
func TestAPIStoreDuplicateEntry(t *testing.T) {
	dir := t.TempDir()
	db := `{"name": "db", "tenants": ["acme"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": %d}]}`
	data := fmt.Sprintf(`{"version": 1, "services": [`+db+`, `+db+`]}`, 5432, 5433)
	if err := os.WriteFile(filepath.Join(dir, apiServicesFile), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	svcs, err := newAPIStore(dir).load(apiStoreContext)
	if err == nil || !strings.Contains(err.Error(), `entry 1: service "db" is entry 0 already`) {
		t.Fatalf("load: %v, %v; want an error naming entries 0 and 1", svcs, err)
	}
}
