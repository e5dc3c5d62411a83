package gateway

import (
	"net/http"
	"slices"
	"testing"
)

// TestDrainSRVNameAnyCase: the drain API takes the SRV name (or host
// name) a service's backends are configured by in any case, as DNS and the
// configuration do: the name is folded to lower case when the service is
// read (`"backends_srv": "_WEB._tcp.corp.example"` in a POST), so the name
// as the operator wrote it must drain the backends it names, not answer
// 404.
func TestDrainSRVNameAnyCase(t *testing.T) {
	for _, name := range []string{"_WEB._TCP.CORP.EXAMPLE", "_web._tcp.Corp.Example"} {
		t.Run(name, func(t *testing.T) {
			svc, h := srvDrainGateway(t)
			var out struct {
				Errors []string `json:"errors"`
			}
			if got := call(t, h, "POST", "/v1/services/web/backends/"+name+"/drain", "", &out); got != http.StatusOK {
				t.Fatalf("drain %s: status %d, want 200: %v", name, got, out.Errors)
			}
			var draining []string
			for _, b := range svc.st.backends.Load().list {
				if b.describe().State == "draining" {
					draining = append(draining, b.label())
				}
			}
			if want := []string{"192.0.2.20:8080", "192.0.2.20:8081", "[2001:db8::20]:8080"}; !slices.Equal(draining, want) {
				t.Fatalf("draining %q, want %q", draining, want)
			}
			if got := call(t, h, "POST", "/v1/services/web/backends/"+name+"/undrain", "", &out); got != http.StatusOK {
				t.Fatalf("undrain %s: status %d, want 200: %v", name, got, out.Errors)
			}
		})
	}
}
