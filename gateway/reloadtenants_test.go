package gateway

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/conf"
)

// TestReloadTunnelOnRefusesUndeclaredTenants: a reload that turns the
// tunnel on (tunnel.listen, restart-only) no longer takes services naming
// tenants no [[tenant]] declares: until the restart no agent brings them,
// the running gateway serves declared tenants only, and POST /v1/services
// refuses such a service in the same words. Declared tenants pass, the
// listener named for the restart. Before, the file was validated in its
// own context, which admits any tenant with a tunnel, and taken.
func TestReloadTunnelOnRefusesUndeclaredTenants(t *testing.T) {
	h := newFileHarness(t, quietGateway+twoTenants)
	section := withTunnel(t, quietGateway+twoTenants)
	service := func(tenants string) string { return tcpService("echo", tenants, "10.100.0.7", "127.0.0.1", 7) }
	h.write(t, section+service(`"partner"`))
	_, err := h.gw.Reload()
	const want = `service[0].tenants[0]: unknown tenant "partner" (declare it in a [[tenant]] table)`
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), want) {
		t.Fatalf("reload with a tunnel turned on and an undeclared tenant: %v, want an invalid configuration with %s", err, want)
	}
	if _, ok := h.gw.tbl.Load().byName["echo"]; ok {
		t.Fatal("the refused reload added the service")
	}
	_, err = conf.ParseServiceJSON([]byte(`{"name":"echo","tenants":["partner"],"backends":["127.0.0.1"],"ports":[{"protocol":"tcp","port":7}]}`),
		h.gw.running.ServiceContext())
	if err == nil || !strings.Contains(err.Error(), `unknown tenant "partner" (declare it in a [[tenant]] table)`) {
		t.Fatalf("POST /v1/services of the same service: %v, want it refused in the same words", err)
	}

	h.write(t, section+service(`"acme"`))
	d, err := h.gw.Reload()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(d.RestartRequired, "tunnel.listen") || !slices.Contains(d.Added, "echo") {
		t.Fatalf("reload with a declared tenant: %+v, want echo added and tunnel.listen for the restart", d)
	}
}
