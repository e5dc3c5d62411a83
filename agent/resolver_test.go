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
// with resolvectl, from the host's network namespace.
func TestResolvedHere(t *testing.T) {
	dir := t.TempDir()
	found := func(string) (string, error) { return "/usr/bin/resolvectl", nil }
	missing := func(string) (string, error) { return "", exec.ErrNotFound }
	host := func() (bool, string) { return true, "" }
	elsewhere := func() (bool, string) { return false, "another namespace" }
	for _, tc := range []struct {
		name     string
		dir      string
		lookPath func(string) (string, error)
		inHost   func() (bool, string)
		ok       bool
		why      string
	}{
		{"runs here", dir, found, host, true, ""},
		{"not running", filepath.Join(dir, "none"), found, host, false, "systemd-resolved is not running"},
		{"no resolvectl", dir, missing, host, false, "resolvectl is not installed"},
		{"another namespace", dir, found, elsewhere, false, "another namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := resolvedHere(tc.dir, tc.lookPath, tc.inHost)
			if ok != tc.ok || !strings.Contains(why, tc.why) {
				t.Errorf("got %v %q, want %v %q", ok, why, tc.ok, tc.why)
			}
		})
	}
}

// TestNetnsCheck: where PID 1's network namespace can be read the agent's
// is compared with it; where it cannot (an unprivileged agent), the
// agent's is taken for the host's unless ip netns named it.
func TestNetnsCheck(t *testing.T) {
	denied := nsResult{err: os.ErrPermission}
	named := func() []uint64 { return []uint64{4026532245, 4026532300} }
	for _, tc := range []struct {
		name       string
		self, init nsResult
		ok         bool
		why        string
	}{
		{"root, the host's", nsResult{ino: 4026531833}, nsResult{ino: 4026531833}, true, ""},
		{"root, another", nsResult{ino: 4026532245}, nsResult{ino: 4026531833}, false, "another network namespace than systemd-resolved"},
		{"root, an unnamed other", nsResult{ino: 4026532999}, nsResult{ino: 4026531833}, false, "another network namespace"},
		{"unprivileged, the host's", nsResult{ino: 4026531833}, denied, true, ""},
		{"unprivileged, in ip netns", nsResult{ino: 4026532300}, denied, false, "a network namespace of ip netns"},
		{"own namespace unreadable", nsResult{err: os.ErrNotExist}, nsResult{ino: 1}, false, "cannot tell the agent's network namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := netnsCheck(tc.self, tc.init, named)
			if ok != tc.ok || !strings.Contains(why, tc.why) {
				t.Errorf("got %v %q, want %v %q", ok, why, tc.ok, tc.why)
			}
		})
	}
}

// TestHostNetnsHere: this test's own process, in whatever namespace it
// runs, gets an answer that agrees with /proc (run as root in a namespace
// of ip netns, the integration tests' agents are told apart).
func TestHostNetnsHere(t *testing.T) {
	self, init := nsInode("/proc/self/ns/net"), nsInode("/proc/1/ns/net")
	if self.err != nil {
		t.Skip(self.err)
	}
	ok, why := hostNetns()
	if init.err == nil && ok != (self.ino == init.ino) {
		t.Errorf("hostNetns() = %v %q; /proc says self %d, PID 1 %d", ok, why, self.ino, init.ino)
	}
}
