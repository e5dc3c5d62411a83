package gateway

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// The configurations of TestReloadRandom: a model that renders to TOML,
// generated at random within what validates, and broken on purpose for
// the reloads that must fail.

var (
	// rrNames are the services a configuration may have.
	rrNames = []string{"chat", "db", "git", "mail", "web", "wiki"}
	// rrTenantNames are the tenants it may declare.
	rrTenantNames = []string{"acme", "globex", "initech"}
	// rrPrefixes are the source prefixes the tenants share out: a /25
	// belongs to one tenant or none, and a tenant holding both halves of
	// a /24 may write them as the /24.
	rrPrefixes = []netip.Prefix{
		netip.MustParsePrefix("198.51.100.0/25"), netip.MustParsePrefix("198.51.100.128/25"),
		netip.MustParsePrefix("203.0.113.0/25"), netip.MustParsePrefix("203.0.113.128/25"),
	}
	// rrPrefixes6 are the IPv6 twins of rrPrefixes: a tenant of a
	// configuration with IPv6 clients (rrConfig.v6) holds the twin of each
	// of its prefixes too.
	rrPrefixes6 = []netip.Prefix{
		netip.MustParsePrefix("2001:db8:1::/64"), netip.MustParsePrefix("2001:db8:2::/64"),
		netip.MustParsePrefix("2001:db8:3::/64"), netip.MustParsePrefix("2001:db8:4::/64"),
	}
	// rrPools6 are the IPv6 pools a configuration may have (tun.pool6).
	rrPools6   = []string{"fd00:ab::/120", "fd00:cd::/112"}
	rrTCPPorts = []uint16{80, 443, 7} // ports on the VIPs
	rrUDPPorts = []uint16{53, 7, 5000}
)

// rrUnmapped is a VIP port no service has, of either protocol.
const rrUnmapped = 9

// rrPort is a [[service.port]]: target indexes the backends' listening
// ports of its protocol (rrWorld).
type rrPort struct {
	proto  string
	port   uint16
	target int
	name   string
}

// rrHealth is a [service.health]. port: -1 leaves health.port out, -2
// names a port nothing listens on, else an index of the listening ports
// of the check's protocol.
type rrHealth struct {
	typ          string // "" leaves the section out
	port         int
	path         string
	expectStatus int
	send, expect string
	rise, fall   int
	timeout      string // "" = the interval; set only to break the file
}

// rrLimits are the limit keys a [[tenant]], a [[service]] and [limits]
// share; 0 leaves a key out.
type rrLimits struct {
	maxFlows, perSecond, burst int
}

func (l rrLimits) any() bool { return l != rrLimits{} }

type rrService struct {
	name     string
	tenants  []string   // "*" or tenant names
	pin      int        // -1: none, else an index of rrWorld.pins
	pinVIP   netip.Addr // pinned instead of pin when valid: another service's VIP
	pin6     int        // -1: no vip6, else an index of rrWorld.pins6 of the file's pool6
	backends []int      // indexes of rrWorld.addrs
	balance  string     // "" leaves it out
	icmp     string     // "", "true", "false"
	ports    []rrPort
	health   rrHealth
	tcpIdle  string
	udpIdle  string
	limits   rrLimits
	extra    string // raw lines, to break the file
}

func (s *rrService) allows(tenant string) bool {
	return slices.Contains(s.tenants, "*") || slices.Contains(s.tenants, tenant)
}

// pinned is the service's pinned VIP, or the zero Addr.
func (s *rrService) pinned(w *rrWorld) netip.Addr {
	switch {
	case s.pinVIP.IsValid():
		return s.pinVIP
	case s.pin >= 0:
		return w.pins[s.pin]
	}
	return netip.Addr{}
}

// pinned6 is the service's pinned IPv6 VIP in c's pool6, or the zero Addr.
func (s *rrService) pinned6(w *rrWorld, c *rrConfig) netip.Addr {
	if s.pin6 < 0 || c.restart.pool6 == "" {
		return netip.Addr{}
	}
	return w.pins6[c.restart.pool6][s.pin6]
}

func (s *rrService) port(proto string, port uint16) *rrPort {
	for i := range s.ports {
		if s.ports[i].proto == proto && s.ports[i].port == port {
			return &s.ports[i]
		}
	}
	return nil
}

