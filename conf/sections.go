package conf

import (
	"net/netip"
	"os"
	"strings"
	"time"
)

// Defaults of the sections shared by the roles.
const (
	defaultZone           = "ztna.internal."
	defaultTTL            = 30 * time.Second
	defaultForwardTimeout = 2 * time.Second
	defaultDrainTimeout   = 30 * time.Second
	defaultGatewayMTU     = 1420
	defaultAgentMTU       = 1280
	defaultMaxFlows       = 65536
	defaultMaxHandshakes  = 1024
	defaultFlowRate       = 1000
	defaultMinTTL         = 5 * time.Second
	defaultMaxTTL         = 5 * time.Minute
	minMTU, maxMTU        = 576, 65535
)

// defaultPool is the VIP pool when none is configured.
func defaultPool() netip.Prefix { return netip.MustParsePrefix("10.100.0.0/24") }

// gatewayTUN validates a gateway's [tun] section. Without one the TUN device
// is enabled with defaults, unless the gateway is attached to a relay.
func (v *validator) gatewayTUN(r *rawTUN, relay bool) TUN {
	t := TUN{Name: "ztgate0", MTU: defaultGatewayMTU, Pool: defaultPool(), Enabled: r != nil || !relay}
	if r == nil {
		return t
	}
	v.tunDevice(&t, r.Name, r.MTU)
	t.Pool = v.pool4("tun.pool", r.Pool, t.Pool)
	t.Pool6 = v.pool6("tun.pool6", r.Pool6)
	return t
}

// tunDevice validates the interface name and MTU of a [tun] section into t,
// which holds the defaults.
func (v *validator) tunDevice(t *TUN, name string, mtu *int) {
	if name != "" {
		t.Name = name
		if err := checkInterfaceName(name); err != nil {
			v.add("tun.name", err)
		}
	}
	t.MTU = intOr(mtu, t.MTU)
	v.inRange("tun.mtu", t.MTU, minMTU, maxMTU)
}

// zone validates a DNS zone; "" gives the default.
func (v *validator) zone(path, s string) string {
	if s == "" {
		return defaultZone
	}
	if err := checkDomain(s); err != nil {
		v.add(path, err)
	}
	return fqdn(s)
}

// ttl validates a DNS TTL: 1s..24h.
func (v *validator) ttl(path, s string) time.Duration {
	d := v.duration(path, s, defaultTTL)
	if d < time.Second || d > 24*time.Hour {
		v.addf(path, "%s is out of range 1s..24h", d)
	}
	return d
}

// gatewayDNS validates a gateway's [dns] section.
func (v *validator) gatewayDNS(r *rawDNS) DNS {
	if r == nil {
		r = &rawDNS{}
	}
	d := DNS{
		Zone:           v.zone("dns.zone", r.Zone),
		Listen:         v.listenAddrs("dns.listen", r.Listen),
		TTL:            v.ttl("dns.ttl", r.TTL),
		Upstreams:      v.servers("dns.upstreams", r.Upstreams),
		ForwardTimeout: v.duration("dns.forward_timeout", r.ForwardTimeout, defaultForwardTimeout),
	}
	v.positive("dns.forward_timeout", d.ForwardTimeout)
	return d
}

// api validates an [api] section; def is the listener when none is set.
func (v *validator) api(r *rawAPI, def netip.AddrPort) API {
	if r == nil {
		return API{Listen: def}
	}
	return API{
		Listen:    v.apiListen("api.listen", r.Listen, def),
		TokenFile: v.tokenFile("api.token_file", r.TokenFile),
	}
}

// tokenFile resolves a bearer token file and checks that it holds a token:
// the API refuses to start with an empty one (white space only counts as
// empty, as there).
func (v *validator) tokenFile(path, p string) string {
	abs := v.file(path, p)
	if abs == "" {
		return abs
	}
	// A file that cannot be read has its error from v.file already.
	if b, err := os.ReadFile(abs); err == nil && strings.TrimSpace(string(b)) == "" {
		v.addf(path, "file %q is empty: it must hold the bearer token", p)
	}
	return abs
}

// limits validates a gateway's [limits] section.
func (v *validator) limits(r *rawLimits) Limits {
	if r == nil {
		r = &rawLimits{}
	}
	l := Limits{
		MaxFlows:             intOr(r.MaxFlows, defaultMaxFlows),
		MaxInflightHandshake: intOr(r.MaxInflightHandshakes, defaultMaxHandshakes),
		NewFlowsPerSecond:    intOr(r.NewFlowsPerSecond, defaultFlowRate),
	}
	l.NewFlowsBurst = intOr(r.NewFlowsBurst, 2*l.NewFlowsPerSecond)
	const most = 1 << 30
	v.inRange("limits.max_flows", l.MaxFlows, 1, most)
	v.inRange("limits.max_inflight_handshakes", l.MaxInflightHandshake, 1, most)
	if v.inRange("limits.new_flows_per_second", l.NewFlowsPerSecond, 0, most) && l.NewFlowsPerSecond > 0 {
		v.inRange("limits.new_flows_burst", l.NewFlowsBurst, 1, most)
	}
	return l
}

// discovery validates a gateway's [discovery] section.
func (v *validator) discovery(r *rawDiscovery) Discovery {
	if r == nil {
		r = &rawDiscovery{}
	}
	d := Discovery{
		Nameservers: v.servers("discovery.nameservers", r.Nameservers),
		MinTTL:      v.duration("discovery.min_ttl", r.MinTTL, defaultMinTTL),
		MaxTTL:      v.duration("discovery.max_ttl", r.MaxTTL, defaultMaxTTL),
	}
	v.positive("discovery.min_ttl", d.MinTTL)
	if d.MinTTL > d.MaxTTL {
		v.addf("discovery.max_ttl", "%s is less than min_ttl %s", d.MaxTTL, d.MinTTL)
	}
	return d
}
