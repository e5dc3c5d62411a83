package gateway

import (
	"bytes"
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

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// tunnelFilesSection is a [tunnel] with a direct listener on loopback
// naming the files of a certificate of ca for req, written into dir, and
// of ca's certificate (a copy of its own in dir).
func tunnelFilesSection(t *testing.T, dir string, ca *tunnel.CA, req tunnel.IssueRequest, extra string) (string, tunnel.Files) {
	t.Helper()
	crt, key, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	f := tunnel.Files{Cert: filepath.Join(dir, "gw.crt"), Key: filepath.Join(dir, "gw.key"), CA: filepath.Join(dir, "ca.crt")}
	for path, b := range map[string][]byte{f.Cert: crt, f.Key: key, f.CA: ca.CertPEM()} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("[tunnel]\nlisten = \"127.0.0.1:0\"\ncert = %q\nkey = %q\nca = %q\n%s", f.Cert, f.Key, f.CA, extra), f
}

// TestRestartRequiredTunnelFiles: the paths of [tunnel] cert, key and ca
// are applied live while the tunnel runs and stays on in the same mode;
// with insecure_allow_unauthenticated, or for a tunnel turned on, they wait
// for the restart. After liveSettings, what still differs from the file is
// exactly what restartRequired named (as TestRestartRequired).
func TestRestartRequiredTunnelFiles(t *testing.T) {
	const head = "[gateway]\nstate_dir = \"/tmp/x\"\n" + twoTenants
	ca, err := tunnel.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gw := tunnel.IssueRequest{Tenant: "infra", Role: tunnel.RoleGateway, Name: "gw1", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	section, _ := tunnelFilesSection(t, t.TempDir(), ca, gw, "")
	moved, _ := tunnelFilesSection(t, t.TempDir(), ca, gw, "")
	movedInsecure, _ := tunnelFilesSection(t, t.TempDir(), ca, gw, "insecure_allow_unauthenticated = true\n")
	withTunnel, err := conf.ParseGateway("a.toml", []byte(head+section))
	if err != nil {
		t.Fatal(err)
	}
	without, err := conf.ParseGateway("a.toml", []byte(head))
	if err != nil {
		t.Fatal(err)
	}
	const relayA, relayB = "relay = \"127.0.0.1:4433\"\n", "relay = \"127.0.0.1:4434\"\n"
	withRelay, err := conf.ParseGateway("a.toml", []byte(head+section+relayA))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		cur        string // "with" or "without" a tunnel
		file       string
		want, live []string
	}{
		{"the same files", "with", head + section, []string{}, nil},
		{"other files", "with", head + moved, []string{}, []string{"tunnel.cert", "tunnel.key", "tunnel.ca"}},
		{"other files, insecure", "with", head + movedInsecure,
			[]string{"tunnel.cert", "tunnel.key", "tunnel.ca", "tunnel.insecure_allow_unauthenticated"}, nil},
		{"a tunnel turned on", "without", head + moved, []string{"tunnel.listen", "tunnel.cert", "tunnel.key", "tunnel.ca"}, nil},
		{"a tunnel turned off, files kept", "with", head + strings.Replace(section, "listen = \"127.0.0.1:0\"\n", "", 1),
			[]string{"tunnel.listen"}, nil},
		{"other files, the same relay", "relay", head + moved + relayA, []string{}, []string{"tunnel.cert", "tunnel.key", "tunnel.ca"}},
		{"other files, another relay", "relay", head + moved + relayB,
			[]string{"tunnel.relay", "tunnel.cert", "tunnel.key", "tunnel.ca"}, nil},
		{"other files, the relay's other name", "relay", head + moved + relayA + "server_name = \"relay2.test\"\n",
			[]string{"tunnel.server_name", "tunnel.cert", "tunnel.key", "tunnel.ca"}, nil},
		{"other files, the relay dropped", "relay", head + moved,
			[]string{"tun", "tunnel.relay", "tunnel.server_name", "tunnel.cert", "tunnel.key", "tunnel.ca"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := withTunnel
			switch tc.cur {
			case "without":
				cur = without
			case "relay":
				cur = withRelay
			}
			next, err := conf.ParseGateway("a.toml", []byte(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			got := restartRequired(cur, next)
			if !slices.Equal(got, tc.want) {
				t.Errorf("restart required %q, want %q", got, tc.want)
			}
			if live := tunnelFiles(cur, next); !slices.Equal(live, tc.live) {
				t.Errorf("tunnel files applied %q, want %q", live, tc.live)
			}
			if left := conf.ChangedKeys(liveSettings(cur, next), next); !slices.Equal(left, got) {
				t.Errorf("after the live settings %q differ, want %q", left, got)
			}
		})
	}
}

// TestReloadTunnelFiles: a reload whose file names other [tunnel] cert,
// key and ca files switches the running tunnel to them: they are not
// named for a restart, the reload's difference names them, and a new
// direct session sees the new certificate. Files that fail the checks of
// the start (an agent's certificate) fail the whole reload as an invalid
// configuration: a service added with them is not, and the files in use
// stay.
func TestReloadTunnelFiles(t *testing.T) {
	web := startLineEcho(t, "web")
	dir := t.TempDir()
	ca, err := tunnel.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gw := tunnel.IssueRequest{Tenant: "infra", Role: tunnel.RoleGateway, Name: "gw1", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	section, files := tunnelFilesSection(t, dir, ca, gw, "")
	var logs syncLog
	h := newFileHarnessLog(t, reloadConfig(web, `"acme"`, section), slog.New(slog.NewTextHandler(&logs, nil)))
	if got := h.gw.creds.Files(); got != files {
		t.Fatalf("files in use %+v, want %+v", got, files)
	}

	// An agent's certificate: the reload fails whole.
	agentReq := tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"}
	bad, _ := tunnelFilesSection(t, t.TempDir(), ca, agentReq, "")
	h.write(t, reloadConfig(web, `"acme"`, bad+webService(web)))
	_, err = h.gw.Reload()
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "tunnel.cert, tunnel.key, tunnel.ca: tunnel: load credentials") ||
		!strings.Contains(err.Error(), "not of a gateway") {
		t.Fatalf("reload to an agent's certificate: %v, want an invalid configuration naming the keys", err)
	}
	if got := h.gw.creds.Files(); got != files {
		t.Fatalf("a failed reload switched to %+v", got)
	}
	if _, ok := h.gw.tbl.Load().byName["web"]; ok {
		t.Fatal("a failed reload added the service that came with the files")
	}

	gw.Name = "gw1-moved"
	moved, movedFiles := tunnelFilesSection(t, t.TempDir(), ca, gw, "")
	h.write(t, reloadConfig(web, `"acme"`, moved))
	d, err := h.gw.Reload()
	if err != nil {
		t.Fatal(err)
	}
	if len(d.RestartRequired) != 0 {
		t.Errorf("restart_required %q, want none", d.RestartRequired)
	}
	// The file watcher may have applied the same file first.
	if want := []string{"tunnel.cert", "tunnel.key", "tunnel.ca"}; d.TunnelFiles != nil && !slices.Equal(d.TunnelFiles, want) {
		t.Errorf("tunnel_files %q, want %q", d.TunnelFiles, want)
	}
	if got := h.gw.creds.Files(); got != movedFiles {
		t.Fatalf("files in use %+v, want %+v", got, movedFiles)
	}
	out := logs.String()
	if strings.Contains(out, "restart to apply") || !strings.Contains(out, `tunnel_files="[tunnel.cert tunnel.key tunnel.ca]"`) {
		t.Errorf("want the switch logged, and no restart asked for:\n%s", out)
	}

	agentDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(agentDir, "ca.crt"), ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	creds := agentCreds(t, ca, agentDir, agentReq)
	s := h.dialDirectAgent(t, creds)
	if got := s.Peer().Name; got != "gw1-moved" {
		t.Fatalf("the gateway presented %q's certificate after the reload, want gw1-moved's", got)
	}
}

// TestLogDiffEmptyLists: a JSON log shows a diff's empty lists as [], not
// null (tunnel_files of a reload that switched no file was null).
func TestLogDiffEmptyLists(t *testing.T) {
	var out bytes.Buffer
	g := &Gateway{log: slog.New(slog.NewJSONHandler(&out, nil))}
	g.logDiff("reloaded", Diff{})
	if l := out.String(); strings.Contains(l, "null") ||
		!strings.Contains(l, `"added":[],"removed":[],"changed":[],"tenants_changed":false,"tunnel_files":[],"restart_required":[]`) {
		t.Errorf("got %s", l)
	}
}
