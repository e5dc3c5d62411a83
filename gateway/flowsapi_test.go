package gateway

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// flowsConfig publishes echo (backend 127.0.0.1) and web (backend
// 127.0.0.2) to both tenants.
func flowsConfig(echoPort, webPort int) string {
	return `
[gateway]
state_dir = "STATE"
drain_timeout = "3s"
[api]
listen = "off"
` + twoTenants + tcpService("echo", `"*"`, "10.100.0.7", "127.0.0.1", echoPort) +
		tcpService("web", `"*"`, "10.100.0.8", "127.0.0.2", webPort)
}

// openFlows opens one flow per tenant and service, named tenant-service,
// each proven live by a round trip.
func openFlows(t *testing.T, h *harness) map[string]*lineConn {
	t.Helper()
	out := map[string]*lineConn{}
	for tenant, src := range map[string]string{"acme": "198.51.100.10", "globex": "203.0.113.10"} {
		for svc, vip := range map[string]string{"echo": "10.100.0.7:7", "web": "10.100.0.8:7"} {
			c := h.dialLines(t, netip.MustParseAddr(src), vip)
			if got := c.roundTrip(t, "hi"); got != svc+": hi" {
				t.Fatalf("%s-%s: %q", tenant, svc, got)
			}
			out[tenant+"-"+svc] = c
		}
	}
	return out
}

// closeFlows closes the flows and waits for the gateway to forget them.
func closeFlows(t *testing.T, h *harness, flows map[string]*lineConn) {
	t.Helper()
	for _, c := range flows {
		c.c.Close()
	}
	waitFor(t, 15*time.Second, "the flows to end", func() bool { return len(h.gw.flows.list(nil)) == 0 })
}

// TestListFlowsFilters: GET /v1/flows filters by tenant, service and
// backend (address or address:port), alone and together.
func TestListFlowsFilters(t *testing.T) {
	echoPort := startLineEchoAt(t, "127.0.0.1", "echo")
	webPort := startLineEchoAt(t, "127.0.0.2", "web")
	h := newFileHarness(t, flowsConfig(echoPort, webPort))
	flows := openFlows(t, h.harness)
	byClient := map[string]string{}
	for name, c := range flows {
		byClient[c.c.LocalAddr().String()] = name
	}
	api := h.gw.apiHandler("")
	cases := []struct {
		query string
		want  []string
	}{
		{"?", []string{"acme-echo", "acme-web", "globex-echo", "globex-web"}},
		{"?tenant=acme", []string{"acme-echo", "acme-web"}},
		{"?tenant=globex", []string{"globex-echo", "globex-web"}},
		{"?service=web", []string{"acme-web", "globex-web"}},
		{"?service=echo", []string{"acme-echo", "globex-echo"}},
		{"?backend=127.0.0.1", []string{"acme-echo", "globex-echo"}},
		{fmt.Sprintf("?backend=127.0.0.2:%d", webPort), []string{"acme-web", "globex-web"}},
		{fmt.Sprintf("?backend=127.0.0.2:%d", echoPort), nil},
		{"?tenant=globex&service=echo", []string{"globex-echo"}},
		{"?tenant=acme&backend=127.0.0.2", []string{"acme-web"}},
		{"?service=web&backend=127.0.0.1", nil},
		{"?tenant=nobody", nil},
	}
	for _, tc := range cases {
		t.Run(tc.query, func(t *testing.T) {
			var resp struct {
				Flows []apiFlow `json:"flows"`
			}
			if code := call(t, api, "GET", "/v1/flows"+tc.query, "", &resp); code != 200 {
				t.Fatalf("status %d", code)
			}
			var got []string
			for _, f := range resp.Flows {
				name := byClient[f.Client]
				got = append(got, name)
				tenant, svc, _ := strings.Cut(name, "-")
				backend := map[string]string{"echo": fmt.Sprintf("127.0.0.1:%d", echoPort), "web": fmt.Sprintf("127.0.0.2:%d", webPort)}[svc]
				if f.Tenant != tenant || f.Service != svc || f.Backend != backend {
					t.Errorf("flow %s shows tenant %q, service %q, backend %q", name, f.Tenant, f.Service, f.Backend)
				}
			}
			slices.Sort(got)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("flows %v, want %v", got, tc.want)
			}
		})
	}
}