// firstTarget is the index of the first target of proto, or -1.
func (s *rrService) firstTarget(proto string) int {
	for _, p := range s.ports {
		if p.proto == proto {
			return p.target
		}
	}
	return -1
}

type rrTenant struct {
	name     string
	prefixes []int // indexes of rrPrefixes
	wide     bool  // write both halves of a /24 as the /24
	limits   rrLimits
	raw      string // a sources list to write instead, to break the file
}

// rrRestart are restart-only keys: "" leaves a key out.
type rrRestart struct {
	name, ttl, zone, holdDown, minTTL string
	pool6                             string // one of rrPools6
	mtu, handshakes                   int
}

type rrConfig struct {
	restart  rrRestart
	drain    string
	limits   rrLimits
	tenants  []rrTenant
	services []rrService
	syntax   bool // end the file with a broken table header
	v6       bool // tenants hold the IPv6 twins of their prefixes
}

func (c *rrConfig) clone() *rrConfig {
	n := *c
	n.tenants = slices.Clone(c.tenants)
	for i := range n.tenants {
		n.tenants[i].prefixes = slices.Clone(c.tenants[i].prefixes)
	}
	n.services = slices.Clone(c.services)
	for i := range n.services {
		s := &n.services[i]
		s.tenants = slices.Clone(s.tenants)
		s.backends = slices.Clone(s.backends)
		s.ports = slices.Clone(s.ports)
	}
	return &n
}

func (c *rrConfig) service(name string) *rrService {
	for i := range c.services {
		if c.services[i].name == name {
			return &c.services[i]
		}
	}
	return nil
}

func (c *rrConfig) serviceNames() []string {
	var names []string
	for _, s := range c.services {
		names = append(names, s.name)
	}
	slices.Sort(names)
	return names
}

func (c *rrConfig) tenantNames() []string {
	var names []string
	for _, t := range c.tenants {
		names = append(names, t.name)
	}
	return names
}

// tenantOf is the tenant prefix q belongs to, or "".
func (c *rrConfig) tenantOf(q int) string {
	for _, t := range c.tenants {
		if slices.Contains(t.prefixes, q) {
			return t.name
		}
	}
	return ""
}

// limited reports whether any limit of flows applies to tenant's flows
// to s: a flow may then be refused for it.
func (c *rrConfig) limited(tenant string, s *rrService) bool {
	if c.limits.any() || s.limits.any() {
		return true
	}
	for _, t := range c.tenants {
		if t.name == tenant && t.limits.any() {
			return true
		}
	}
	return false
}

// rated reports whether a rate of new flows of its own (not the default
// 1000 a second) bounds each source of tenant.
func (c *rrConfig) rated(tenant string) bool {
	for _, t := range c.tenants {
		if t.name == tenant && t.limits.perSecond > 0 {
			return true
		}
	}
	return c.limits.perSecond > 0
}

// drainTimeout is drain_timeout as the gateway runs it.
func (c *rrConfig) drainTimeout() time.Duration {
	if c.drain == "" {
		return 30 * time.Second
	}
	d, err := time.ParseDuration(c.drain)
	if err != nil {
		panic(err)
	}
	return d
}

// zone is dns.zone as the gateway runs it, with its trailing dot.
func (r rrRestart) zoneName() string {
	if r.zone == "" {
		return "ztna.internal."
	}
	return r.zone + "."
}

// withRestart is c with the restart-only keys of r.
func (c *rrConfig) withRestart(r rrRestart) *rrConfig {
	n := c.clone()
	n.restart = r
	return n
}

