package gateway

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
)

// TestAPIPinConflictNamesServices: a POST /v1/services whose vip another
// service pins is refused with an error about the body's own key
// (service.vip) naming the other service and where it comes from, not
// paths in the list of the file's and the API's services merged (the
// body is not service[2] there, and the file's echo is not service[0] of
// anything the operator sent).
func TestAPIPinConflictNamesServices(t *testing.T) {
	web := startLineEcho(t, "web")
	h := newFileHarness(t, reloadConfig(web, `"acme"`, webService(web)))
	api := h.gw.apiHandler("")
	body := func(name, vip string) string {
		return fmt.Sprintf(`{"name": %q, "tenants": ["acme"], "vip": %q, "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 7, "target": %d}], "health": {"type": "none"}}`, name, vip, web)
	}
	if code, out := serveAPI(t, api, "POST", "/v1/services", body("api1", "10.100.0.9"), ""); code != 201 {
		t.Fatalf("add api1: %d %s", code, out)
	}
	for _, tc := range []struct {
		name, vip string
		want      []string
	}{
		{"api2", "10.100.0.8", []string{`service.vip: 10.100.0.8 is pinned by service "web" (configuration file)`}},
		{"api3", "10.100.0.9", []string{`service.vip: 10.100.0.9 is pinned by service "api1" (added through the API)`}},
	} {
		code, out := serveAPI(t, api, "POST", "/v1/services", body(tc.name, tc.vip), "")
		var e struct{ Errors []string }
		if err := json.Unmarshal([]byte(out), &e); err != nil || code != 409 || !slices.Equal(e.Errors, tc.want) {
			t.Errorf("add %s at %s: %d %s; want 409 with errors %q", tc.name, tc.vip, code, out, tc.want)
		}
	}
}
