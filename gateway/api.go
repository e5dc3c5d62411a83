package gateway

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/tunnel"
)

// startAPI serves the admin API on [api] listen: /healthz and /metrics are
// open, /v1/ needs the bearer token when [api] token_file is set.
func (g *Gateway) startAPI() error {
	api, err := adminapi.Start(adminapi.Config{
		Listen: g.cfg.API.Listen, TokenFile: g.cfg.API.TokenFile,
		Registry: g.m.reg, V1: g.v1Handler(), Log: g.log,
	})
	if err != nil {
		return fmt.Errorf("gateway: api: %w", err)
	}
	g.api = api
	return nil
}

// APIAddr returns the address the admin API listens on, or "" when off.
func (g *Gateway) APIAddr() string { return g.api.Addr() }

// apiHandler is the whole admin API with token (tests serve it directly).
func (g *Gateway) apiHandler(token string) http.Handler {
	return adminapi.Handler(token, g.m.reg, g.v1Handler())
}

// v1Handler routes the gateway's /v1/ API.
func (g *Gateway) v1Handler() http.Handler {
	v1 := http.NewServeMux()
	v1.HandleFunc("GET /v1/services", g.handleListServices)
	v1.HandleFunc("POST /v1/services", g.handleAddService)
	v1.HandleFunc("DELETE /v1/services/{name}", g.handleDeleteService)
	v1.HandleFunc("GET /v1/relay", g.handleRelay)
	v1.HandleFunc("GET /v1/sessions", g.handleSessions)
	v1.HandleFunc("GET /v1/flows", g.handleListFlows)
	v1.HandleFunc("DELETE /v1/flows", g.handleCloseFlows)
	v1.HandleFunc("POST /v1/reload", g.handleReload)
	v1.HandleFunc("POST /v1/services/{name}/backends/{address}/drain", g.handleDrain)
	v1.HandleFunc("POST /v1/services/{name}/backends/{address}/undrain", g.handleUndrain)
	return v1
}

// apiRelay is GET /v1/relay: the gateway's session to its relay.
type apiRelay struct {
	Relay  string            `json:"relay"` // [tunnel] relay
	Tunnel tunnel.LinkStatus `json:"tunnel"`
}

// handleRelay tells whether the session to the relay is up, to which
// relay since when, or why not and when the gateway dials again; 404
// without [tunnel] relay.
func (g *Gateway) handleRelay(w http.ResponseWriter, _ *http.Request) {
	if g.relay == nil {
		adminapi.WriteErrors(w, http.StatusNotFound, errors.New("this gateway has no [tunnel] relay"))
		return
	}
	adminapi.WriteJSON(w, http.StatusOK, apiRelay{Relay: g.cfg.Tunnel.Relay, Tunnel: g.relayLink.Status()})
}

// apiPort is a service port in API bodies.
type apiPort struct {
	Name     string `json:"name,omitempty"`
	Protocol string `json:"protocol"`
	Port     uint16 `json:"port"`
	Target   uint16 `json:"target"`
}

// apiBackend is a backend's state in API bodies. Backend names it as the
// metrics' backend label does and the drain API takes it (backend.label):
// the address, address:port for one from an SRV record, several of which
// may share an address; Port is that record's port.
type apiBackend struct {
	Address     string    `json:"address"`
	Backend     string    `json:"backend"`
	Port        uint16    `json:"port,omitempty"`
	Origin      string    `json:"origin,omitempty"`
	Healthy     bool      `json:"healthy"`
	State       string    `json:"state"`
	LastError   string    `json:"last_error"`
	LastChange  time.Time `json:"last_change,omitzero"`
	ActiveFlows int64     `json:"active_flows"`
	DrainUntil  time.Time `json:"drain_until,omitzero"`
}

// apiService is a service in GET /v1/services.
type apiService struct {
	Name        string       `json:"name"`
	VIP         string       `json:"vip"`
	VIP6        string       `json:"vip6,omitempty"`
	Tenants     []string     `json:"tenants"`
	Ports       []apiPort    `json:"ports"`
	Balance     string       `json:"balance"`
	Healthy     bool         `json:"healthy"`
	Source      string       `json:"source"`
	ActiveFlows int64        `json:"active_flows"`
	Backends    []apiBackend `json:"backends"`
}

func (g *Gateway) handleListServices(w http.ResponseWriter, r *http.Request) {
	t := g.tbl.Load()
	out := make([]apiService, 0, len(t.byName))
	for _, s := range t.byName {
		out = append(out, g.describeService(s))
	}
	slices.SortFunc(out, func(a, b apiService) int { return strings.Compare(a.Name, b.Name) })
	adminapi.WriteJSON(w, http.StatusOK, map[string]any{"services": out})
}