// toml renders c; STATE stands for the state directory.
func (c *rrConfig) toml(w *rrWorld) string {
	var b strings.Builder
	kv := func(indent, key, val string) {
		if val != "" {
			fmt.Fprintf(&b, "%s%s = %s\n", indent, key, val)
		}
	}
	q := func(s string) string {
		if s == "" {
			return ""
		}
		return fmt.Sprintf("%q", s)
	}
	n := func(i int) string {
		if i == 0 {
			return ""
		}
		return fmt.Sprint(i)
	}
	r := c.restart
	b.WriteString("[gateway]\nstate_dir = \"STATE\"\n")
	kv("", "name", q(r.name))
	kv("", "vip_hold_down", q(r.holdDown))
	kv("", "drain_timeout", q(c.drain))
	if r.mtu != 0 || r.pool6 != "" {
		b.WriteString("[tun]\n")
		kv("", "mtu", n(r.mtu))
		kv("", "pool6", q(r.pool6))
	}
	if r.ttl != "" || r.zone != "" {
		b.WriteString("[dns]\n")
		kv("", "zone", q(r.zone))
		kv("", "ttl", q(r.ttl))
	}
	b.WriteString("[api]\nlisten = \"off\"\n")
	if c.limits.any() || r.handshakes != 0 {
		b.WriteString("[limits]\n")
		kv("", "max_flows", n(c.limits.maxFlows))
		kv("", "new_flows_per_second", n(c.limits.perSecond))
		kv("", "new_flows_burst", n(c.limits.burst))
		kv("", "max_inflight_handshakes", n(r.handshakes))
	}
	if r.minTTL != "" {
		fmt.Fprintf(&b, "[discovery]\nmin_ttl = %q\n", r.minTTL)
	}
	limits := func(indent string, l rrLimits) {
		kv(indent, "max_flows", n(l.maxFlows))
		kv(indent, "new_flows_per_second", n(l.perSecond))
		kv(indent, "new_flows_burst", n(l.burst))
	}
	for _, t := range c.tenants {
		fmt.Fprintf(&b, "[[tenant]]\nname = %q\n", t.name)
		if t.raw != "" {
			fmt.Fprintf(&b, "sources = %s\n", t.raw)
		} else {
			fmt.Fprintf(&b, "sources = [%s]\n", strings.Join(t.sources(c.v6), ", "))
		}
		limits("", t.limits)
	}
	for _, s := range c.services {
		fmt.Fprintf(&b, "[[service]]\nname = %q\n", s.name)
		b.WriteString(s.extra)
		var tenants, backends []string
		for _, tn := range s.tenants {
			tenants = append(tenants, fmt.Sprintf("%q", tn))
		}
		for _, i := range s.backends {
			backends = append(backends, fmt.Sprintf("%q", w.addrs[i]))
		}
		fmt.Fprintf(&b, "tenants = [%s]\nbackends = [%s]\n", strings.Join(tenants, ", "), strings.Join(backends, ", "))
		if v := s.pinned(w); v.IsValid() {
			fmt.Fprintf(&b, "vip = %q\n", v)
		}
		if v := s.pinned6(w, c); v.IsValid() {
			fmt.Fprintf(&b, "vip6 = %q\n", v)
		}
		kv("", "balance", q(s.balance))
		kv("", "icmp", s.icmp)
		limits("", s.limits)
		for _, p := range s.ports {
			fmt.Fprintf(&b, "  [[service.port]]\n  protocol = %q\n  port = %d\n  target = %d\n", p.proto, p.port, w.port(p.proto, p.target))
			kv("  ", "name", q(p.name))
		}
		if h := s.health; h.typ != "" {
			fmt.Fprintf(&b, "  [service.health]\n  type = %q\n", h.typ)
			if h.typ != "none" {
				timeout := h.timeout
				if timeout == "" {
					timeout = rrInterval
				}
				fmt.Fprintf(&b, "  interval = %q\n  timeout = %q\n  rise = %d\n  fall = %d\n", rrInterval, timeout, h.rise, h.fall)
				if h.port != -1 {
					fmt.Fprintf(&b, "  port = %d\n", w.healthPort(h))
				}
				kv("  ", "path", q(h.path))
				kv("  ", "expect_status", n(h.expectStatus))
				kv("  ", "send", q(h.send))
				kv("  ", "expect", q(h.expect))
			}
		}
		if s.tcpIdle != "" || s.udpIdle != "" {
			b.WriteString("  [service.timeouts]\n")
			kv("  ", "tcp_idle", q(s.tcpIdle))
			kv("  ", "udp_idle", q(s.udpIdle))
		}
	}
	if c.syntax {
		b.WriteString("[[service]\nname = \"broken\"\n")
	}
	return b.String()
}

