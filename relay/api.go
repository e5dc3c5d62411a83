package relay

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"

	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/tunnel"
)

// startAPI serves the admin API on [api] listen: /healthz and /metrics
// are open, /v1/ needs the bearer token when [api] token_file is set.
func (r *Relay) startAPI() error {
	api, err := adminapi.Start(adminapi.Config{
		Listen: r.cfg.API.Listen, TokenFile: r.cfg.API.TokenFile,
		Registry: r.m.reg, V1: r.v1Handler(), Log: r.log,
	})
	if err != nil {
		return fmt.Errorf("relay: api: %w", err)
	}
	r.api = api
	return nil
}

// APIAddr returns the address the admin API listens on, or "" when off.
func (r *Relay) APIAddr() string { return r.api.Addr() }

// v1Handler routes the relay's /v1/ API.
func (r *Relay) v1Handler() http.Handler {
	v1 := http.NewServeMux()
	v1.HandleFunc("GET /v1/services", r.handleServices)
	v1.HandleFunc("GET /v1/sessions", r.handleSessions)
	v1.HandleFunc("GET /v1/gateways", r.handleGateways)
	v1.HandleFunc("GET /v1/forwarders", r.handleForwarders)
	v1.HandleFunc("POST /v1/gateways/{name}/drain", r.handleDrain(true))
	v1.HandleFunc("POST /v1/gateways/{name}/undrain", r.handleDrain(false))
	return v1
}

// apiGateway is one gateway serving a service in GET /v1/services.
type apiGateway struct {
	Name    string `json:"name"`
	Healthy bool   `json:"healthy"`
	State   string `json:"state"` // healthy, down or draining (takes no new flows)
	Session uint64 `json:"session"`
	Flows   int64  `json:"flows"`
	// The gateway's own definition of the service.
	Tenants []string          `json:"tenants"`
	Ports   []tunnel.PortInfo `json:"ports"`
	ICMP    bool              `json:"icmp"`
}

// apiService is a service in GET /v1/services: tenants, ports and ICMP
// merged over its gateways (definition.go), Conflict when they disagree.
type apiService struct {
	Name     string            `json:"name"`
	VIP      string            `json:"vip"`
	VIP6     string            `json:"vip6,omitempty"`
	Tenants  []string          `json:"tenants"`
	Ports    []tunnel.PortInfo `json:"ports"`
	ICMP     bool              `json:"icmp"`
	Healthy  bool              `json:"healthy"`
	Conflict bool              `json:"conflict,omitempty"`
	Gateways []apiGateway      `json:"gateways"`
}

func (r *Relay) handleServices(w http.ResponseWriter, _ *http.Request) {
	r.mu.RLock()
	out := make([]apiService, 0, len(r.services))
	for _, svc := range r.services {
		v := svc.viewLocked(nil)
		as := apiService{
			Name: svc.name, VIP: addrString(svc.vip), VIP6: addrString(svc.vip6),
			Tenants: v.tenants, Ports: v.ports, ICMP: v.icmp, Healthy: v.healthy,
			Conflict: svc.disputedLocked(), Gateways: []apiGateway{},
		}
		for _, g := range svc.gateways {
			def := g.defs[svc.name]
			ports := def.Ports
			if ports == nil {
				ports = []tunnel.PortInfo{}
			}
			as.Gateways = append(as.Gateways, apiGateway{Name: gatewayName(g), Healthy: g.services[svc.name],
				State: r.gatewayStateLocked(g, svc.name), Session: g.s.ID(), Flows: g.flows.Load(),
				Tenants: def.Tenants, Ports: ports, ICMP: def.ICMP})
		}
		out = append(out, as)
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b apiService) int { return cmp.Compare(a.Name, b.Name) })
	adminapi.WriteJSON(w, http.StatusOK, map[string]any{"services": out})
}

// apiSession is a session in GET /v1/sessions.
type apiSession struct {
	adminapi.Session
	Tags     int      `json:"tags"`
	Flows    int      `json:"flows,omitempty"`    // agents: entries of the flow table
	Services []string `json:"services,omitempty"` // gateways: the services registered
}

func (r *Relay) handleSessions(w http.ResponseWriter, _ *http.Request) {
	r.mu.RLock()
	out := make([]apiSession, 0, len(r.agents)+len(r.gateways))
	for a := range r.agents {
		s := describePeer(&a.peer, len(a.tags))
		s.Inner = addrString(a.inner)
		s.Flows = a.flows.len()
		out = append(out, s)
	}
	for g := range r.gateways {
		s := describePeer(&g.peer, len(g.tags))
		for name := range g.services {
			s.Services = append(s.Services, name)
		}
		slices.Sort(s.Services)
		out = append(out, s)
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b apiSession) int { return adminapi.CompareSessions(a.Session, b.Session) })
	adminapi.WriteJSON(w, http.StatusOK, map[string]any{"role": "relay", "sessions": out})
}

// describePeer fills the fields every session has. It reads only those
// set before the session entered the registry: a gateway's outbox is set
// after (serveGateway), by its session's goroutine, without Relay.mu.
func describePeer(p *peer, tags int) apiSession {
	return apiSession{Session: adminapi.Session{
		ID: p.s.ID(), Role: p.role, Identity: p.id.String(), Tenant: p.id.Tenant,
		Remote: p.s.RemoteAddr().String(), Version: p.s.Version().String(), Since: p.since.UTC(),
	}, Tags: tags}
}

// gatewayName is the gateway's name for the API: its hello's, else its
// identity's.
func gatewayName(g *gateway) string {
	return cmp.Or(g.name, g.id.Name)
}

// addrString formats an address, "" when invalid.
func addrString(a interface {
	IsValid() bool
	String() string
}) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
