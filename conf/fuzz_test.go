package conf

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/ztgate/ztgate/catalog"
)

// The fuzz targets check that parsing never panics and that a parsed
// configuration is a fixed point: written back out with every value
// explicit, it parses to the same value, and its services pass
// ValidateServices.

func FuzzParseGateway(f *testing.F) {
	path := filepath.Join(fuzzPKI(f), "gw.toml")
	for _, name := range []string{"gateway.toml", "gateway-relay.toml"} {
		data, err := os.ReadFile(filepath.Join("..", "examples", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(gatewayHead + webService))
	f.Add([]byte("[tun]\npool6 = \"fd00::/120\"\n" + webWith("vip = \"10.100.0.9\"\nvip6 = \"fd00::9\"\n", "[service.health]\ntype = \"http\"\n[service.timeouts]\nudp_idle = \"5s\"\n")))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := ParseGateway(path, data)
		if err != nil {
			errs, ok := err.(Errors)
			if !ok {
				t.Fatalf("error %T is not Errors", err)
			}
			last := bytes.Count(data, []byte("\n")) + 1
			for _, e := range errs {
				if fe, ok := e.(*fieldError); ok && fe.line > last {
					t.Fatalf("%v: the file has %d lines", fe, last)
				}
			}
			return
		}
		if errs := ValidateServices(g.Services, g.ServiceContext()); errs != nil {
			t.Fatalf("parsed services do not re-validate: %v", errs)
		}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(gatewayTree(g)); err != nil {
			t.Fatal(err)
		}
		again, err := ParseGateway(path, buf.Bytes())
		if err != nil {
			t.Fatalf("written back:\n%s\ndoes not parse: %v", buf.Bytes(), err)
		}
		if !reflect.DeepEqual(g, again) {
			t.Fatalf("written back:\n%s\nparses to\n%+v\nnot\n%+v", buf.Bytes(), again, g)
		}
	})
}