// sources are the tenant's prefixes as written, with their IPv6 twins
// when v6.
func (t rrTenant) sources(v6 bool) []string {
	ps := slices.Clone(t.prefixes)
	slices.Sort(ps)
	var out []string
	for i := 0; i < len(ps); i++ {
		if t.wide && ps[i]%2 == 0 && i+1 < len(ps) && ps[i+1] == ps[i]+1 {
			out = append(out, fmt.Sprintf("%q", netip.PrefixFrom(rrPrefixes[ps[i]].Addr(), 24)))
			i++
			continue
		}
		out = append(out, fmt.Sprintf("%q", rrPrefixes[ps[i]]))
	}
	if v6 {
		for _, p := range ps {
			out = append(out, fmt.Sprintf("%q", rrPrefixes6[p]))
		}
	}
	return out
}

// rrInterval is the interval (and timeout) of every health check: short,
// so that the checks settle within a round, and no shorter, so that a
// loaded machine does not fail a check that should pass.
const rrInterval = "250ms"

// rrGen makes the random configurations.
type rrGen struct {
	rng *rand.Rand
	w   *rrWorld
	// v6: configurations may have an IPv6 pool, vip6 pins and IPv6
	// clients. pool6 is the running gateway's pool6 (a restart-only key):
	// vip6 pins are made only in a file with that pool6.
	v6    bool
	pool6 string
}

func (g *rrGen) chance(p float64) bool { return g.rng.Float64() < p }

func (g *rrGen) pick(xs []string) string { return xs[g.rng.IntN(len(xs))] }

// subset returns k distinct elements of 0..n-1 in random order.
func (g *rrGen) subset(n, k int) []int {
	return g.rng.Perm(n)[:k]
}

// restart returns restart-only keys, most often base's.
func (g *rrGen) restart(base rrRestart) rrRestart {
	r := base
	if !g.chance(0.2) {
		return r
	}
	kinds := 7
	if g.v6 {
		kinds = 8
	}
	for range 1 + g.rng.IntN(2) {
		switch g.rng.IntN(kinds) {
		case 0:
			r.name = g.pick([]string{"", "gw-a", "gw-b"})
		case 1:
			r.ttl = g.pick([]string{"", "45s", "20s"})
		case 2:
			r.zone = g.pick([]string{"", "corp.internal"})
		case 3:
			r.holdDown = g.pick([]string{"", "2m"})
		case 4:
			r.minTTL = g.pick([]string{"", "7s"})
		case 5:
			r.mtu = []int{0, 1400}[g.rng.IntN(2)]
		case 6:
			r.handshakes = []int{0, 512}[g.rng.IntN(2)]
		case 7:
			r.pool6 = g.pick(append([]string{""}, rrPools6...))
		}
	}
	return r
}

// config returns a random valid configuration, of which a share of its
// services are prev's, some of them changed (prev may be nil).
func (g *rrGen) config(prev *rrConfig, restart rrRestart) *rrConfig {
	c := &rrConfig{restart: g.restart(restart), v6: g.v6}
	c.drain = g.pick([]string{"", "0s", "30s"})
	if g.chance(0.15) {
		c.limits.maxFlows = 6 + g.rng.IntN(10)
	}
	if g.chance(0.08) {
		c.limits.perSecond = 10 + g.rng.IntN(20)
	}
	if prev != nil && g.chance(0.4) {
		c.tenants = slices.Clone(prev.clone().tenants)
	} else {
		c.tenants = g.tenants(c.limits)
	}
	names := g.subset(len(rrNames), 1+g.rng.IntN(4))
	for _, i := range names {
		name := rrNames[i]
		var s rrService
		if old := prev.serviceOrNil(name); old != nil && g.chance(0.6) {
			s = *old
			s.tenants, s.backends, s.ports = slices.Clone(old.tenants), slices.Clone(old.backends), slices.Clone(old.ports)
			g.mutate(&s, c)
		} else {
			s = g.service(name, c)
		}
		c.services = append(c.services, s)
	}
	g.fixPins(c)
	return c
}

// pins6 takes c's vip6 pins away when its pool6 is not the running
// gateway's: they would be pins in a pool the gateway has not (until a
// restart), which a fresh gateway with the running one's pool6 refuses.
func (g *rrGen) pins6(c *rrConfig) {
	if c.restart.pool6 == g.pool6 && g.pool6 != "" {
		return
	}
	for i := range c.services {
		c.services[i].pin6 = -1
	}
}

