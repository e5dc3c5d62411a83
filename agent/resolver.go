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
	"sync"
	"syscall"
	"time"

	"github.com/ztgate/ztgate/resolver"
)

// resolverTimeout bounds one setting of systemd-resolved, every resolvectl
// command of it: systemd-resolved answers D-Bus at once when it runs.
const resolverTimeout = 10 * time.Second

// maxReverseZones bounds the reverse zones routed to the agent: a pool
// that is not octet (nibble) aligned has one per address below the next
// label boundary (a /26 has 64). Beyond it, reverse lookups of the VIPs are
// not routed to the agent.
const maxReverseZones = 64

// resolverHost is the host's systemd-resolved as the agent configures it
// (tests replace it).
type resolverHost struct {
	// running reports whether systemd-resolved runs here and resolvectl
	// can reach it; why says what is missing when it does not.
	running func() (ok bool, why string)
	// run runs resolvectl with args and returns what it printed.
	run func(ctx context.Context, args ...string) (string, error)
}

// systemResolved is the host's systemd-resolved (resolvedHere).
func systemResolved() resolverHost {
	return resolverHost{
		running: func() (bool, string) {
			return resolvedHere("/run/systemd/resolve", exec.LookPath, hostNetns)
		},
		run: func(ctx context.Context, args ...string) (string, error) {
			out, err := exec.CommandContext(ctx, "resolvectl", args...).CombinedOutput()
			msg := strings.TrimSpace(string(bytes.ToValidUTF8(out, nil)))
			if err != nil && msg != "" {
				return "", fmt.Errorf("%w: %s", err, msg)
			}
			return msg, err
		},
	}
}

// ResolverStatus is how the host's resolver reaches the agent's DNS, as
// GET /v1/status shows it.
type ResolverStatus struct {
	// State is "set" (systemd-resolved sends Domains to the agent over
	// Link), "refused" (systemd-resolved refused them: Detail), "not_set"
	// (no systemd-resolved the agent may configure: Detail says why and
	// what to set instead) or "off" (dns.set_resolver = false).
	State   string   `json:"state"`
	Link    string   `json:"link,omitempty"`
	Domains []string `json:"domains,omitempty"` // routing-only, without "~"
	Detail  string   `json:"detail,omitempty"`
}

// resolverKeeper points systemd-resolved at the agent's DNS server for the
// zone and the VIPs' reverse zones, and keeps it so: link (the TUN) gets
// server as its DNS server and the zones as its routing-only domains, and
// is no default route for other names. The settings go with the link when
// the agent stops; systemd-resolved keeps them across its own restarts.
// They are set again when the pools move (other reverse zones), and when
// they were lost (another program reset the link, as NetworkManager may
// when the host resumes or changes networks): checked when a session comes
// up and when the host's network changes.
type resolverKeeper struct {
	h      resolverHost
	log    *slog.Logger
	link   string
	server netip.Addr
	zone   string // without the final dot
	kick   chan struct{}

	mu     sync.Mutex
	pools  [2]netip.Prefix // wanted: the directory's pool and pool6
	status ResolverStatus  // of the last setting

	// Of the keeper's goroutine (and of Start before it runs).
	applied [2]netip.Prefix // the pools of the settings in force
	ok      bool            // the last setting succeeded
	warned  bool            // a refusal was logged at warning level
}

// newResolverKeeper returns the keeper of link's settings, or nil after
// logging what to set by hand when systemd-resolved does not run here.
func newResolverKeeper(log *slog.Logger, h resolverHost, link string, server netip.Addr, zone string) (*resolverKeeper, ResolverStatus) {
	k := &resolverKeeper{h: h, log: log, link: link, server: server, zone: strings.TrimSuffix(zone, "."), kick: make(chan struct{}, 1)}
	if ok, why := h.running(); !ok {
		detail := why + "; " + k.manual()
		log.Info("DNS: the host's resolver is not set: "+detail, "zone", k.zone, "server", server.String())
		return nil, ResolverStatus{State: "not_set", Detail: detail}
	}
	return k, ResolverStatus{}
}

// Status returns the state of the last setting.
func (k *resolverKeeper) Status() ResolverStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	st := k.status
	st.Domains = slices.Clone(st.Domains)
	return st
}

// report makes st the keeper's status.
func (k *resolverKeeper) report(st ResolverStatus) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.status = st
}

// startResolver points h at the agent's DNS server for link, and keeps it
// so, when systemd-resolved runs here (newResolverKeeper).
func (a *Agent) startResolver(h resolverHost, link string) {
	k, st := newResolverKeeper(a.log, h, link, a.gatewayAddr(), a.cfg.DNS.Zone)
	if k == nil {
		a.resolverNote = st
		return
	}
	d := a.dir.Load()
	k.pools = [2]netip.Prefix{d.pool, d.pool6}
	k.apply(a.ctx, k.pools)
	a.resolved = k
	a.wg.Go(func() { k.run(a.ctx) })
}

// manual says what to set by hand.
func (k *resolverKeeper) manual() string {
	return fmt.Sprintf("point the host's resolver for %s at %s (dnsmasq: server=/%s/%s)", k.zone, k.server, k.zone, k.server)
}

