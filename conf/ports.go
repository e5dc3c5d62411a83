package conf

import (
	"github.com/ztgate/ztgate/catalog"
)

// ports validates the [[service.port]] tables of a service.
func (v *validator) ports(path string, rs []rawPort) []catalog.Port {
	if len(rs) == 0 {
		v.addf(path, "required: at least one [[service.port]] with protocol and port")
		return nil
	}
	out := make([]catalog.Port, 0, len(rs))
	for i, r := range rs {
		p := index(path, i)
		pt := catalog.Port{Protocol: v.protocol(join(p, "protocol"), r.Protocol)}
		pt.Port = v.portNumber(join(p, "port"), r.Port, 0)
		pt.Target = pt.Port
		if r.Target != nil {
			pt.Target = v.portNumber(join(p, "target"), r.Target, pt.Port)
		}
		if r.Name != "" {
			pt.Name = v.name(join(p, "name"), r.Name)
		}
		for j, o := range out {
			if pt.Protocol != 0 && pt.Port != 0 && o.Protocol == pt.Protocol && o.Port == pt.Port {
				v.addf(p, "%s/%d is also declared by %s", pt.Protocol, pt.Port, index(path, j))
			}
			if pt.Name != "" && o.Name == pt.Name && o.Protocol == pt.Protocol {
				v.addf(join(p, "name"), "%q is also the name of %s (SRV _%s._%s would be ambiguous)",
					pt.Name, index(path, j), pt.Name, pt.Protocol)
			}
		}
		out = append(out, pt)
	}
	return out
}

// protocol parses a required tcp or udp.
func (v *validator) protocol(path, s string) catalog.Protocol {
	if s == "" {
		v.addf(path, "required: tcp or udp")
		return 0
	}
	p, ok := catalog.ParseProtocol(s)
	if !ok {
		v.addf(path, "%q is not tcp or udp", s)
	}
	return p
}

// portNumber validates a port 1..65535; an absent port is def, or an error
// when def is 0.
func (v *validator) portNumber(path string, n *int, def uint16) uint16 {
	if n == nil {
		if def == 0 {
			v.addf(path, "required: a port number 1..65535")
		}
		return def
	}
	if !v.inRange(path, *n, 1, 65535) {
		return def
	}
	return uint16(*n)
}

// firstTarget returns the first backend port of a protocol, or 0.
func firstTarget(ports []catalog.Port, p catalog.Protocol) uint16 {
	for _, pt := range ports {
		if pt.Protocol == p {
			return pt.Target
		}
	}
	return 0
}

// health validates [service.health]. Without the section (or its type) a
// service is checked by TCP connect to its first TCP target port, or not at
// all when it has only UDP ports.
func (v *validator) health(path string, r *rawHealth, ports []catalog.Port) catalog.Health {
	if r == nil {
		r = &rawHealth{}
	}
	h := catalog.Health{
		Type:         catalog.HealthNone,
		Path:         r.Path,
		ExpectStatus: r.ExpectStatus,
		Send:         r.Send,
		Expect:       r.Expect,
		Interval:     v.duration(join(path, "interval"), r.Interval, catalog.DefaultHealthInterval),
		Rise:         intOr(r.Rise, catalog.DefaultHealthRise),
		Fall:         intOr(r.Fall, catalog.DefaultHealthFall),
	}
	// An unset timeout follows a short interval down: a check must be able
	// to end before the next one starts.
	h.Timeout = v.duration(join(path, "timeout"), r.Timeout, min(catalog.DefaultHealthTimeout, max(h.Interval, 1)))
	switch t, ok := catalog.ParseHealthType(r.Type); {
	case r.Type == "":
		if firstTarget(ports, catalog.TCP) != 0 {
			h.Type = catalog.HealthTCP
		}
	case !ok:
		v.addf(join(path, "type"), "%q is not tcp, http, udp or none", r.Type)
		return h
	default:
		h.Type = t
	}
	v.healthTarget(path, r, &h, ports)
	v.healthOnly(path, h.Type, catalog.HealthHTTP, map[string]bool{"path": r.Path != "", "expect_status": r.ExpectStatus != 0})
	v.healthOnly(path, h.Type, catalog.HealthUDP, map[string]bool{"send": r.Send != "", "expect": r.Expect != ""})
	if h.Type == catalog.HealthHTTP {
		if h.Path == "" {
			h.Path = "/"
		} else if h.Path[0] != '/' {
			v.addf(join(path, "path"), "%q must start with \"/\"", h.Path)
		}
		if h.ExpectStatus != 0 && (h.ExpectStatus < 100 || h.ExpectStatus > 599) {
			v.addf(join(path, "expect_status"), "%d is not 0 (any 2xx) or a status 100..599", h.ExpectStatus)
		}
	}
	v.positive(join(path, "interval"), h.Interval)
	if h.Timeout <= 0 || h.Timeout > h.Interval && h.Interval > 0 {
		v.addf(join(path, "timeout"), "%s must be greater than 0 and at most the interval %s", h.Timeout, h.Interval)
	}
	v.inRange(join(path, "rise"), h.Rise, 1, 1000)
	v.inRange(join(path, "fall"), h.Fall, 1, 1000)
	return h
}

// healthTarget sets the port a check probes: the configured one (PortSet:
// the gateway probes it on every backend), else the first target port of
// the matching protocol (a backend with a port of its own, from an SRV
// record, is probed there instead).
func (v *validator) healthTarget(path string, r *rawHealth, h *catalog.Health, ports []catalog.Port) {
	proto := catalog.TCP
	switch h.Type {
	case catalog.HealthNone:
		if r.Port != nil {
			v.addf(join(path, "port"), "does not apply to health type none")
		}
		return
	case catalog.HealthUDP:
		proto = catalog.UDP
	}
	if r.Port != nil {
		h.Port, h.PortSet = v.portNumber(join(path, "port"), r.Port, 0), true
		return
	}
	h.Port = firstTarget(ports, proto)
	if h.Port == 0 && len(ports) > 0 {
		v.addf(join(path, "port"), "required: the service has no %s port to check by default", proto)
	}
}

// healthOnly reports keys that are set but belong to another check type.
func (v *validator) healthOnly(path string, got, owner catalog.HealthType, set map[string]bool) {
	if got == owner {
		return
	}
	for _, k := range []string{"path", "expect_status", "send", "expect"} {
		if set[k] {
			v.addf(join(path, k), "applies only to health type %s, not %s", owner, got)
		}
	}
}

// timeouts validates [service.timeouts]. UDP flows to port 53 idle out after
// 30s unless udp_idle is set explicitly, which then applies to them too.
func (v *validator) timeouts(path string, r *rawTimeouts) catalog.Timeouts {
	if r == nil {
		r = &rawTimeouts{}
	}
	t := catalog.Timeouts{
		TCPIdle: v.duration(join(path, "tcp_idle"), r.TCPIdle, catalog.DefaultTCPIdle),
		UDPIdle: v.duration(join(path, "udp_idle"), r.UDPIdle, catalog.DefaultUDPIdle),
		DNSIdle: catalog.DefaultDNSIdle,
	}
	if r.UDPIdle != "" {
		t.DNSIdle = t.UDPIdle
	}
	v.positive(join(path, "tcp_idle"), t.TCPIdle)
	v.positive(join(path, "udp_idle"), t.UDPIdle)
	return t
}
