package relay

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/tunnel"
)

// get fetches an API path with an optional bearer token.
func get(t *testing.T, r *Relay, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+r.APIAddr()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestAPI(t *testing.T) {
	p := newPKI(t)
	cfg := p.relayConfig(t.TempDir())
	cfg.API.TokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(cfg.API.TokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, cfg)
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	vip := vipOf(gw.register(svc("web", "acme")), "web")
	gw.echo()
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "a1"), agentHello("a1"))
	a.send("web", udpPacket(netip.AddrPortFrom(innerAddr, 1), netip.AddrPortFrom(vip, 7), "a1-0"))
	a.datagram() // the echo: a tag exists now

	tests := []struct {
		name, path, token string
		status            int
		contains          []string
	}{
		{"healthz", "/healthz", "", 200, []string{"ok"}},
		{"metrics", "/metrics", "", 200, []string{
			`ztgate_relay_sessions{role="agent"} 1`, `ztgate_relay_sessions{role="gateway"} 1`,
			`ztgate_relay_datagrams_total{direction="agent_to_gateway",result="forwarded"} 1`,
			`ztgate_relay_tags 1`, `ztgate_relay_registrations_total{result="ok",role="gateway"} 1`,
			`ztgate_tunnel_handshakes_total{reason="none",result="ok",side="server"} 2`,
			"ztgate_vip_pool_used 1", "go_goroutines", `ztgate_relay_dropped_total{reason="spoofed"} 0`,
		}},
		{"services without token", "/v1/services", "", 401, []string{"bearer token"}},
		{"services with wrong token", "/v1/services", "guess", 401, nil},
		{"services", "/v1/services", "s3cret", 200, []string{`"name": "web"`, `"vip": "` + vip.String() + `"`}},
		{"sessions", "/v1/sessions", "s3cret", 200, []string{`"identity": "acme/agent/a1"`, `"role": "gateway"`}},
		{"forwarders without token", "/v1/forwarders", "", 401, nil},
		{"forwarders (forward_ports off)", "/v1/forwarders", "s3cret", 200, []string{`"forwarders": []`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := get(t, r, tc.path, tc.token)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			for _, want := range tc.contains {
				if !strings.Contains(body, want) {
					t.Errorf("body lacks %q:\n%s", want, body)
				}
			}
		})
	}

	t.Run("services shape", func(t *testing.T) {
		_, body := get(t, r, "/v1/services", "s3cret")
		var out struct {
			Services []apiService `json:"services"`
		}
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		if len(out.Services) != 1 {
			t.Fatalf("%+v", out)
		}
		s := out.Services[0]
		if s.VIP != vip.String() || !s.Healthy || len(s.Gateways) != 1 || s.Gateways[0].Name != "gw1" ||
			s.Gateways[0].Session != gw.s.Welcome().Session || s.Tenants[0] != "acme" || s.Ports[0].Port != 7 {
			t.Errorf("service %+v", s)
		}
	})
	t.Run("sessions shape", func(t *testing.T) {
		_, body := get(t, r, "/v1/sessions", "s3cret")
		var out struct {
			Sessions []apiSession `json:"sessions"`
		}
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		byRole := map[string]apiSession{}
		for _, s := range out.Sessions {
			byRole[s.Role] = s
		}
		ag, g := byRole["agent"], byRole["gateway"]
		if ag.ID != a.s.Welcome().Session || ag.Tenant != "acme" || ag.Tags != 1 || ag.Inner != innerAddr.String() ||
			ag.Version != tunnel.ALPNV2 || ag.Since.IsZero() || ag.Remote == "" {
			t.Errorf("agent session %+v", ag)
		}
		if g.Identity != "ops/gateway/gw1" || g.Tags != 1 || len(g.Services) != 1 {
			t.Errorf("gateway session %+v", g)
		}
	})
	t.Run("gateways that disagree", func(t *testing.T) {
		gw2 := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw2"), gatewayHello("gw2"))
		gw2.register(tunnel.ServiceInfo{Name: "web", Tenants: []string{"globex"}, ICMP: true,
			Ports: []tunnel.PortInfo{{Protocol: "tcp", Port: 443}}})
		_, body := get(t, r, "/v1/services", "s3cret")
		var out struct {
			Services []apiService `json:"services"`
		}
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		if len(out.Services) != 1 || len(out.Services[0].Gateways) != 2 {
			t.Fatalf("%+v", out)
		}
		s := out.Services[0]
		if !s.Conflict || fmt.Sprint(s.Tenants) != "[acme globex]" || fmt.Sprint(portList(s.Ports)) != "[udp/7 tcp/443]" || !s.ICMP {
			t.Errorf("merged service %+v", s)
		}
		if g := s.Gateways[0]; g.Name != "gw1" || fmt.Sprint(g.Tenants) != "[acme]" || g.ICMP {
			t.Errorf("first gateway %+v", g)
		}
		if g := s.Gateways[1]; g.Name != "gw2" || fmt.Sprint(g.Tenants) != "[globex]" ||
			fmt.Sprint(portList(g.Ports)) != "[tcp/443]" || !g.ICMP {
			t.Errorf("second gateway %+v", g)
		}
		if _, body := get(t, r, "/metrics", ""); !strings.Contains(body, "ztgate_relay_service_conflicts 1") {
			t.Error("the conflict is not counted")
		}
	})
}

// TestSessionsWhileGatewayStarts: GET /v1/sessions lists a gateway that
// has connected and registered nothing yet. Its session entered the
// registry before its welcome and set its outbox after, without the
// registry's lock; the handler copied the whole session, outbox included,
// and the race detector caught the two.
func TestSessionsWhileGatewayStarts(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	mustDial(t, r.Addr().String(), p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	status, body := get(t, r, "/v1/sessions", "")
	if status != http.StatusOK || !strings.Contains(body, `"identity": "ops/gateway/gw1"`) {
		t.Fatalf("status %d: %s", status, body)
	}
}
