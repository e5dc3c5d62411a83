package gateway

import (
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
	"github.com/ztgate/ztgate/tunnel"
)

// directAgents are the agents connected directly ([tunnel] listen) now,
// for GET /v1/sessions.
type directAgents struct {
	mu sync.Mutex
	m  map[*tunnel.Session]directAgent
}

// directAgent is one direct session as the API shows it.
type directAgent struct {
	id    tunnel.Identity
	in    *ingress
	since time.Time
}

func (d *directAgents) add(s *tunnel.Session, id tunnel.Identity, in *ingress) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = make(map[*tunnel.Session]directAgent)
	}
	d.m[s] = directAgent{id: id, in: in, since: time.Now()}
}

func (d *directAgents) remove(s *tunnel.Session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.m, s)
}

// handleSessions lists the agents connected directly, oldest first; 404
// without [tunnel] listen. "role" tells a gateway's answer from a relay's.
func (g *Gateway) handleSessions(w http.ResponseWriter, _ *http.Request) {
	if g.cfg.Tunnel.Listen == "" {
		adminapi.WriteErrors(w, http.StatusNotFound, errors.New("this gateway has no [tunnel] listen: no agent connects to it directly"))
		return
	}
	g.directAgents.mu.Lock()
	out := make([]adminapi.Session, 0, len(g.directAgents.m))
	for s, a := range g.directAgents.m {
		as := adminapi.Session{ID: s.ID(), Role: tunnel.RoleAgent, Identity: a.id.String(), Tenant: a.id.Tenant,
			Remote: s.RemoteAddr().String(), Version: s.Version().String(), Since: a.since.UTC()}
		if inner := a.in.innerAddr(); inner.IsValid() {
			as.Inner = inner.String()
		}
		out = append(out, as)
	}
	g.directAgents.mu.Unlock()
	slices.SortFunc(out, adminapi.CompareSessions)
	adminapi.WriteJSON(w, http.StatusOK, map[string]any{"role": "gateway", "sessions": out})
}
