package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// TestAPI checks the agent's local API: off by default; when on, /healthz
// answers and /metrics shows the tunnel up and the packets it carried.
func TestAPI(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(directoryOf(true)) })

	t.Run("off by default", func(t *testing.T) {
		a, _ := startAgent(t, p, relay.addr())
		if addr := a.APIAddr(); addr != "" {
			t.Fatalf("API on %s without [api] listen", addr)
		}
	})

	a, dev := startAgentWith(t, p, relay.addr(), func(c *conf.Agent) {
		c.API.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	})
	base := "http://" + a.APIAddr()
	udpFlow(t, dev, netip.AddrPortFrom(upVIP, 7), "counted")
	if !relay.routed("counted", testTimeout) {
		t.Fatal("nothing reached the relay")
	}
	tests := []struct {
		path string
		want []string
	}{
		{"/healthz", []string{"ok"}},
		{"/metrics", []string{"ztgate_agent_connected 1", `ztgate_agent_packets_total{direction="up"}`, "go_goroutines", `ztgate_dns_queries_total{listener="agent"`}},
		{"/v1/services", []string{"404 page not found"}}, // how `ztgate status` tells an agent
		{"/v1/status", []string{`"role": "agent"`, `"connected": true`, `"identity": "acme/agent/laptop"`, `"name": "web"`, `"path": "relay"`}},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			body := httpGet(t, base+tc.path)
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("%s lacks %q:\n%s", tc.path, w, body)
				}
			}
		})
	}
	t.Run("/v1/status is Status", func(t *testing.T) {
		var got Status
		if err := json.Unmarshal([]byte(httpGet(t, base+"/v1/status")), &got); err != nil {
			t.Fatal(err)
		}
		want := a.Status()
		if got.Identity != want.Identity || got.Tunnel.Remote != want.Tunnel.Remote || len(got.Services) != len(want.Services) ||
			got.Pool != want.Pool || !got.Tunnel.Since.Equal(want.Tunnel.Since) {
			t.Errorf("GET /v1/status %+v, Status %+v", got, want)
		}
	})
	t.Run("packets counted", func(t *testing.T) {
		line := `ztgate_agent_packets_total{direction="up"} `
		for l := range strings.Lines(httpGet(t, base+"/metrics")) {
			if v, ok := strings.CutPrefix(l, line); ok {
				if n, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil || n < 1 {
					t.Errorf("%s%s: want at least the packet sent", line, v)
				}
				return
			}
		}
		t.Errorf("no %s", line)
	})
	t.Run("closed with the agent", func(t *testing.T) {
		a.Close()
		c := http.Client{Timeout: time.Second}
		if resp, err := c.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			t.Fatal("the API still answers after Close")
		}
	})
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: testTimeout}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