func (c *rrConfig) serviceOrNil(name string) *rrService {
	if c == nil {
		return nil
	}
	return c.service(name)
}

func (g *rrGen) tenants(global rrLimits) []rrTenant {
	k := 1 + g.rng.IntN(len(rrTenantNames))
	names := g.subset(len(rrTenantNames), k)
	var ts []rrTenant
	order := g.rng.Perm(len(rrPrefixes))
	for i, ni := range names {
		ts = append(ts, rrTenant{name: rrTenantNames[ni], prefixes: []int{order[i]}, wide: g.chance(0.5)})
	}
	for _, q := range order[k:] {
		if g.chance(0.75) {
			t := &ts[g.rng.IntN(len(ts))]
			t.prefixes = append(t.prefixes, q)
		}
	}
	for i := range ts {
		if g.chance(0.15) {
			ts[i].limits.maxFlows = 2 + g.rng.IntN(6)
		}
		if g.chance(0.08) {
			ts[i].limits.perSecond = 3 + g.rng.IntN(4)
			if global.perSecond > 0 {
				ts[i].limits.perSecond = min(ts[i].limits.perSecond, global.perSecond)
			}
		}
	}
	return ts
}

// serviceTenants returns a service's tenants among c's.
func (g *rrGen) serviceTenants(c *rrConfig) []string {
	if g.chance(0.25) {
		return []string{"*"}
	}
	names := c.tenantNames()
	var out []string
	for _, i := range g.subset(len(names), 1+g.rng.IntN(len(names))) {
		out = append(out, names[i])
	}
	return out
}

func (g *rrGen) service(name string, c *rrConfig) rrService {
	s := rrService{name: name, pin: -1, pin6: -1}
	s.tenants = g.serviceTenants(c)
	g.vip(&s)
	s.backends = g.subset(len(g.w.addrs), 1+g.rng.IntN(3))
	s.balance = g.pick([]string{"", "round_robin", "least_conn", "source_hash"})
	s.icmp = g.pick([]string{"", "true", "false"})
	g.ports(&s)
	g.health(&s)
	g.timeouts(&s)
	g.serviceLimits(&s, c)
	return s
}

// vip pins the service's own VIP at times, another's rarely: it may be one
// the gateway holds for another service.
func (g *rrGen) vip(s *rrService) {
	s.pin, s.pinVIP = -1, netip.Addr{}
	switch x := g.rng.Float64(); {
	case x < 0.35:
		s.pin = slices.Index(rrNames, s.name)
	case x < 0.4:
		s.pin = g.rng.IntN(len(g.w.pins))
	}
	s.pin6 = -1
	if !g.v6 {
		return
	}
	switch x := g.rng.Float64(); {
	case x < 0.35:
		s.pin6 = slices.Index(rrNames, s.name)
	case x < 0.42:
		s.pin6 = g.rng.IntN(len(rrNames))
	}
}

func (g *rrGen) ports(s *rrService) {
	s.ports = nil
	for range 1 + g.rng.IntN(3) {
		p := rrPort{proto: g.pick([]string{"tcp", "udp"}), target: g.rng.IntN(3)}
		if p.proto == "tcp" {
			p.port = rrTCPPorts[g.rng.IntN(len(rrTCPPorts))]
		} else {
			p.port = rrUDPPorts[g.rng.IntN(len(rrUDPPorts))]
		}
		if s.port(p.proto, p.port) != nil {
			continue
		}
		if g.chance(0.3) {
			p.name = g.pick([]string{"main", "alt"})
			for _, o := range s.ports {
				if o.proto == p.proto && o.name == p.name {
					p.name = ""
				}
			}
		}
		s.ports = append(s.ports, p)
	}
}

