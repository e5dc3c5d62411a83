package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
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

// TestReloadTunnelFilesWaitForRelay: [tunnel] files that change together
// with tunnel.relay wait for the restart with it: the gateway stays with
// the relay it runs with, and the new CA (the new relay's) would be
// checked against that one. The reload names them for the restart and the
// files in use stay; files the start would refuse fail the reload all the
// same. While the relay waits, ReloadCredentials leaves the contents of
// the files in use alone too. Before, the reload switched to the new
// files at once: the recheck of the relay session against the new CA
// ended it, and the redial to the running relay was refused.
func TestReloadTunnelFilesWaitForRelay(t *testing.T) {
	pki := t.TempDir()
	_, ca := writePKI(t, pki)
	addr, sessions := fakeRelay(t, pki, ca)
	inUse := tunnel.Files{Cert: filepath.Join(pki, "gw.crt"), Key: filepath.Join(pki, "gw.key"), CA: filepath.Join(pki, "ca.crt")}
	section := func(relay string, f tunnel.Files) string {
		return fmt.Sprintf("[tunnel]\nrelay = %q\ncert = %q\nkey = %q\nca = %q\n", relay, f.Cert, f.Key, f.CA)
	}
	var logs syncLog
	h := newFileHarnessLog(t, quietGateway+twoTenants+section(addr, inUse), slog.New(slog.NewTextHandler(&logs, nil)))
	var first *tunnel.Session
	select {
	case first = <-sessions:
	case <-time.After(5 * time.Second):
		t.Fatal("the gateway did not connect to its relay")
	}

	// The new relay's CA, and certificates of it.
	other, err := tunnel.NewCA("the other relay's CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const otherRelay = "127.0.0.1:1"
	gwReq := tunnel.IssueRequest{Tenant: "infra", Role: tunnel.RoleGateway, Name: "gw1-next", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	_, bad := tunnelFilesSection(t, t.TempDir(), other, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"}, "")
	h.write(t, quietGateway+twoTenants+section(otherRelay, bad))
	if _, err := h.gw.Reload(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "tunnel.cert, tunnel.key, tunnel.ca: tunnel: load credentials") ||
		!strings.Contains(err.Error(), "not of a gateway") {
		t.Fatalf("reload to an agent's certificate with another relay: %v, want an invalid configuration naming the keys", err)
	}
	_, next := tunnelFilesSection(t, t.TempDir(), other, gwReq, "")
	h.write(t, quietGateway+twoTenants+section(otherRelay, next))
	d, err := h.gw.Reload()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"tunnel.relay", "tunnel.cert", "tunnel.key", "tunnel.ca"}; !slices.Equal(d.RestartRequired, want) || len(d.TunnelFiles) > 0 {
		t.Fatalf("restart_required %q, tunnel_files %q; want %q for the restart, none applied", d.RestartRequired, d.TunnelFiles, want)
	}
	if got := h.gw.creds.Files(); got != inUse {
		t.Fatalf("files in use %+v: those waiting for the restart with tunnel.relay were switched to", got)
	}

	// The same paths, new contents: they wait too while the relay does.
	h.write(t, quietGateway+twoTenants+section(otherRelay, inUse))
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	for from, to := range map[string]string{next.Cert: inUse.Cert, next.Key: inUse.Key, next.CA: inUse.CA} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.gw.ReloadCredentials(); err != nil {
		t.Fatal(err)
	}
	if got := h.gw.creds.Certificate().Subject.CommonName; strings.Contains(got, "gw1-next") {
		t.Fatalf("ReloadCredentials took up the contents meant for the new relay (certificate %q)", got)
	}
	if !strings.Contains(logs.String(), "tunnel credentials not re-read: tunnel.relay or tunnel.server_name changed") {
		t.Fatalf("no warning that the files wait for the restart:\n%s", logs.String())
	}
	select {
	case <-first.Done():
		t.Fatalf("the session to the running relay ended: %v", first.Err())
	default:
	}

	// The relay put back: the contents are re-read again.
	h.write(t, quietGateway+twoTenants+section(addr, inUse))
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := h.gw.ReloadCredentials(); err != nil {
		t.Fatal(err)
	}
	if got := h.gw.creds.Certificate().Subject.CommonName; !strings.Contains(got, "gw1-next") {
		t.Fatalf("after the relay was put back ReloadCredentials kept certificate %q", got)
	}
}