// setPools makes pool and pool6 the ones whose reverse zones the settings
// route, and wakes the keeper.
func (k *resolverKeeper) setPools(pool, pool6 netip.Prefix) {
	k.mu.Lock()
	k.pools = [2]netip.Prefix{pool, pool6}
	k.mu.Unlock()
	k.wake()
}

// wake asks the keeper to set what changed, or to check that the settings
// are still in force.
func (k *resolverKeeper) wake() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// run serves wake-ups until ctx is done.
func (k *resolverKeeper) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.kick:
		}
		k.update(ctx)
	}
}

// update sets the wanted settings when they differ from those in force or
// the last setting failed, and otherwise sets them again if they are gone.
func (k *resolverKeeper) update(ctx context.Context) {
	k.mu.Lock()
	want := k.pools
	k.mu.Unlock()
	if want != k.applied || !k.ok {
		k.apply(ctx, want)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, resolverTimeout)
	defer cancel()
	dns, err := k.h.run(ctx, "dns", k.link)
	if err != nil {
		k.log.Debug("DNS: cannot read systemd-resolved's settings", "link", k.link, "err", err)
		return
	}
	domains, err := k.h.run(ctx, "domain", k.link)
	if err != nil {
		k.log.Debug("DNS: cannot read systemd-resolved's settings", "link", k.link, "err", err)
		return
	}
	if linkHas(dns, k.server.String()) && linkHas(domains, "~"+k.zone) {
		return
	}
	k.log.Info("DNS: systemd-resolved lost the zone's settings on the link (another program reset them); setting them again", "link", k.link)
	k.apply(ctx, want)
}

// linkHas reports whether resolvectl's line for a link ("Link 7
// (ztagent0): 10.100.0.1 ...") lists value; a server may carry a port,
// an interface or a name ("10.100.0.1:53", "%ztagent0", "#name").
func linkHas(out, value string) bool {
	_, list, ok := strings.Cut(out, "): ")
	if !ok {
		return false
	}
	for _, f := range strings.Fields(list) {
		f, _, _ = strings.Cut(f, "#")
		f, _, _ = strings.Cut(f, "%")
		if f == value || strings.HasPrefix(f, value+":") {
			return true
		}
	}
	return false
}

// apply sets link's settings for pools. Without systemd-resolved's
// consent the agent goes on: it logs what to set instead (a warning the
// first time).
func (k *resolverKeeper) apply(ctx context.Context, pools [2]netip.Prefix) {
	ctx, cancel := context.WithTimeout(ctx, resolverTimeout)
	defer cancel()
	k.applied, k.ok = pools, false
	domains := []string{"~" + k.zone}
	var reverse []string
	for _, p := range pools {
		reverse = append(reverse, resolver.ReverseZones(p, maxReverseZones)...)
	}
	for _, z := range reverse {
		domains = append(domains, "~"+z)
	}
	steps := [][]string{
		{"dns", k.link, k.server.String()},
		append([]string{"domain", k.link}, domains...),
	}
	for _, args := range steps {
		_, err := k.h.run(ctx, args...)
		if err != nil && args[0] == "domain" && len(reverse) > 0 {
			// An older systemd-resolved may refuse a long list: the
			// zone alone, without reverse lookups of the VIPs.
			k.log.Debug("DNS: systemd-resolved refused the reverse zones", "command", "resolvectl "+strings.Join(args, " "), "err", err)
			args, reverse = args[:3], nil
			_, err = k.h.run(ctx, args...)
		}
		if err != nil {
			level := slog.LevelWarn
			if k.warned {
				level = slog.LevelDebug
			}
			k.warned = true
			k.log.Log(ctx, level, "DNS: systemd-resolved refused the zone's settings; "+k.manual(),
				"command", "resolvectl "+strings.Join(args, " "), "err", err)
			k.report(ResolverStatus{State: "refused", Link: k.link,
				Detail: fmt.Sprintf("resolvectl %s: %v; %s", strings.Join(args, " "), err, k.manual())})
			return
		}
	}
	// Best effort, each: older resolvectl lacks default-route (routing-only
	// domains alone keep the other names off the link there). The zone is
	// unsigned and not delegated from the root, and its server speaks
	// neither TLS nor multicast: a host that validates DNSSEC or asks for
	// DNS over TLS would refuse the agent's answers, and LLMNR and mDNS
	// queries would only be dropped in the tunnel. flush-caches forgets
	// answers from before.
	for _, args := range [][]string{
		{"default-route", k.link, "false"},
		{"dnssec", k.link, "no"},
		{"dnsovertls", k.link, "no"},
		{"llmnr", k.link, "no"},
		{"mdns", k.link, "no"},
		{"flush-caches"},
	} {
		if _, err := k.h.run(ctx, args...); err != nil {
			k.log.Debug("DNS: resolvectl step skipped", "command", "resolvectl "+strings.Join(args, " "), "err", err)
		}
	}
	k.ok = true
	k.report(ResolverStatus{State: "set", Link: k.link, Domains: append([]string{k.zone}, reverse...)})
	k.log.Info("DNS: systemd-resolved sends the zone's queries to the agent", "link", k.link, "zone", k.zone,
		"server", k.server.String(), "reverse", reverse)
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
