package conf

import "net/netip"

// defaultAgentAddress is an agent's inner source address.
func defaultAgentAddress() netip.Addr { return netip.MustParseAddr("100.64.0.1") }

// LoadAgent reads and validates an agent configuration file. On failure the
// error is an Errors value listing every problem.
func LoadAgent(path string) (*Agent, error) {
	return load(path, agentFromTree, func(a *Agent) { a.Path = path })
}

// ParseAgent validates an agent configuration held in memory; name is used
// as in ParseGateway.
func ParseAgent(name string, data []byte) (*Agent, error) {
	return parse(name, data, agentFromTree)
}

func agentFromTree(name string, doc *tomlDoc) (*Agent, error) {
	if err := wrongRole(RoleAgent, name, doc.tree); err != nil {
		return nil, Errors{err}
	}
	var raw rawAgentFile
	v := decodeFile(name, doc, &raw)
	sec := raw.Agent
	if sec == nil {
		sec = &rawAgentSection{}
	}
	a := &Agent{
		Name:   v.hostname("agent.name", sec.Name),
		Tunnel: v.agentTunnel(raw.Tunnel),
		TUN:    v.agentTUN(raw.TUN),
		DNS:    DNS{Zone: defaultZone, TTL: defaultTTL, SetResolver: true},
		API:    v.api(raw.API, netip.AddrPort{}),
	}
	if raw.DNS != nil {
		a.DNS.Listen = v.listenAddrs("dns.listen", raw.DNS.Listen)
		if raw.DNS.SetResolver != nil {
			a.DNS.SetResolver = *raw.DNS.SetResolver
		}
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	return a, nil
}

// agentTUN validates an agent's [tun] section. The pool is not configured by
// the agent (it comes with the relay's directory); the default stands in.
func (v *validator) agentTUN(r *rawAgentTUN) TUN {
	t := TUN{Name: "ztagent0", MTU: defaultAgentMTU, Pool: defaultPool(), Address: defaultAgentAddress(), Enabled: true}
	if r == nil {
		return t
	}
	v.tunDevice(&t, r.Name, r.MTU)
	if r.Address != "" {
		a, ok := v.addr("tun.address", r.Address)
		switch {
		case !ok:
		case !a.Is4():
			v.addf("tun.address", "%s is not an IPv4 address", a)
		case t.Pool.Contains(a):
			v.addf("tun.address", "%s is inside the VIP pool %s", a, t.Pool)
		default:
			t.Address = a
		}
	}
	return t
}