// TestCloseFlowsByFilter: DELETE /v1/flows closes the live flows that
// match and no other; those keep echoing.
func TestCloseFlowsByFilter(t *testing.T) {
	echoPort := startLineEchoAt(t, "127.0.0.1", "echo")
	webPort := startLineEchoAt(t, "127.0.0.2", "web")
	h := newFileHarness(t, flowsConfig(echoPort, webPort))
	api := h.gw.apiHandler("")
	cases := []struct {
		query  string
		closed []string
	}{
		{"?service=web", []string{"acme-web", "globex-web"}},
		{"?tenant=globex", []string{"globex-echo", "globex-web"}},
		{"?backend=127.0.0.1", []string{"acme-echo", "globex-echo"}},
		{"?tenant=acme&service=echo", []string{"acme-echo"}},
		{"?tenant=nobody", nil},
		{"?all=true", []string{"acme-echo", "acme-web", "globex-echo", "globex-web"}},
	}
	for _, tc := range cases {
		t.Run(tc.query, func(t *testing.T) {
			flows := openFlows(t, h.harness)
			defer closeFlows(t, h.harness, flows)
			var resp struct {
				Closed int `json:"closed"`
			}
			if code := call(t, api, "DELETE", "/v1/flows"+tc.query, "", &resp); code != 200 || resp.Closed != len(tc.closed) {
				t.Fatalf("status %d, closed %d; want 200, %d", code, resp.Closed, len(tc.closed))
			}
			for name, c := range flows {
				if !slices.Contains(tc.closed, name) {
					if got := c.roundTrip(t, "still"); !strings.HasSuffix(got, ": still") {
						t.Fatalf("%s after the close: %q", name, got)
					}
					continue
				}
				c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("%s: %v, want it closed", name, err)
				}
			}
		})
	}
}

// TestAPIDeletedServiceDrains: a flow of a service added through the API
// keeps working after DELETE /v1/services/{name} and is closed at
// drain_timeout, not before.
func TestAPIDeletedServiceDrains(t *testing.T) {
	const drainTimeout = 3 * time.Second // flowsConfig's drain_timeout
	echoPort := startLineEchoAt(t, "127.0.0.1", "echo")
	apiPort := startLineEchoAt(t, "127.0.0.1", "api")
	h := newFileHarness(t, flowsConfig(echoPort, echoPort))
	api := h.gw.apiHandler("")
	var added apiService
	body := fmt.Sprintf(`{"name": "api1", "tenants": ["acme"], "backends": ["127.0.0.1"], "port": [{"protocol": "tcp", "port": 7, "target": %d}], "health": {"type": "none"}}`, apiPort)
	if code := call(t, api, "POST", "/v1/services", body, &added); code != 201 {
		t.Fatalf("add: %d %+v", code, added)
	}
	held := h.dialLines(t, acmeClient, added.VIP+":7")
	if got := held.roundTrip(t, "x"); got != "api: x" {
		t.Fatalf("flow to the API service: %q", got)
	}
	other := h.dialLines(t, acmeClient, "10.100.0.7:7")

	deleted := time.Now()
	if code := call(t, api, "DELETE", "/v1/services/api1", "", nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	var list struct {
		Services []apiService `json:"services"`
	}
	call(t, api, "GET", "/v1/services", "", &list)
	for _, s := range list.Services {
		if s.Name == "api1" {
			t.Fatal("the deleted service is still listed")
		}
	}
	if got := held.roundTrip(t, "draining"); got != "api: draining" {
		t.Fatalf("the flow right after the delete: %q", got)
	}
	held.c.SetReadDeadline(time.Now().Add(drainTimeout + 15*time.Second))
	if _, err := held.r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the flow after drain_timeout: %v, want it closed", err)
	}
	// The drain began with the delete: the flow cannot close earlier.
	if took := time.Since(deleted); took < drainTimeout {
		t.Fatalf("the flow closed %v after the delete, before drain_timeout %v", took, drainTimeout)
	}
	if got := other.roundTrip(t, "y"); got != "echo: y" {
		t.Fatalf("a flow of another service: %q", got)
	}
}

// TestFlowFilter: the API's flow filters; tenant and service names are
// lower-cased labels, so the filter folds them as the configuration does.
func TestFlowFilter(t *testing.T) {
	f := &flow{
		peer:   peer{tenant: "acme"},
		svc:    &service{spec: catalog.Service{Name: "web"}},
		target: netip.MustParseAddrPort("192.0.2.10:8080"),
	}
	cases := []struct {
		tenant, svc, backend string
		want                 bool
	}{
		{"", "", "", true},
		{"acme", "web", "", true},
		{"ACME", "Web", "", true},
		{"globex", "", "", false},
		{"", "db", "", false},
		{"", "", "192.0.2.10", true},
		{"", "", "192.0.2.10:8080", true},
		{"", "", "192.0.2.10:80", false},
		{"acme", "web", "192.0.2.11", false},
	}
	for _, tc := range cases {
		if got := flowFilter(tc.tenant, tc.svc, tc.backend)(f); got != tc.want {
			t.Errorf("flowFilter(%q, %q, %q) = %v, want %v", tc.tenant, tc.svc, tc.backend, got, tc.want)
		}
	}
}
