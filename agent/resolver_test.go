package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// fakeResolved is systemd-resolved as resolvectl shows it to the agent:
// a link's DNS servers and domains, set and read back. It records each
// command; those refuse matches fail.
type fakeResolved struct {
	mu           sync.Mutex
	ran          []string
	refuse       func(cmd string) bool
	dns, domains string
}

func (f *fakeResolved) host(running bool) resolverHost {
	return resolverHost{
		running: func() (bool, string) { return running, "not here" },
		run: func(_ context.Context, args ...string) (string, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			cmd := strings.Join(args, " ")
			f.ran = append(f.ran, cmd)
			if f.refuse != nil && f.refuse(cmd) {
				return "", errors.New("exit status 1: Access denied")
			}
			if len(args) < 2 {
				return "", nil
			}
			var field *string
			switch args[0] {
			case "dns":
				field = &f.dns
			case "domain":
				field = &f.domains
			default:
				return "", nil
			}
			if len(args) == 2 {
				return "Link 7 (" + args[1] + "): " + *field, nil
			}
			*field = strings.Join(args[2:], " ")
			return "", nil
		},
	}
}

// take returns the commands run since the last take.
func (f *fakeResolved) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ran := f.ran
	f.ran = nil
	return ran
}

// set changes the fake under its lock.
func (f *fakeResolved) set(change func(f *fakeResolved)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

var (
	testPools = [2]netip.Prefix{netip.MustParsePrefix("10.100.0.0/24"), netip.MustParsePrefix("fd00:ab::/64")}
	rev6      = "~0.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa"
	optional  = []string{"default-route ztagent0 false", "dnssec ztagent0 no", "dnsovertls ztagent0 no",
		"llmnr ztagent0 no", "mdns ztagent0 no", "flush-caches"}
)

// TestResolverApply: the agent points systemd-resolved at its DNS for the
// zone and the VIPs' reverse zones (the TUN link's DNS server, the zones
// as its routing-only domains, no default route, nothing the zone's server
// cannot answer: DNSSEC, TLS, LLMNR, mDNS), and says what to set by hand
// when systemd-resolved does not run or refuses.
func TestResolverApply(t *testing.T) {
	setDNS := "dns ztagent0 10.100.0.1"
	setDomains := "domain ztagent0 ~ztna.internal ~0.100.10.in-addr.arpa " + rev6
	zoneOnly := "domain ztagent0 ~ztna.internal"
	all := append([]string{setDNS, setDomains}, optional...)
	for _, tc := range []struct {
		name     string
		running  bool
		pools    [2]netip.Prefix
		refuse   func(cmd string) bool
		wantRun  []string
		wantLog  string
		wantWarn bool
		state    string // of the status after
	}{
		{name: "no systemd-resolved", running: false, wantRun: nil, state: "not_set",
			wantLog: "DNS: the host's resolver is not set: not here; point the host's resolver for ztna.internal at 10.100.0.1 (dnsmasq: server=/ztna.internal/10.100.0.1)"},
		{name: "set", running: true, wantRun: all, state: "set",
			wantLog: `msg="DNS: systemd-resolved sends the zone's queries to the agent" link=ztagent0 zone=ztna.internal server=10.100.0.1 reverse="[0.100.10.in-addr.arpa 0.0.0.0.0.0.0.0.b.a.0.0.0.0.d.f.ip6.arpa]"`},
		{name: "dns refused", running: true, refuse: func(c string) bool { return c == setDNS }, wantRun: all[:1], wantWarn: true, state: "refused",
			wantLog: `DNS: systemd-resolved refused the zone's settings; point the host's resolver for ztna.internal at 10.100.0.1`},
		{name: "domains refused", running: true, refuse: func(c string) bool { return strings.HasPrefix(c, "domain") },
			wantRun: []string{setDNS, setDomains, zoneOnly}, wantWarn: true, state: "refused",
			wantLog: `command="resolvectl domain ztagent0 ~ztna.internal" err="exit status 1: Access denied"`},
		{name: "reverse zones refused (an older systemd-resolved's limit)", running: true,
			refuse:  func(c string) bool { return strings.Contains(c, "arpa") },
			wantRun: append([]string{setDNS, setDomains, zoneOnly}, optional...), state: "set",
			wantLog: `the agent" link=ztagent0 zone=ztna.internal server=10.100.0.1 reverse=[]`},
		{name: "an old resolvectl without default-route", running: true, refuse: func(c string) bool { return c == optional[0] },
			wantRun: all, state: "set", wantLog: "DNS: systemd-resolved sends the zone's queries to the agent"},
		{name: "too many reverse zones for a /17; no pool6", running: true,
			pools:   [2]netip.Prefix{netip.MustParsePrefix("10.100.0.0/17")},
			wantRun: append([]string{setDNS, zoneOnly}, optional...), state: "set", wantLog: "reverse=[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			f := &fakeResolved{refuse: tc.refuse}
			k, st := newResolverKeeper(log, f.host(tc.running), "ztagent0", netip.MustParseAddr("10.100.0.1"), "ztna.internal.")
			if (k != nil) != tc.running {
				t.Fatalf("keeper %v, systemd-resolved running %v", k, tc.running)
			}
			if k != nil {
				pools := tc.pools
				if pools == [2]netip.Prefix{} {
					pools = testPools
				}
				k.apply(context.Background(), pools)
				st = k.Status()
			}
			if st.State != tc.state || st.State != "set" && !strings.Contains(st.Detail, "point the host's resolver for ztna.internal at 10.100.0.1") {
				t.Errorf("status %+v, want state %s and what to set by hand", st, tc.state)
			}
			if ran := f.take(); !slices.Equal(ran, tc.wantRun) {
				t.Errorf("ran %q,\nwant %q", ran, tc.wantRun)
			}
			out := logs.String()
			if !strings.Contains(out, tc.wantLog) || strings.Contains(out, "level=WARN") != tc.wantWarn {
				t.Errorf("log %q, want one with %q (warning: %v)", out, tc.wantLog, tc.wantWarn)
			}
		})
	}
}

