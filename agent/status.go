package agent

import (
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/tunnel"
)

// Status is what GET /v1/status shows of an agent: who it is, its tunnel
// to the server, the services of its directory and the path each one's new
// flows take.
type Status struct {
	Role     string          `json:"role"` // "agent", so that clients tell it from a gateway or relay
	Name     string          `json:"name"`
	Identity string          `json:"identity,omitempty"` // tenant/role/name from the certificate
	Server   string          `json:"server"`             // [tunnel] server
	Tunnel   TunnelStatus    `json:"tunnel"`
	Address  netip.Addr      `json:"address"` // the TUN's inner source address
	MTU      int             `json:"mtu"`     // the TUN's MTU now
	Zone     string          `json:"zone"`
	DNS      ResolverStatus  `json:"host_dns"` // how the host's resolver reaches the zone
	Pool     netip.Prefix    `json:"pool"`
	Services []ServiceStatus `json:"services"`
	// Excluded are the services of the server's directory the agent
	// leaves out of its DNS and routing, and why.
	Excluded []ExcludedService `json:"excluded_services"`
	Paths    []PathStatus      `json:"direct_paths"`
}

// ExcludedService is a service of the server's directory the agent leaves
// out: Reason "local_address", a VIP that is one of the agent's own
// addresses (its gateway address, or tun.address), as the metric
// ztgate_agent_services_excluded counts them.
type ExcludedService struct {
	Name   string     `json:"name"`
	VIP    netip.Addr `json:"vip"`
	Reason string     `json:"reason"`
}

// TunnelStatus is the agent's session to its server.
type TunnelStatus = tunnel.LinkStatus

// ServiceStatus is a service of the agent's directory.
type ServiceStatus struct {
	Name    string       `json:"name"`
	VIP     netip.Addr   `json:"vip,omitzero"`
	VIP6    netip.Addr   `json:"vip6,omitzero"`
	Healthy bool         `json:"healthy"`
	Ports   []PortStatus `json:"ports"`
	// Path is where new flows go: "relay", or "direct" to Gateway (also
	// through a relay's forwarder; see the direct path's Via).
	Path    string `json:"path"`
	Gateway string `json:"gateway,omitempty"`
	// DirectFailure is why the last attempt at a direct path failed, in
	// a few words ("refused: no_gateway", "no candidate of … answered"),
	// while new flows take the relay; the log has the details.
	DirectFailure string `json:"direct_failure,omitempty"`
}

// PortStatus is a port of a service.
type PortStatus struct {
	Protocol string `json:"protocol"`
	Port     uint16 `json:"port"`
}

// PathStatus is a direct session to a gateway.
type PathStatus struct {
	Gateway  string         `json:"gateway"`
	Remote   netip.AddrPort `json:"remote"`
	Via      string         `json:"via"` // "direct", or "relay forwarder"
	Since    time.Time      `json:"since"`
	Services []string       `json:"services"` // whose new flows start here
}

// Status returns the agent's state now.
func (a *Agent) Status() Status {
	st := Status{
		Role: "agent", Name: a.cfg.Name, Server: a.cfg.Tunnel.Server, Address: a.cfg.TUN.Address,
		MTU: int(a.mtu.Load()), Zone: a.cfg.DNS.Zone,
		Services: []ServiceStatus{}, Excluded: []ExcludedService{}, Paths: []PathStatus{},
	}
	if cert := a.creds.Certificate(); cert != nil {
		if id, err := tunnel.IdentityFromCert(cert); err == nil {
			st.Identity = id.String()
		}
	}
	st.Tunnel = a.link.Status()
	st.DNS = a.resolverStatus()
	d := a.dir.Load()
	st.Pool = d.pool
	paths, failures := a.direct.snapshot(), a.direct.failuresNow()
	for _, name := range slices.Sorted(maps.Keys(d.byName)) {
		s := d.byName[name]
		ss := ServiceStatus{Name: name, VIP: s.entry.VIP, VIP6: s.entry.VIP6, Healthy: s.healthy, Path: "relay", Ports: []PortStatus{}}
		for _, p := range s.entry.Ports {
			ss.Ports = append(ss.Ports, PortStatus{Protocol: p.Protocol.String(), Port: p.Port})
		}
		for _, p := range paths {
			if slices.Contains(p.Services, name) {
				ss.Path, ss.Gateway = "direct", p.Gateway
			}
		}
		if ss.Path == "relay" {
			ss.DirectFailure = failures[name]
		}
		st.Services = append(st.Services, ss)
	}
	for _, name := range slices.Sorted(maps.Keys(d.atLocal)) {
		st.Excluded = append(st.Excluded, ExcludedService{Name: name, VIP: d.atLocal[name], Reason: "local_address"})
	}
	st.Paths = append(st.Paths, paths...)
	return st
}

// resolverStatus is how the host's resolver reaches the agent's DNS.
func (a *Agent) resolverStatus() ResolverStatus {
	switch {
	case a.resolved != nil:
		return a.resolved.Status()
	case !a.cfg.DNS.SetResolver:
		return ResolverStatus{State: "off", Detail: "dns.set_resolver = false: the host's resolver is left alone"}
	case a.resolverNote.State != "":
		return a.resolverNote
	}
	return ResolverStatus{State: "not_set", Detail: "no TUN device of the agent's own"}
}

// v1 serves the agent's GET /v1/status.
func (a *Agent) v1() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		adminapi.WriteJSON(w, http.StatusOK, a.Status())
	})
	return mux
}

// viaName names how a path reaches its gateway.
func viaName(forwarded bool) string {
	if forwarded {
		return "relay forwarder"
	}
	return "direct"
}

// pathStatus is p as Status shows it. Only the manager's goroutine calls
// it: it reads p.services.
func (p *path) status() PathStatus {
	ps := PathStatus{Gateway: p.gateway, Remote: p.addr, Via: viaName(p.forwarded), Since: p.since}
	for service := range p.services {
		ps.Services = append(ps.Services, service)
	}
	slices.Sort(ps.Services)
	if ps.Services == nil {
		ps.Services = []string{}
	}
	return ps
}

// snapshot returns the direct paths as publish last saw them.
func (d *direct) snapshot() []PathStatus {
	if d == nil {
		return nil
	}
	if ps := d.shown.Load(); ps != nil {
		return *ps
	}
	return nil
}

// failuresNow returns the services' last failures as showFailures last
// recorded them.
func (d *direct) failuresNow() map[string]string {
	if d == nil {
		return nil
	}
	if f := d.failures.Load(); f != nil {
		return *f
	}
	return nil
}

// showFailures records the services' last failures for Status. Only the
// manager's goroutine calls it.
func (d *direct) showFailures() {
	f := make(map[string]string)
	for service, st := range d.svcs {
		if st.failure != "" {
			f[service] = st.failure
		}
	}
	d.failures.Store(&f)
}

// showPaths records the paths for Status, ordered by gateway. Only the
// manager's goroutine calls it.
func (d *direct) showPaths() {
	ps := make([]PathStatus, 0, len(d.paths))
	for _, p := range d.paths {
		ps = append(ps, p.status())
	}
	slices.SortFunc(ps, func(a, b PathStatus) int { return strings.Compare(a.Gateway, b.Gateway) })
	d.shown.Store(&ps)
}
