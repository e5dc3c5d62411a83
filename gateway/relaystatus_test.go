package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// TestRelayStatus: GET /v1/relay and ztgate_gateway_relay_connected say
// whether the session to the relay is up, to which relay, and once it
// ended why and when the gateway dials again; a gateway without [tunnel]
// relay has neither.
func TestRelayStatus(t *testing.T) {
	pki := t.TempDir()
	_, ca := writePKI(t, pki)
	addr, sessions := fakeRelay(t, pki, ca)
	h := newFileHarness(t, quietGateway+fmt.Sprintf("[tunnel]\nrelay = %q\ncert = %q\nkey = %q\nca = %q\n",
		addr, filepath.Join(pki, "gw.crt"), filepath.Join(pki, "gw.key"), filepath.Join(pki, "ca.crt")))
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