// TestResolverKeeper: the keeper checks the settings when woken and sets
// them again when they are gone; it sets other reverse zones when the
// pools move; a refusal is a warning once, then retried at each wake-up
// without another; and its goroutine ends with its context.
func TestResolverKeeper(t *testing.T) {
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := &fakeResolved{}
	k, _ := newResolverKeeper(log, f.host(true), "ztagent0", netip.MustParseAddr("10.100.0.1"), "ztna.internal")
	ctx := context.Background()
	k.pools = testPools
	k.apply(ctx, k.pools)
	f.take()
	read := []string{"dns ztagent0", "domain ztagent0"}
	setAll := func(domains string) []string {
		return append([]string{"dns ztagent0 10.100.0.1", "domain ztagent0 ~ztna.internal " + domains}, optional...)
	}

	steps := []struct {
		name   string
		before func()
		want   []string
		log    string // in the log since the step before
	}{
		{name: "in force: read, nothing set", want: read},
		{name: "the pools move: the new reverse zones",
			before: func() { k.setPools(netip.MustParsePrefix("10.200.0.0/16"), netip.Prefix{}) },
			want:   setAll("~200.10.in-addr.arpa"), log: `reverse=[200.10.in-addr.arpa]`},
		{name: "another program reset the link: set again",
			before: func() { f.set(func(f *fakeResolved) { f.dns, f.domains = "", "" }) },
			want:   append(read, setAll("~200.10.in-addr.arpa")...), log: "systemd-resolved lost the zone's settings on the link"},
		{name: "only the domains reset: set again",
			before: func() { f.set(func(f *fakeResolved) { f.domains = "~corp.example" }) },
			want:   append(read, setAll("~200.10.in-addr.arpa")...), log: "systemd-resolved lost the zone's settings on the link"},
		{name: "settings unreadable: nothing set",
			before: func() { f.set(func(f *fakeResolved) { f.refuse = func(c string) bool { return c == "dns ztagent0" } }) },
			want:   read[:1], log: "DNS: cannot read systemd-resolved's settings"},
		{name: "reset and refused: a warning",
			before: func() {
				f.set(func(f *fakeResolved) {
					f.dns, f.refuse = "", func(c string) bool { return strings.HasPrefix(c, "dns ztagent0 ") }
				})
			},
			want: append(read, "dns ztagent0 10.100.0.1"), log: "level=WARN"},
		{name: "still refused: retried, no second warning", want: []string{"dns ztagent0 10.100.0.1"},
			log: `level=DEBUG msg="DNS: systemd-resolved refused the zone's settings`},
		{name: "accepted again", before: func() { f.set(func(f *fakeResolved) { f.refuse = nil }) },
			want: setAll("~200.10.in-addr.arpa"), log: "sends the zone's queries to the agent"},
	}
	seen := 0
	for _, st := range steps {
		if st.before != nil {
			st.before()
		}
		k.update(ctx)
		if ran := f.take(); !slices.Equal(ran, st.want) {
			t.Errorf("%s: ran %q,\nwant %q", st.name, ran, st.want)
		}
		out := logs.String()
		if st.log != "" && !strings.Contains(out[seen:], st.log) {
			t.Errorf("%s: log %q, want %q", st.name, out[seen:], st.log)
		}
		if st.log != "level=WARN" && strings.Contains(out[seen:], "level=WARN") {
			t.Errorf("%s: a warning: %q", st.name, out[seen:])
		}
		seen = len(out)
	}

	// The goroutine: a wake-up after a reset sets the link again.
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		k.run(ctx)
		close(done)
	}()
	f.set(func(f *fakeResolved) { f.dns = "" })
	k.wake()
	waitFor(t, "the settings set again", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.dns == "10.100.0.1"
	})
	cancel()
	<-done
}