func (g *Gateway) describeService(s *service) apiService {
	as := apiService{
		Name:        s.spec.Name,
		Tenants:     s.spec.Tenants,
		Balance:     s.spec.Balance.String(),
		Source:      s.spec.Source,
		ActiveFlows: max(0, s.st.flows.Load()), // a freed state's count is freedFlows
		Backends:    []apiBackend{},
	}
	if as.Source == "" {
		as.Source = "file"
	}
	if s.vip.IsValid() {
		as.VIP = s.vip.String()
	}
	if s.vip6.IsValid() {
		as.VIP6 = s.vip6.String()
	}
	for _, p := range s.spec.Ports {
		as.Ports = append(as.Ports, apiPort{Name: p.Name, Protocol: p.Protocol.String(), Port: p.Port, Target: p.Target})
	}
	for _, b := range s.st.backends.Load().list {
		ab := b.describe()
		as.Healthy = as.Healthy || ab.Healthy
		as.Backends = append(as.Backends, ab)
	}
	return as
}

func (b *backend) describe() apiBackend {
	b.mu.Lock()
	defer b.mu.Unlock()
	ab := apiBackend{
		Address:     b.addr.String(),
		Backend:     b.label(),
		Port:        b.port,
		Origin:      b.origin(),
		Healthy:     b.usableLocked(), // as ztgate_backend_healthy: whether it takes new flows
		State:       b.state.String(),
		LastError:   b.lastErr,
		LastChange:  b.lastChange,
		ActiveFlows: b.active.Load(),
		DrainUntil:  b.drainUntil,
	}
	if b.draining {
		ab.State = "draining"
	}
	if ab.Origin == ab.Address {
		ab.Origin = ""
	}
	return ab
}

// apiFlow is a flow in GET /v1/flows.
type apiFlow struct {
	ID        uint64  `json:"id"`
	Protocol  string  `json:"protocol"`
	Client    string  `json:"client"`
	VIP       string  `json:"vip"`
	Tenant    string  `json:"tenant"`
	Identity  string  `json:"identity"`
	Service   string  `json:"service"`
	Backend   string  `json:"backend"`
	BytesUp   int64   `json:"bytes_up"`
	BytesDown int64   `json:"bytes_down"`
	AgeSecs   float64 `json:"age_seconds"`
}

func (g *Gateway) handleListFlows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	match := flowFilter(q.Get("tenant"), q.Get("service"), q.Get("backend"))
	now := g.now()
	fs := g.flows.list(match)
	out := make([]apiFlow, 0, len(fs))
	for _, f := range fs {
		out = append(out, apiFlow{
			ID: f.id, Protocol: f.proto, Client: f.client.String(), VIP: f.vip.String(),
			Tenant: f.peer.tenant, Identity: f.peer.identity, Service: f.svc.spec.Name,
			Backend: f.target.String(), BytesUp: f.up.Load(), BytesDown: f.down.Load(),
			AgeSecs: now.Sub(f.start).Seconds(),
		})
	}
	slices.SortFunc(out, func(a, b apiFlow) int { return cmp.Compare(a.ID, b.ID) })
	adminapi.WriteJSON(w, http.StatusOK, map[string]any{"flows": out})
}

// flowFilter matches flows by tenant, service and backend (address or
// address:port); empty fields match everything.
func flowFilter(tenant, svc, backend string) func(*flow) bool {
	tenant, svc = strings.ToLower(tenant), strings.ToLower(svc) // names are lower-cased labels
	return func(f *flow) bool {
		return (tenant == "" || f.peer.tenant == tenant) &&
			(svc == "" || f.svc.spec.Name == svc) &&
			(backend == "" || f.target.String() == backend || f.target.Addr().String() == backend)
	}
}

// heldAnswer keeps a handler's answer in memory until send writes it out.
// The handlers that change the service table answer under reloadMu, and
// the client reads its answer at its own pace: a client that reads
// nothing held every reload, every API change and the relay's VIP
// assignments for up to the API's write timeout (30 s) once its answer
// (a service of thousands of backends) outgrew the socket's buffers.
type heldAnswer struct {
	w      http.ResponseWriter
	status int  // the first WriteHeader's, as net/http keeps it
	told   bool // WriteHeader or Write was called
	body   bytes.Buffer
}

// holdAnswer returns an answer held for w. Its headers are w's own: they
// are sent with the status, by send.
func holdAnswer(w http.ResponseWriter) *heldAnswer {
	return &heldAnswer{w: w, status: http.StatusOK}
}

func (a *heldAnswer) Header() http.Header { return a.w.Header() }

// WriteHeader keeps the first status, as net/http does; a Write before it
// answers 200.
func (a *heldAnswer) WriteHeader(status int) {
	if !a.told {
		a.status, a.told = status, true
	}
}

func (a *heldAnswer) Write(b []byte) (int, error) {
	a.told = true
	return a.body.Write(b)
}

// send writes the held answer to the client.
func (a *heldAnswer) send() {
	a.w.WriteHeader(a.status)
	a.w.Write(a.body.Bytes())
}
