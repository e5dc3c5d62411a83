package gateway

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// TestReloadChecksTunnelFilesWaitingForRestart: [tunnel] files that wait
// for the restart (with a change of insecure_allow_unauthenticated, or
// with a tunnel turned on) are loaded and checked at the reload as the
// start will load them: an agent's certificate fails the reload as an
// invalid configuration naming the keys, and the files in use stay. Before,
// the reload named them for the restart, which then refused to start ("not
// of a gateway"), as the relay and the agent did.
func TestReloadChecksTunnelFilesWaitingForRestart(t *testing.T) {
	web := startLineEcho(t, "web")
	ca, err := tunnel.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gw := tunnel.IssueRequest{Tenant: "infra", Role: tunnel.RoleGateway, Name: "gw1", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	agent := tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"}
	const insecure = "insecure_allow_unauthenticated = true\n"
	refused := func(t *testing.T, h *fileHarness, section, what string) {
		t.Helper()
		h.write(t, reloadConfig(web, `"acme"`, section))
		_, err := h.gw.Reload()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "tunnel.cert, tunnel.key, tunnel.ca: tunnel: load credentials") ||
			!strings.Contains(err.Error(), "not of a gateway") {
			t.Fatalf("%s: reload %v, want an invalid configuration naming the keys", what, err)
		}
	}

	t.Run("insecure changed", func(t *testing.T) {
		section, files := tunnelFilesSection(t, t.TempDir(), ca, gw, "")
		h := newFileHarnessLog(t, reloadConfig(web, `"acme"`, section), slog.New(slog.DiscardHandler))
		bad, _ := tunnelFilesSection(t, t.TempDir(), ca, agent, insecure)
		refused(t, h, bad, "an agent's certificate with insecure_allow_unauthenticated")

		next := gw
		next.Name = "gw1-next"
		good, _ := tunnelFilesSection(t, t.TempDir(), ca, next, insecure)
		h.write(t, reloadConfig(web, `"acme"`, good))
		d, err := h.gw.Reload()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"tunnel.cert", "tunnel.key", "tunnel.ca", "tunnel.insecure_allow_unauthenticated"} {
			if !slices.Contains(d.RestartRequired, k) {
				t.Errorf("restart_required %q, want %s among them", d.RestartRequired, k)
			}
		}
		if got := h.gw.creds.Files(); got != files {
			t.Fatalf("files in use %+v, want %+v: those waiting for the restart were switched to", got, files)
		}
	})

	t.Run("tunnel turned on", func(t *testing.T) {
		h := newFileHarnessLog(t, reloadConfig(web, `"acme"`, ""), slog.New(slog.DiscardHandler))
		bad, _ := tunnelFilesSection(t, t.TempDir(), ca, agent, "")
		refused(t, h, bad, "an agent's certificate with a new tunnel.listen")
	})
}
