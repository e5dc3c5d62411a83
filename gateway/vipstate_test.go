package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// setClock is a settable clock for the VIP hold-down (no timers).
type setClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *setClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *setClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// vipConfig has the echo service (tcp 7, pinned to 10.100.0.7) and the
// services of extra, with a one-minute VIP hold-down and a drain timeout
// that outlives the tests.
func vipConfig(state string, echoPort int, extra string) string {
	return fmt.Sprintf(`
[gateway]
state_dir = %q
drain_timeout = "1h"
vip_hold_down = "1m"
[api]
listen = "off"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
`, state) + tcpService("echo", `"acme"`, "10.100.0.7", "127.0.0.1", echoPort) + extra
}

// pinnedService is a service name pinned to vip, tcp 7 to port.
func pinnedService(name, vip string, port int) string {
	return tcpService(name, `"acme"`, vip, "127.0.0.1", port)
}

// startVIPGateway creates and starts a gateway from the configuration in
// path, on the given clock; it returns the error of New or Start.
func startVIPGateway(t *testing.T, path string, clock *setClock) (*harness, error) {
	t.Helper()
	cfg, err := conf.LoadGateway(path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	client, err := netstacktest.NewClient(1420, acmeClient)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := New(cfg, Options{Device: client, Now: clock.Now}, nil)
	if err == nil {
		if err = gw.Start(); err != nil {
			gw.Close()
		}
	}
	if err != nil {
		client.Close()
		return nil, err
	}
	t.Cleanup(func() { gw.Close() })
	return &harness{gw: gw, client: client}, nil
}

func writeConfig(t *testing.T, path, config string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestStartPinOnHeldVIP: a conflict only the state shows — a pin on the
// VIP still held for a service removed in an earlier run — fails start with
// an error naming the VIP, the pin and the service it is held for; start
// succeeds once the hold-down has passed.
func TestStartPinOnHeldVIP(t *testing.T) {
	port := startLineEcho(t, "echo")
	for _, tc := range []struct {
		name    string
		advance time.Duration // between the first run and the second start
		wantErr bool
	}{
		{"within the hold-down", 30 * time.Second, true},
		{"after the hold-down", 2 * time.Minute, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			state, path := filepath.Join(dir, "state"), filepath.Join(dir, "gw.toml")
			clock := &setClock{now: time.Unix(1_800_000_000, 0)}

			// A run with web, then one without: web's VIP is held from the
			// second run's start.
			for i, extra := range []string{pinnedService("web", "10.100.0.8", port), ""} {
				writeConfig(t, path, vipConfig(state, port, extra))
				run, err := startVIPGateway(t, path, clock)
				if err != nil {
					t.Fatalf("run %d: %v", i+1, err)
				}
				if err := run.gw.Close(); err != nil {
					t.Fatal(err)
				}
				run.client.Close()
			}

			// The config alone is valid: web is gone and api pins its VIP.
			writeConfig(t, path, vipConfig(state, port, pinnedService("api", "10.100.0.8", port)))
			clock.advance(tc.advance)
			h, err := startVIPGateway(t, path, clock)
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("start after the hold-down: %v", err)
				}
				if s := h.gw.tbl.Load().lookupVIP(netip.MustParseAddr("10.100.0.8")); s == nil || s.spec.Name != "api" {
					t.Fatalf("10.100.0.8 serves %v, want api", s)
				}
				return
			}
			if err == nil {
				t.Fatal("the gateway started with a pin on a VIP held for a removed service")
			}
			if !errors.Is(err, catalog.ErrPinConflict) {
				t.Errorf("error %v, want a pin conflict", err)
			}
			for _, want := range []string{"10.100.0.8", "web", "api"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %s", err, want)
				}
			}
		})
	}
}

// TestVIPHeldWhileFlowsLive: a removed service's VIP stays held past the
// hold-down while a flow to it is alive (the gateway tells the allocator),
// and is free once the flow ended.
func TestVIPHeldWhileFlowsLive(t *testing.T) {
	echoPort, webPort := startLineEcho(t, "echo"), startLineEcho(t, "web")
	dir := t.TempDir()
	state, path := filepath.Join(dir, "state"), filepath.Join(dir, "gw.toml")
	clock := &setClock{now: time.Unix(1_800_000_000, 0)}
	writeConfig(t, path, vipConfig(state, echoPort, pinnedService("web", "10.100.0.8", webPort)))
	h, err := startVIPGateway(t, path, clock)
	if err != nil {
		t.Fatal(err)
	}
	live := h.dialLines(t, acmeClient, "10.100.0.8:7")
	if got := live.roundTrip(t, "hi"); got != "web: hi" {
		t.Fatalf("web: %q", got)
	}

	writeConfig(t, path, vipConfig(state, echoPort, ""))
	if _, err := h.gw.Reload(); err != nil {
		t.Fatalf("remove web: %v", err)
	}
	if got := live.roundTrip(t, "draining"); got != "web: draining" {
		t.Fatalf("web's flow after its removal: %q", got)
	}
	clock.advance(2 * time.Minute) // past the hold-down

	writeConfig(t, path, vipConfig(state, echoPort, pinnedService("api", "10.100.0.8", webPort)))
	_, err = h.gw.Reload()
	if !errors.Is(err, catalog.ErrPinConflict) || !strings.Contains(err.Error(), "web") {
		t.Fatalf("pin on the VIP of a removed service with a live flow: %v, want a pin conflict naming web", err)
	}

	live.c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for h.gw.vipInUse(netip.MustParseAddr("10.100.0.8")) {
		if time.Now().After(deadline) {
			t.Fatal("web's flow still listed 15s after the client closed it")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := h.gw.Reload(); err != nil {
		t.Fatalf("pin once the flow ended: %v", err)
	}
	if s := h.gw.tbl.Load().lookupVIP(netip.MustParseAddr("10.100.0.8")); s == nil || s.spec.Name != "api" {
		t.Fatalf("10.100.0.8 serves %v, want api", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := h.client.DialTCP(ctx, acmeClient, netip.MustParseAddrPort("10.100.0.8:7")); err != nil {
		t.Fatalf("dial api: %v", err)
	} else {
		c.Close()
	}
}