func (g *rrGen) health(s *rrService) {
	h := rrHealth{port: -1, rise: 1 + g.rng.IntN(2), fall: 1 + g.rng.IntN(2)}
	switch x := g.rng.Float64(); {
	case x < 0.3:
		// Left out, the check is TCP's default one when the service has a
		// TCP port: every 5 s, too slow to settle within a round.
		h.typ = "none"
		if s.firstTarget("tcp") < 0 && g.chance(0.5) {
			h.typ = ""
		}
	case x < 0.55:
		h.typ = "tcp"
	case x < 0.75:
		h.typ = "http"
		if g.chance(0.2) {
			h.path = "/sick"
		}
		h.expectStatus = []int{0, 0, 200, 503}[g.rng.IntN(4)]
	default:
		h.typ = "udp"
		h.send = g.pick([]string{"", "ping"})
		h.expect = g.pick([]string{"", "", "127.0.0.", "nope"})
	}
	if h.typ != "" && h.typ != "none" {
		proto := h.proto()
		switch {
		case s.firstTarget(proto) < 0 || g.chance(0.3):
			h.port = g.rng.IntN(3)
		case g.chance(0.1):
			h.port = -2
		}
		if h.port >= 0 && g.chance(0.15) {
			h.port = -2
		}
	}
	s.health = h
}

// proto is the protocol a check probes with.
func (h rrHealth) proto() string {
	if h.typ == "udp" {
		return "udp"
	}
	return "tcp"
}

// passes reports whether the service's checks pass on its backends (all
// of which listen on every port but the dead ones), or there are none.
func (s *rrService) passes() bool {
	h := s.health
	if h.typ == "" && s.firstTarget("tcp") >= 0 {
		h.typ = "tcp" // the default with a TCP port
	}
	switch h.typ {
	case "", "none":
		return true
	}
	if h.port == -2 {
		return false
	}
	switch h.typ {
	case "http":
		status := 200
		if h.path == "/sick" {
			status = 503
		}
		if h.expectStatus == 0 {
			return status < 300
		}
		return status == h.expectStatus
	case "udp":
		return h.expect != "nope"
	}
	return true
}

// checked reports whether the service has active checks.
func (s *rrService) checked() bool {
	switch s.health.typ {
	case "none":
		return false
	case "":
		return s.firstTarget("tcp") >= 0
	}
	return true
}

func (g *rrGen) timeouts(s *rrService) {
	s.tcpIdle, s.udpIdle = "", ""
	if g.chance(0.3) {
		s.tcpIdle = g.pick([]string{"300ms", "45m"})
	}
	if g.chance(0.3) {
		s.udpIdle = g.pick([]string{"300ms", "90s"})
	}
}

func (g *rrGen) serviceLimits(s *rrService, c *rrConfig) {
	s.limits = rrLimits{}
	if g.chance(0.15) {
		s.limits.maxFlows = 1 + g.rng.IntN(3)
	}
	if g.chance(0.06) {
		s.limits.perSecond = 2 + g.rng.IntN(4)
		if c.limits.perSecond > 0 {
			s.limits.perSecond = min(s.limits.perSecond, c.limits.perSecond)
		}
	}
}

// mutate changes one to three things of a service kept from the
// configuration before, and keeps its tenants among c's.
func (g *rrGen) mutate(s *rrService, c *rrConfig) {
	for range g.rng.IntN(4) {
		switch g.rng.IntN(9) {
		case 0:
			s.tenants = g.serviceTenants(c)
		case 1:
			g.vip(s)
		case 2:
			s.backends = g.subset(len(g.w.addrs), 1+g.rng.IntN(3))
		case 3:
			s.balance = g.pick([]string{"", "round_robin", "least_conn", "source_hash"})
		case 4:
			s.icmp = g.pick([]string{"", "true", "false"})
		case 5:
			g.ports(s)
			g.health(s)
		case 6:
			g.health(s)
		case 7:
			g.timeouts(s)
		case 8:
			g.serviceLimits(s, c)
		}
	}
	var keep []string
	for _, tn := range s.tenants {
		if tn == "*" || slices.Contains(c.tenantNames(), tn) {
			keep = append(keep, tn)
		}
	}
	if len(keep) == 0 {
		keep = g.serviceTenants(c)
	}
	s.tenants = keep
	if h := s.health; h.typ != "" && h.typ != "none" && h.port == -1 && s.firstTarget(h.proto()) < 0 {
		g.health(s) // the default port of the check is gone with its protocol
	}
	if c.limits.perSecond > 0 {
		s.limits.perSecond = min(s.limits.perSecond, c.limits.perSecond)
	}
}