// TestResolverFollowsAgent: an agent points the host's resolver at its
// DNS at start, routes the reverse zones of the pools its server pushes,
// and after a reconnection sets the link again when another program reset
// it meanwhile.
func TestResolverFollowsAgent(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) {
		d := directoryOf(true)
		d.Pool, d.Pool6 = netip.MustParsePrefix("10.200.0.0/16"), netip.MustParsePrefix("fd00:cd::/64")
		d.Services = []tunnel.DirectoryService{{Name: "web", VIP: netip.MustParseAddr("10.200.0.5"), Healthy: true,
			Ports: []tunnel.PortInfo{{Protocol: "tcp", Port: 80}}}}
		s.Send(d)
	})
	f := &fakeResolved{}
	h := f.host(true)
	cfg := agentConfig(p, relay.addr())
	cfg.TUN.Name, cfg.DNS.SetResolver = "ztagent0", true
	var logs logBuffer
	a, _ := runAgentOpts(t, cfg, slog.New(slog.NewTextHandler(&logs, nil)), Options{resolver: &h})
	domains := func() string {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.domains
	}
	waitFor(t, "the pushed pools' reverse zones", func() bool {
		return domains() == "~ztna.internal ~200.10.in-addr.arpa ~0.0.0.0.0.0.0.0.d.c.0.0.0.0.d.f.ip6.arpa"
	})
	if ran := f.take(); len(ran) == 0 || ran[1] != "domain ztagent0 ~ztna.internal ~0.100.10.in-addr.arpa" {
		t.Errorf("at start: %q, want the configured pool's reverse zone", ran)
	}

	want := ResolverStatus{State: "set", Link: "ztagent0",
		Domains: []string{"ztna.internal", "200.10.in-addr.arpa", "0.0.0.0.0.0.0.0.d.c.0.0.0.0.d.f.ip6.arpa"}}
	if st := a.Status().DNS; !reflect.DeepEqual(st, want) {
		t.Errorf("status %+v, want %+v", st, want)
	}

	f.set(func(f *fakeResolved) { f.dns, f.domains = "", "" })
	relay.session().Close("test: reconnect")
	waitFor(t, "the link set again after the reconnection", func() bool { return domains() != "" })
	waitFor(t, "the log line", func() bool { return strings.Contains(logs.String(), "systemd-resolved lost the zone's settings") })
}

// TestResolverStatusWithoutKeeper: an agent that leaves the host's
// resolver alone says why.
func TestResolverStatusWithoutKeeper(t *testing.T) {
	off := &Agent{cfg: &conf.Agent{DNS: conf.DNS{SetResolver: false}}}
	if st := off.resolverStatus(); st.State != "off" {
		t.Errorf("dns.set_resolver = false: %+v", st)
	}
	notHere := &Agent{cfg: &conf.Agent{DNS: conf.DNS{SetResolver: true}},
		resolverNote: ResolverStatus{State: "not_set", Detail: "resolvectl is not installed; point …"}}
	if st := notHere.resolverStatus(); !reflect.DeepEqual(st, notHere.resolverNote) {
		t.Errorf("no systemd-resolved: %+v", st)
	}
	if st := (&Agent{cfg: &conf.Agent{DNS: conf.DNS{SetResolver: true}}}).resolverStatus(); st.State != "not_set" {
		t.Errorf("no TUN device: %+v", st)
	}
}

// TestLinkHas reads resolvectl's line for a link as its versions print it.
func TestLinkHas(t *testing.T) {
	for _, tc := range []struct {
		out, value string
		want       bool
	}{
		{"Link 7 (ztagent0): 10.100.0.1", "10.100.0.1", true},
		{"Link 7 (ztagent0): 192.0.2.1 10.100.0.1:53", "10.100.0.1", true},
		{"Link 7 (ztagent0): 10.100.0.1#ns.ztna.internal", "10.100.0.1", true},
		{"Link 7 (ztagent0): fd00::1%ztagent0", "fd00::1", true},
		{"Link 7 (ztagent0): 10.100.0.10", "10.100.0.1", false},
		{"Link 7 (ztagent0):", "10.100.0.1", false},
		{"", "10.100.0.1", false},
		{"Link 7 (ztagent0): ~ztna.internal ~0.100.10.in-addr.arpa", "~ztna.internal", true},
		{"Link 7 (ztagent0): ztna.internal", "~ztna.internal", false},
		{"Link 7 (ztagent0): ~corp.example", "~ztna.internal", false},
	} {
		if got := linkHas(tc.out, tc.value); got != tc.want {
			t.Errorf("linkHas(%q, %q) = %v, want %v", tc.out, tc.value, got, tc.want)
		}
	}
}

// TestSystemResolvedRun runs resolvectl as the agent does, here a script
// in its place on PATH: its arguments reach it, and its output comes back
// with a failure.
func TestSystemResolvedRun(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho \"$@\" >> " + filepath.Join(dir, "args") + "\n[ \"$1\" = dns ] || { echo 'Failed to set DNS configuration: Access denied' >&2; exit 1; }\necho \"Link 7 ($2): $3\"\n"
	if err := os.WriteFile(filepath.Join(dir, "resolvectl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	h := systemResolved()
	if out, err := h.run(context.Background(), "dns", "ztagent0", "10.100.0.1"); err != nil || out != "Link 7 (ztagent0): 10.100.0.1" {
		t.Fatalf("dns: %q %v", out, err)
	}
	_, err := h.run(context.Background(), "domain", "ztagent0", "~ztna.internal")
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
