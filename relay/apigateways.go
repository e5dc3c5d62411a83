package relay

import (
	"cmp"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
)

// apiGatewayService is a service of a gateway in GET /v1/gateways.
type apiGatewayService struct {
	Name    string `json:"name"`
	Healthy bool   `json:"healthy"`
	State   string `json:"state"` // healthy, down or draining
}

// apiGatewaySession is a gateway in GET /v1/gateways: a live session, or
// a drained name without one (Connected false).
type apiGatewaySession struct {
	Name       string              `json:"name"`
	Connected  bool                `json:"connected"`
	Drained    bool                `json:"drained"`
	Identity   string              `json:"identity,omitempty"`
	Session    uint64              `json:"session,omitempty"`
	Remote     string              `json:"remote,omitempty"`
	Since      *time.Time          `json:"since,omitempty"`
	Candidates []string            `json:"candidates"`
	Tags       int                 `json:"tags"`
	Flows      int64               `json:"flows"`
	Services   []apiGatewayService `json:"services"`
}

func (r *Relay) handleGateways(w http.ResponseWriter, _ *http.Request) {
	adminapi.WriteJSON(w, http.StatusOK, map[string]any{"gateways": r.gatewaysView("")})
}

// gatewaysView describes the gateways named name, or every one for "".
func (r *Relay) gatewaysView(name string) []apiGatewaySession {
	r.mu.RLock()
	out := []apiGatewaySession{}
	seen := map[string]bool{}
	for g := range r.gateways {
		gn := gatewayName(g)
		if name != "" && gn != name {
			continue
		}
		seen[gn] = true
		since := g.since.UTC()
		v := apiGatewaySession{
			Name: gn, Connected: true, Drained: r.drained[gn], Identity: g.id.String(), Session: g.s.ID(),
			Remote: g.s.RemoteAddr().String(), Since: &since, Candidates: []string{}, Tags: len(g.tags),
			Flows: g.flows.Load(), Services: []apiGatewayService{},
		}
		for _, c := range g.candidates {
			v.Candidates = append(v.Candidates, c.String())
		}
		for svc, healthy := range g.services {
			v.Services = append(v.Services, apiGatewayService{Name: svc, Healthy: healthy, State: r.gatewayStateLocked(g, svc)})
		}
		slices.SortFunc(v.Services, func(a, b apiGatewayService) int { return cmp.Compare(a.Name, b.Name) })
		out = append(out, v)
	}
	for gn := range r.drained {
		if !seen[gn] && (name == "" || gn == name) {
			out = append(out, apiGatewaySession{Name: gn, Drained: true, Candidates: []string{}, Services: []apiGatewayService{}})
		}
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b apiGatewaySession) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Session, b.Session))
	})
	return out
}

// handleDrain serves POST /v1/gateways/{name}/drain and /undrain.
func (r *Relay) handleDrain(drained bool) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		name := req.PathValue("name")
		if !r.setDrained(name, drained) {
			adminapi.WriteErrors(w, http.StatusNotFound, errors.New("no gateway named "+name))
			return
		}
		adminapi.WriteJSON(w, http.StatusOK, map[string]any{"gateways": r.gatewaysView(name)})
	}
}