// fixPins leaves a pinned VIP to one service of c.
func (g *rrGen) fixPins(c *rrConfig) {
	seen, seen6 := map[int]bool{}, map[int]bool{}
	for i := range c.services {
		s := &c.services[i]
		if s.pin >= 0 && seen[s.pin] {
			s.pin = -1
		}
		if s.pin >= 0 {
			seen[s.pin] = true
		}
		if s.pin6 >= 0 && seen6[s.pin6] {
			s.pin6 = -1
		}
		if s.pin6 >= 0 {
			seen6[s.pin6] = true
		}
	}
	g.pins6(c)
}

// rrBreak is a way to break a configuration: the reload must fail with an
// error naming want.
type rrBreak struct {
	name string
	do   func(g *rrGen, c *rrConfig) (want string, ok bool)
}

var rrBreaks = []rrBreak{
	{"syntax error", func(_ *rrGen, c *rrConfig) (string, bool) {
		c.syntax = true
		return "expected end of table array name delimiter", true
	}},
	{"unknown key", func(g *rrGen, c *rrConfig) (string, bool) {
		i := g.rng.IntN(len(c.services))
		c.services[i].extra = "colour = \"red\"\n"
		return fmt.Sprintf("service[%d].colour: unknown key", i), true
	}},
	{"port out of range", func(g *rrGen, c *rrConfig) (string, bool) {
		i := g.rng.IntN(len(c.services))
		c.services[i].ports[0].port = 0
		return fmt.Sprintf("service[%d].port[0].port: 0 is out of range", i), true
	}},
	{"undeclared tenant", func(g *rrGen, c *rrConfig) (string, bool) {
		i := g.rng.IntN(len(c.services))
		c.services[i].tenants = []string{"nobody"}
		return fmt.Sprintf("service[%d].tenants[0]: unknown tenant \"nobody\"", i), true
	}},
	{"overlapping sources", func(g *rrGen, c *rrConfig) (string, bool) {
		if len(c.tenants) < 2 {
			return "", false
		}
		c.tenants[1].raw = fmt.Sprintf("[%q]", rrPrefixes[c.tenants[0].prefixes[0]])
		return "tenant[1].sources[0]: ", true
	}},
	{"one pin for two services", func(g *rrGen, c *rrConfig) (string, bool) {
		if len(c.services) < 2 {
			return "", false
		}
		c.services[0].pin = slices.Index(rrNames, c.services[0].name)
		c.services[1].pin = c.services[0].pin
		return "service[1].vip: " + g.w.pins[c.services[0].pin].String() + " is pinned by both", true
	}},
	{"check timeout above interval", func(g *rrGen, c *rrConfig) (string, bool) {
		i := g.rng.IntN(len(c.services))
		s := &c.services[i]
		if !s.checked() || s.health.typ == "" {
			s.health = rrHealth{typ: "tcp", port: 0, rise: 1, fall: 1}
		}
		s.health.timeout = "1s"
		return fmt.Sprintf("service[%d].health.timeout: 1s must be greater than 0 and at most the interval", i), true
	}},
	{"vip6 the gateway's own or without a pool6", func(g *rrGen, c *rrConfig) (string, bool) {
		if !g.v6 {
			return "", false
		}
		i := g.rng.IntN(len(c.services))
		c.services[i].pin6 = -1
		if c.restart.pool6 == "" {
			c.services[i].extra = "vip6 = \"fd00:ab::9\"\n"
			return fmt.Sprintf("service[%d].vip6: fd00:ab::9 cannot be pinned: no IPv6 pool (pool6) is configured", i), true
		}
		gw6 := rrGateway6(c.restart.pool6)
		c.services[i].extra = fmt.Sprintf("vip6 = %q\n", gw6)
		return fmt.Sprintf("service[%d].vip6: %s is the gateway address", i, gw6), true
	}},
	{"tenant rate above the gateway's", func(g *rrGen, c *rrConfig) (string, bool) {
		c.limits.perSecond = 10
		c.tenants[0].limits.perSecond = 20
		for i := range c.services {
			c.services[i].limits.perSecond = min(c.services[i].limits.perSecond, 10)
		}
		for i := range c.tenants[1:] {
			c.tenants[i+1].limits.perSecond = min(c.tenants[i+1].limits.perSecond, 10)
		}
		return "tenant[0].new_flows_per_second: 20 is more than limits.new_flows_per_second 10", true
	}},
}