func FuzzParseServiceJSON(f *testing.F) {
	f.Add([]byte(`{"name": "web", "tenants": ["acme"], "backends": ["192.0.2.10"], "port": [{"protocol": "tcp", "port": 80}]}`))
	f.Add([]byte(`{"name": "Web", "tenants": ["*"], "vip": "10.100.0.10", "vip6": "fd00::10", "backends_srv": "_http._tcp.app.example",
		"balance": "least_conn", "icmp": false, "max_flows": 3, "max_inflight_handshakes": 4,
		"new_flows_per_second": 5, "new_flows_burst": 6, "port": [{"name": "dns", "protocol": "udp", "port": 53, "target": 5353}],
		"health": {"type": "udp", "send": "x", "expect": "y", "interval": "2s", "timeout": "1s", "rise": 1, "fall": 1},
		"timeouts": {"tcp_idle": "1m", "udp_idle": "10s"}}`))
	f.Add([]byte(`{"name": 1, "port": [{"port": 1.5}], "health": null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := apiContext()
		svc, err := ParseServiceJSON(data, ctx)
		if err != nil {
			if _, ok := err.(Errors); !ok {
				t.Fatalf("error %T is not Errors", err)
			}
			return
		}
		if errs := ValidateServices([]catalog.Service{svc}, ctx); errs != nil {
			t.Fatalf("parsed service does not re-validate: %v", errs)
		}
		out, err := json.Marshal(serviceTree(svc))
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseServiceJSON(out, ctx)
		if err != nil {
			t.Fatalf("written back as %s it does not parse: %v", out, err)
		}
		if !reflect.DeepEqual(svc, again) {
			t.Fatalf("written back as %s it parses to\n%+v\nnot\n%+v", out, again, svc)
		}
	})
}

// gatewayTree writes a gateway configuration back as a TOML tree with every
// value explicit.
func gatewayTree(g *Gateway) map[string]any {
	tree := map[string]any{
		"gateway": map[string]any{"name": g.Name, "state_dir": g.StateDir,
			"vip_hold_down": g.VIPHoldDown.String(), "drain_timeout": g.DrainTimeout.String()},
		"dns": map[string]any{"zone": g.DNS.Zone, "listen": strs(g.DNS.Listen), "ttl": g.DNS.TTL.String(),
			"upstreams": strs(g.DNS.Upstreams), "forward_timeout": g.DNS.ForwardTimeout.String()},
		"api": map[string]any{"listen": "off", "token_file": g.API.TokenFile},
		"tunnel": map[string]any{"listen": g.Tunnel.Listen, "relay": g.Tunnel.Relay, "server_name": g.Tunnel.ServerName,
			"cert": g.Tunnel.Cert, "key": g.Tunnel.Key, "ca": g.Tunnel.CA, "insecure_allow_unauthenticated": g.Tunnel.Insecure},
		"limits": map[string]any{"max_flows": g.Limits.MaxFlows, "max_inflight_handshakes": g.Limits.MaxInflightHandshake,
			"new_flows_per_second": g.Limits.NewFlowsPerSecond, "new_flows_burst": g.Limits.NewFlowsBurst},
		"discovery": map[string]any{"nameservers": strs(g.Discovery.Nameservers),
			"min_ttl": g.Discovery.MinTTL.String(), "max_ttl": g.Discovery.MaxTTL.String()},
	}
	if g.API.Listen.IsValid() {
		tree["api"].(map[string]any)["listen"] = g.API.Listen.String()
	}
	if g.TUN.Enabled {
		tun := map[string]any{"name": g.TUN.Name, "mtu": g.TUN.MTU, "pool": g.TUN.Pool.String()}
		if g.TUN.Pool6.IsValid() {
			tun["pool6"] = g.TUN.Pool6.String()
		}
		tree["tun"] = tun
	}
	var tenants []map[string]any
	for _, tn := range g.Tenants {
		tenant := map[string]any{"name": tn.Name, "sources": strs(tn.Sources)}
		maps.Copy(tenant, flowLimitsTree(tn.FlowLimits))
		tenants = append(tenants, tenant)
	}
	if tenants != nil {
		tree["tenant"] = tenants
	}
	var services []map[string]any
	for _, s := range g.Services {
		services = append(services, serviceTree(s))
	}
	if services != nil {
		tree["service"] = services
	}
	return tree
}

// serviceTree writes a service back as a tree of the [[service]] schema.
func serviceTree(s catalog.Service) map[string]any {
	m := map[string]any{"name": s.Name, "tenants": s.Tenants, "backends": s.Backends, "backends_srv": s.BackendsSRV,
		"balance": s.Balance.String(), "icmp": s.ICMP}
	maps.Copy(m, flowLimitsTree(s.FlowLimits))
	if s.VIP.IsValid() {
		m["vip"] = s.VIP.String()
	}
	if s.VIP6.IsValid() {
		m["vip6"] = s.VIP6.String()
	}
	var ports []map[string]any
	for _, p := range s.Ports {
		ports = append(ports, map[string]any{"name": p.Name, "protocol": p.Protocol.String(), "port": int(p.Port), "target": int(p.Target)})
	}
	m["port"] = ports
	h := s.Health
	health := map[string]any{"type": h.Type.String(), "interval": h.Interval.String(), "timeout": h.Timeout.String(), "rise": h.Rise, "fall": h.Fall}
	if h.PortSet { // a default port written out would be one set (SRV backends are checked there then)
		health["port"] = int(h.Port)
	}
	switch h.Type {
	case catalog.HealthHTTP:
		health["path"], health["expect_status"] = h.Path, h.ExpectStatus
	case catalog.HealthUDP:
		health["send"], health["expect"] = h.Send, h.Expect
	}
	m["health"] = health
	timeouts := map[string]any{"tcp_idle": s.Timeouts.TCPIdle.String()}
	if s.Timeouts.DNSIdle == s.Timeouts.UDPIdle {
		timeouts["udp_idle"] = s.Timeouts.UDPIdle.String()
	} else if s.Timeouts.UDPIdle != catalog.DefaultUDPIdle || s.Timeouts.DNSIdle != catalog.DefaultDNSIdle {
		panic("timeouts that no configuration produces")
	}
	m["timeouts"] = timeouts
	return m
}

// flowLimitsTree writes the limit keys of a tenant or service.
func flowLimitsTree(l catalog.FlowLimits) map[string]any {
	return map[string]any{"max_flows": l.MaxFlows, "max_inflight_handshakes": l.MaxInflightHandshakes,
		"new_flows_per_second": l.NewFlowsPerSecond, "new_flows_burst": l.NewFlowsBurst}
}

// strs formats values with their String method.
func strs[T interface{ String() string }](vs []T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}
	return out
}
