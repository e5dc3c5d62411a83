package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// resolverTimeout bounds each resolvectl command: it talks to
// systemd-resolved over D-Bus, which answers at once when it runs.
const resolverTimeout = 5 * time.Second

// resolverHost is the host's systemd-resolved as the agent configures it
// (tests replace it).
type resolverHost struct {
	// running reports whether systemd-resolved runs here and resolvectl
	// can reach it; why says what is missing when it does not.
	running func() (ok bool, why string)
	// run runs resolvectl with args.
	run func(ctx context.Context, args ...string) error
}

// systemResolved is the host's systemd-resolved (resolvedHere).
func systemResolved() resolverHost {
	return resolverHost{
		running: func() (bool, string) {
			return resolvedHere("/run/systemd/resolve", exec.LookPath, hostNetns)
		},
		run: func(ctx context.Context, args ...string) error {
			out, err := exec.CommandContext(ctx, "resolvectl", args...).CombinedOutput()
			if err != nil {
				if msg := strings.TrimSpace(string(bytes.ToValidUTF8(out, nil))); msg != "" {
					return fmt.Errorf("%w: %s", err, msg)
				}
				return err
			}
			return nil
		},
	}
}

// setResolver points systemd-resolved, when it runs, at the agent's DNS
// server for zone: link (the TUN) gets server as its DNS server and ~zone
// as its routing-only domain, and is no default route for other names
// (older resolvectl without default-route: routing-only domains alone keep
// the other names off the link there). The settings go with the link when
// the agent stops. Without systemd-resolved, or when it refuses, the agent
// goes on: it logs what to set instead.
func setResolver(ctx context.Context, log *slog.Logger, h resolverHost, link string, server netip.Addr, zone string) {
	zone = strings.TrimSuffix(zone, ".")
	manual := fmt.Sprintf("point the host's resolver for %s at %s (dnsmasq: server=/%s/%s)", zone, server, zone, server)
	if ok, why := h.running(); !ok {
		log.Info("DNS: the host's resolver is not set: "+why+"; "+manual, "zone", zone, "server", server.String())
		return
	}
	steps := []struct {
		args     []string
		required bool
	}{
		{[]string{"dns", link, server.String()}, true},
		{[]string{"domain", link, "~" + zone}, true},
		{[]string{"default-route", link, "false"}, false},
	}
	for _, s := range steps {
		cctx, cancel := context.WithTimeout(ctx, resolverTimeout)
		err := h.run(cctx, s.args...)
		cancel()
		if err == nil {
			continue
		}
		if s.required {
			log.Warn("DNS: systemd-resolved refused the zone's settings; "+manual,
				"command", "resolvectl "+strings.Join(s.args, " "), "err", err)
			return
		}
		log.Debug("DNS: resolvectl step skipped", "command", "resolvectl "+strings.Join(s.args, " "), "err", err)
	}
	log.Info("DNS: systemd-resolved sends the zone's queries to the agent", "link", link, "zone", zone, "server", server.String())
}

// resolvedHere reports whether the agent may configure systemd-resolved:
// it runs (its runtime directory dir exists), resolvectl is installed, and
// the agent shares its network namespace, the host's (inHost).
// resolvectl names the link by its index in the caller's namespace, and
// systemd-resolved applies it to the link of that index in its own: from
// another namespace (a container, a test's) it would configure some other
// link of the host.
func resolvedHere(dir string, lookPath func(string) (string, error), inHost func() (bool, string)) (bool, string) {
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return false, "systemd-resolved is not running (no " + dir + ")"
	}
	if _, err := lookPath("resolvectl"); err != nil {
		return false, "resolvectl is not installed"
	}
	return inHost()
}

// hostNetns reports whether the agent runs in the host's network
// namespace, PID 1's; why says what it found when not.
func hostNetns() (bool, string) {
	return netnsCheck(nsInode("/proc/self/ns/net"), nsInode("/proc/1/ns/net"), namedNetns)
}

// netnsCheck compares the agent's network namespace (self) with PID 1's
// (init) where it can read PID 1's, as root can. An agent that cannot (an
// unprivileged one under systemd, which runs in the host's) is taken to be
// in the host's unless its namespace is one that `ip netns` named (named:
// the inodes of /run/netns/*).
func netnsCheck(self, init nsResult, named func() []uint64) (bool, string) {
	if self.err != nil {
		return false, "cannot tell the agent's network namespace: " + self.err.Error()
	}
	if init.err == nil {
		if init.ino != self.ino {
			return false, "the agent runs in another network namespace than systemd-resolved"
		}
		return true, ""
	}
	if slices.Contains(named(), self.ino) {
		return false, "the agent runs in a network namespace of ip netns, not systemd-resolved's"
	}
	return true, ""
}

// nsResult is a namespace's inode, or why it could not be read.
type nsResult struct {
	ino uint64
	err error
}

// nsInode is the inode of the namespace file path.
func nsInode(path string) nsResult {
	fi, err := os.Stat(path)
	if err != nil {
		return nsResult{err: err}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nsResult{err: fmt.Errorf("%s: no inode", path)}
	}
	return nsResult{ino: st.Ino}
}

// namedNetns returns the inodes of the network namespaces `ip netns`
// named (/run/netns/*).
func namedNetns() []uint64 {
	entries, _ := os.ReadDir("/run/netns")
	var inos []uint64
	for _, e := range entries {
		if r := nsInode(filepath.Join("/run/netns", e.Name())); r.err == nil {
			inos = append(inos, r.ino)
		}
	}
	return inos
}
