package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/tunnel"
)

// TestRelayStatus: GET /v1/relay and ztgate_gateway_relay_connected say
// whether the session to the relay is up, to which relay, and once it
// ended why and when the gateway dials again; a gateway without [tunnel]
// relay has neither.
func TestRelayStatus(t *testing.T) {
	section, addr, sessions := fakeRelayWithSection(t)
	h := newFileHarness(t, quietGateway+section)
	api := h.gw.apiHandler("")
	status := func() apiRelay {
		t.Helper()
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/v1/relay", nil))
		var st apiRelay
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &st) != nil {
			t.Fatalf("GET /v1/relay: %d %s", rec.Code, rec.Body)
		}
		return st
	}
	connected := func() float64 {
		t.Helper()
		mfs, err := h.gw.m.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "ztgate_gateway_relay_connected" && len(mf.GetMetric()) == 1 {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no ztgate_gateway_relay_connected")
		return 0
	}

	var s *tunnel.Session
	select {
	case s = <-sessions:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not connect to the relay")
	}
	waitFor(t, 5*time.Second, "the session up in the status", func() bool { return status().Tunnel.Connected })
	st := status()
	if st.Relay != addr || st.Tunnel.Peer != "infra/relay/relay1" || !st.Tunnel.Remote.IsValid() || st.Tunnel.Version != "ztna-v2" ||
		st.Tunnel.LastError != "" || st.Tunnel.Since.IsZero() {
		t.Errorf("connected: %+v", st)
	}
	if v := connected(); v != 1 {
		t.Errorf("ztgate_gateway_relay_connected %v while connected", v)
	}

	s.Close("relay restarting")
	waitFor(t, 5*time.Second, "the session down in the status", func() bool { return !status().Tunnel.Connected })
	st = status()
	if !strings.Contains(st.Tunnel.LastError, "relay restarting") || !st.Tunnel.RetryAt.After(st.Tunnel.Since) || st.Tunnel.Peer != "" {
		t.Errorf("disconnected: %+v", st)
	}
	if v := connected(); v != 0 {
		t.Errorf("ztgate_gateway_relay_connected %v while disconnected", v)
	}

	// No relay: 404, and no metric.
	plain := newFileHarness(t, quietGateway)
	rec := httptest.NewRecorder()
	plain.gw.apiHandler("").ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/v1/relay", nil))
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "no [tunnel] relay") {
		t.Errorf("without a relay: %d %s", rec.Code, rec.Body)
	}
	if n, _ := testutil.GatherAndCount(plain.gw.m.reg, "ztgate_gateway_relay_connected"); n != 0 {
		t.Errorf("without a relay: %d series of ztgate_gateway_relay_connected", n)
	}
}

// TestDirectSessionsAPI: GET /v1/sessions lists the agents connected to
// the gateway's [tunnel] listen, in the relay's shape with role
// "gateway", and forgets each when it leaves; a gateway without a
// listener answers 404.
func TestDirectSessionsAPI(t *testing.T) {
	port := startHold(t)
	toml, ca, dir := directConfig(t, port)
	h := newHarness(t, toml)
	api := h.gw.apiHandler("")
	sessions := func() (role string, out []adminapi.Session) {
		t.Helper()
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/v1/sessions", nil))
		var body struct {
			Role     string             `json:"role"`
			Sessions []adminapi.Session `json:"sessions"`
		}
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &body) != nil {
			t.Fatalf("GET /v1/sessions: %d %s", rec.Code, rec.Body)
		}
		return body.Role, body.Sessions
	}
	if role, got := sessions(); role != "gateway" || got == nil || len(got) != 0 {
		t.Fatalf("before any agent: role %q, %+v", role, got)
	}

	creds := agentCreds(t, ca, dir, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := tunnel.Dial(ctx, h.gw.direct.Addr().String(), tunnel.DialConfig{
		Credentials: creds, ServerName: "127.0.0.1",
		Hello: tunnel.Hello{Role: tunnel.RoleAgent, Name: "laptop", InnerAddr: agentInner},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the agent listed", func() bool { _, got := sessions(); return len(got) == 1 })
	_, got := sessions()
	a := got[0]
	if a.Role != "agent" || a.Identity != "acme/agent/laptop" || a.Tenant != "acme" || a.Inner != agentInner.String() ||
		a.Version != "ztna-v2" || a.Remote == "" || a.Since.IsZero() || a.ID == 0 {
		t.Errorf("listed %+v", a)
	}
	s.Close("agent leaves")
	waitFor(t, 5*time.Second, "the agent gone from the list", func() bool { _, got := sessions(); return len(got) == 0 })

	plain := newFileHarness(t, quietGateway)
	rec := httptest.NewRecorder()
	plain.gw.apiHandler("").ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/v1/sessions", nil))
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "no [tunnel] listen") {
		t.Errorf("without a listener: %d %s", rec.Code, rec.Body)
	}
}
