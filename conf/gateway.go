package conf

import (
	"net/netip"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// Defaults of a gateway.
const defaultGatewayStateDir = "/var/lib/ztgate"

// defaultGatewayAPI is the gateway's admin API listener.
func defaultGatewayAPI() netip.AddrPort { return netip.MustParseAddrPort("127.0.0.1:7780") }

// LoadGateway reads and validates a gateway configuration file. On failure
// the error is an Errors value listing every problem.
func LoadGateway(path string) (*Gateway, error) {
	return load(path, gatewayFromTree, func(g *Gateway) { g.Path = path })
}

// ParseGateway validates a gateway configuration held in memory. name is
// the file name used in messages (its base name) and relative paths resolve
// against filepath.Dir(name). Gateway.Path is left empty.
func ParseGateway(name string, data []byte) (*Gateway, error) {
	return parse(name, data, gatewayFromTree)
}

func gatewayFromTree(name string, doc *tomlDoc) (*Gateway, error) {
	if err := wrongRole(RoleGateway, name, doc.tree); err != nil {
		return nil, Errors{err}
	}
	var raw rawGatewayFile
	v := decodeFile(name, doc, &raw)
	sec := raw.Gateway
	if sec == nil {
		sec = &rawGatewaySection{}
	}
	g := &Gateway{Tunnel: v.gatewayTunnel(raw.Tunnel)}
	g.TUN = v.gatewayTUN(raw.TUN, g.Tunnel.Relay != "")
	g.DNS = v.gatewayDNS(raw.DNS)
	g.API = v.api(raw.API, defaultGatewayAPI())
	g.Limits = v.limits(raw.Limits)
	g.Discovery = v.discovery(raw.Discovery)
	g.Name = v.hostname("gateway.name", sec.Name)
	g.StateDir = v.stateDir(sec.StateDir, defaultGatewayStateDir)
	g.VIPHoldDown = v.holdDown("gateway.vip_hold_down", sec.VIPHoldDown, g.DNS.TTL)
	g.DrainTimeout = v.duration("gateway.drain_timeout", sec.DrainTimeout, defaultDrainTimeout)
	g.Tenants = v.tenants(raw.Tenants, g.Limits)

	ctx := g.ServiceContext()
	g.Services = make([]catalog.Service, len(raw.Services))
	for i := range raw.Services {
		g.Services[i] = v.service(index("service", i), &raw.Services[i], &ctx)
		g.Services[i].Source = "file"
	}
	validateServices(v.errList, g.Services, ctx, servicePaths{
		service: func(i int) string { return index("service", i) },
		pool:    "tun.pool",
		pool6:   "tun.pool6",
	})
	if err := v.err(); err != nil {
		return nil, err
	}
	return g, nil
}

// stateDir resolves a state directory; "" gives def.
func (v *validator) stateDir(s, def string) string {
	if s == "" {
		return def
	}
	return v.resolve(s)
}

// holdDown validates how long a released VIP is held back: at least the DNS
// TTL (so no resolver still caches the old answer), which is its default.
func (v *validator) holdDown(path, s string, ttl time.Duration) time.Duration {
	d := v.duration(path, s, ttl)
	if d < ttl {
		v.addf(path, "%s is shorter than the DNS TTL %s: clients could still use a cached answer when the VIP is reused", d, ttl)
	}
	return d
}
