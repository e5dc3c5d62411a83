package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSetResolver: the agent points systemd-resolved at its DNS for the
// zone (the TUN link's DNS server, the zone as its routing-only domain, no
// default route), and says what to set by hand when systemd-resolved does
// not run or refuses.
func TestSetResolver(t *testing.T) {
	all := []string{
		"dns ztagent0 10.100.0.1",
		"domain ztagent0 ~ztna.internal",
		"default-route ztagent0 false",
	}
	for _, tc := range []struct {
		name     string
		running  bool
		fail     string   // the command that fails
		wantRun  []string // commands run
		wantLog  string
		wantWarn bool
	}{
		{name: "no systemd-resolved", running: false, wantRun: nil,
			wantLog: "DNS: the host's resolver is not set: not here; point the host's resolver for ztna.internal at 10.100.0.1 (dnsmasq: server=/ztna.internal/10.100.0.1)"},
		{name: "set", running: true, wantRun: all, wantLog: "DNS: systemd-resolved sends the zone's queries to the agent"},
		{name: "dns refused", running: true, fail: all[0], wantRun: all[:1], wantWarn: true,
			wantLog: `DNS: systemd-resolved refused the zone's settings; point the host's resolver for ztna.internal at 10.100.0.1`},
		{name: "domain refused", running: true, fail: all[1], wantRun: all[:2], wantWarn: true,
			wantLog: `command="resolvectl domain ztagent0 ~ztna.internal" err="exit status 1: Access denied"`},
		{name: "an old resolvectl without default-route", running: true, fail: all[2], wantRun: all,
			wantLog: "DNS: systemd-resolved sends the zone's queries to the agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			var ran []string
			h := resolverHost{
				running: func() (bool, string) { return tc.running, "not here" },
				run: func(_ context.Context, args ...string) error {
					cmd := strings.Join(args, " ")
					ran = append(ran, cmd)
					if cmd == tc.fail {
						return errors.New("exit status 1: Access denied")
					}
					return nil
				},
			}
			setResolver(context.Background(), log, h, "ztagent0", netip.MustParseAddr("10.100.0.1"), "ztna.internal.")
			if !slices.Equal(ran, tc.wantRun) {
				t.Errorf("ran %q, want %q", ran, tc.wantRun)
			}
			out := logs.String()
			if !strings.Contains(out, tc.wantLog) || strings.Contains(out, "level=WARN") != tc.wantWarn {
				t.Errorf("log %q, want one with %q (warning: %v)", out, tc.wantLog, tc.wantWarn)
			}
		})
	}
}

// TestSystemResolvedRun runs resolvectl as the agent does, here a script
// in its place on PATH: its arguments reach it, and its output comes back
// with a failure.
func TestSystemResolvedRun(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho \"$@\" >> " + filepath.Join(dir, "args") + "\n[ \"$1\" = dns ] || { echo 'Failed to set DNS configuration: Access denied' >&2; exit 1; }\n"
	if err := os.WriteFile(filepath.Join(dir, "resolvectl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	h := systemResolved()
	if err := h.run(context.Background(), "dns", "ztagent0", "10.100.0.1"); err != nil {
		t.Fatalf("dns: %v", err)
	}
	err := h.run(context.Background(), "domain", "ztagent0", "~ztna.internal")
	if err == nil || !strings.Contains(err.Error(), "exit status 1: Failed to set DNS configuration: Access denied") {
		t.Fatalf("domain: %v", err)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	if string(args) != "dns ztagent0 10.100.0.1\ndomain ztagent0 ~ztna.internal\n" {
		t.Errorf("resolvectl got %q", args)
	}
}

// TestResolvedHere: systemd-resolved is configured only where it runs,
// with resolvectl, from its own network namespace (from another, a link
// index would name another link of the host).
func TestResolvedHere(t *testing.T) {
	dir := t.TempDir()
	found := func(string) (string, error) { return "/usr/bin/resolvectl", nil }
	missing := func(string) (string, error) { return "", exec.ErrNotFound }
	ns := func(self, init string) func(string) (string, error) {
		return func(p string) (string, error) {
			switch p {
			case "/proc/self/ns/net":
				return self, nil
			case "/proc/1/ns/net":
				if init == "" {
					return "", os.ErrPermission
				}
				return init, nil
			}
			return "", os.ErrNotExist
		}
	}
	for _, tc := range []struct {
		name     string
		dir      string
		lookPath func(string) (string, error)
		readlink func(string) (string, error)
		ok       bool
		why      string
	}{
		{"runs here", dir, found, ns("net:[4026531840]", "net:[4026531840]"), true, ""},
		{"not running", filepath.Join(dir, "none"), found, ns("a", "a"), false, "systemd-resolved is not running"},
		{"no resolvectl", dir, missing, ns("a", "a"), false, "resolvectl is not installed"},
		{"another namespace", dir, found, ns("net:[4026532500]", "net:[4026531840]"), false, "another network namespace"},
		{"PID 1's namespace unreadable", dir, found, ns("net:[4026531840]", ""), false, "cannot tell systemd-resolved's network namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := resolvedHere(tc.dir, os.Stat, tc.lookPath, tc.readlink)
			if ok != tc.ok || !strings.Contains(why, tc.why) {
				t.Errorf("got %v %q, want %v %q", ok, why, tc.ok, tc.why)
			}
		})
	}
}
