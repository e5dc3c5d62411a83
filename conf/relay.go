package conf

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Defaults of a relay.
const (
	defaultRelayListen   = "0.0.0.0:4433"
	defaultRelayStateDir = "/var/lib/ztgate-relay"
)

// defaultRelayAPI is the relay's admin API listener.
func defaultRelayAPI() netip.AddrPort { return netip.MustParseAddrPort("127.0.0.1:7781") }

// LoadRelay reads and validates a relay configuration file. On failure the
// error is an Errors value listing every problem.
func LoadRelay(path string) (*Relay, error) {
	return load(path, relayFromTree, func(r *Relay) { r.Path = path })
}

// ParseRelay validates a relay configuration held in memory; name is used
// as in ParseGateway.
func ParseRelay(name string, data []byte) (*Relay, error) {
	return parse(name, data, relayFromTree)
}

func relayFromTree(name string, doc *tomlDoc) (*Relay, error) {
	if err := wrongRole(RoleRelay, name, doc.tree); err != nil {
		return nil, Errors{err}
	}
	var raw rawRelayFile
	v := decodeFile(name, doc, &raw)
	sec := raw.Relay
	if sec == nil {
		sec = &rawRelaySection{}
	}
	r := &Relay{
		Name:     v.hostname("relay.name", sec.Name),
		Listen:   defaultRelayListen,
		StateDir: v.stateDir(sec.StateDir, defaultRelayStateDir),
		Pool:     v.pool4("relay.pool", sec.Pool, defaultPool()),
		Pool6:    v.pool6("relay.pool6", sec.Pool6),
		Zone:     v.zone("relay.zone", sec.Zone),
		TTL:      v.ttl("relay.ttl", sec.TTL),
		Insecure: sec.Insecure,
		API:      v.api(raw.API, defaultRelayAPI()),
	}
	if sec.Listen != "" {
		r.Listen = sec.Listen
		v.hostPort("relay.listen", sec.Listen, true)
	}
	r.Cert, r.Key, r.CA = v.credentials("relay", sec.Cert, sec.Key, sec.CA, true, !sec.Insecure)
	r.VIPHoldDown = v.holdDown("relay.vip_hold_down", sec.VIPHoldDown, r.TTL)
	r.Pins = v.pins(raw.Pins, r.Pool, r.Pool6)
	r.ForwardPorts = v.portRange("relay.forward_ports", sec.ForwardPorts, r.Listen)
	if err := v.err(); err != nil {
		return nil, err
	}
	return r, nil
}

// portRange parses "first-last" or a single port; "" is none. The range
// must not hold the port of listen (host:port).
func (v *validator) portRange(path, s, listen string) PortRange {
	if s == "" {
		return PortRange{}
	}
	first, last, isRange := strings.Cut(strings.TrimSpace(s), "-")
	if !isRange {
		last = first
	}
	lo, err1 := strconv.ParseUint(strings.TrimSpace(first), 10, 16)
	hi, err2 := strconv.ParseUint(strings.TrimSpace(last), 10, 16)
	switch {
	case err1 != nil || err2 != nil || lo == 0 || hi == 0:
		v.addf(path, "%q is not a port 1..65535 or a range of them (\"4440-4471\")", s)
		return PortRange{}
	case lo > hi:
		v.addf(path, "%q: the first port is above the last", s)
		return PortRange{}
	}
	if _, port, err := net.SplitHostPort(listen); err == nil {
		if n, err := strconv.ParseUint(port, 10, 16); err == nil && n >= lo && n <= hi {
			v.addf(path, "%q holds the listen port %d", s, n)
			return PortRange{}
		}
	}
	return PortRange{First: uint16(lo), Last: uint16(hi)}
}

// pins validates the relay's [[pin]] tables: each VIP inside its family's
// pool and not reserved, one pin per service and family, one service per VIP.
func (v *validator) pins(rs []rawPin, pool, pool6 netip.Prefix) []Pin {
	type key struct {
		service string
		v6      bool
	}
	var (
		out     []Pin
		byVIP   = make(map[netip.Addr]int)
		byOwner = make(map[key]int)
	)
	for i, r := range rs {
		path := index("pin", i)
		p := Pin{Service: v.name(join(path, "service"), r.Service)}
		vp := join(path, "vip")
		if r.VIP == "" {
			v.addf(vp, "required")
			continue
		}
		a, ok := v.addr(vp, r.VIP)
		if !ok {
			continue
		}
		family := pool
		if a.Is6() {
			family = pool6
		}
		if err := checkPin(a, family, true); err != nil {
			v.add(vp, err)
			continue
		}
		p.VIP = a
		if j, dup := byVIP[a]; dup {
			v.addf(vp, "%s is pinned by both service %q (pin[%d]) and service %q (%s)", a, rs[j].Service, j, p.Service, path)
			continue
		}
		k := key{strings.ToLower(p.Service), a.Is6()}
		if j, dup := byOwner[k]; dup && p.Service != "" {
			v.addf(vp, "service %q already has a pin of this family (pin[%d])", p.Service, j)
			continue
		}
		byVIP[a], byOwner[k] = i, i
		out = append(out, p)
	}
	return out
}
