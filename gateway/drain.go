package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ztgate/ztgate/internal/adminapi"
)

// maxDrainDeadline bounds a drain deadline; a longer drain is one without
// a deadline.
const maxDrainDeadline = 7 * 24 * time.Hour

// handleDrain serves POST /v1/services/{name}/backends/{address}/drain
// ({address} as lookupBackends reads it) with
// an optional deadline (JSON body {"deadline": "30s"} or ?deadline=30s):
// the backend takes no new flows; its flows go on until they end or the
// deadline passes, when they are closed.
func (g *Gateway) handleDrain(w http.ResponseWriter, r *http.Request) {
	svc, bs, ok := g.lookupBackends(w, r)
	if !ok {
		return
	}
	body, ok := adminapi.ReadBody(w, r)
	if !ok {
		return
	}
	deadline, err := parseDrainDeadline(body, r.URL.Query().Get("deadline"))
	if err != nil {
		adminapi.RejectBody(w, r, body, err)
		return
	}
	if !g.drainBackends(svc.st, bs, deadline) {
		goneService(w, svc)
		return
	}
	adminapi.WriteJSON(w, http.StatusOK, g.describeService(svc))
}

// handleUndrain serves POST /v1/services/{name}/backends/{address}/undrain:
// the backend takes new flows again and a pending deadline is cancelled.
func (g *Gateway) handleUndrain(w http.ResponseWriter, r *http.Request) {
	svc, bs, ok := g.lookupBackends(w, r)
	if !ok {
		return
	}
	if !g.undrainBackends(svc.st, bs) {
		goneService(w, svc)
		return
	}
	adminapi.WriteJSON(w, http.StatusOK, g.describeService(svc))
}

// goneService answers a request about a service that was removed (and its
// state freed) while the request was being served.
func goneService(w http.ResponseWriter, svc *service) {
	adminapi.WriteErrors(w, http.StatusNotFound, fmt.Errorf("no service %q", svc.spec.Name))
}

// lookupBackends finds the service and its backends named in the path: an
// address (every backend on it: SRV records may put several there), the
// address:port of one backend from an SRV record (as GET /v1/services and
// the metrics name it), or the name the backends were configured by (a
// host name, the SRV name). It answers 404 itself.
func (g *Gateway) lookupBackends(w http.ResponseWriter, r *http.Request) (*service, []*backend, bool) {
	name, addr := strings.ToLower(r.PathValue("name")), r.PathValue("address")
	svc := g.tbl.Load().byName[name]
	if svc == nil {
		adminapi.WriteErrors(w, http.StatusNotFound, fmt.Errorf("no service %q", name))
		return nil, nil, false
	}
	list := svc.st.backends.Load().list
	out := matchBackends(list, addr)
	if len(out) == 0 {
		err := fmt.Errorf("service %q has no backend %q", name, addr)
		if ap, perr := netip.ParseAddrPort(addr); perr == nil && slices.ContainsFunc(list, func(b *backend) bool {
			return b.port == 0 && b.addr == ap.Addr().Unmap()
		}) {
			err = fmt.Errorf("%w: address:port names a backend from an SRV record by its record's port; name one given by address by its address (%s)", err, ap.Addr())
		}
		adminapi.WriteErrors(w, http.StatusNotFound, err)
		return nil, nil, false
	}
	return svc, out, true
}

// matchBackends returns the backends of list that s names, as
// lookupBackends reads it. An address:port names a backend with a port of
// its own (from an SRV record) only: the others have the service's
// targets, and are named by address. A host or SRV name matches in any
// case: the configuration folds it to lower case, and the operator names
// it as written.
func matchBackends(list []*backend, s string) []*backend {
	ip, ipErr := netip.ParseAddr(s)
	ap, apErr := netip.ParseAddrPort(s)
	var out []*backend
	for _, b := range list {
		if (ipErr == nil && b.addr == ip.Unmap()) ||
			(apErr == nil && b.port != 0 && b.key() == backendKey{ap.Addr().Unmap(), ap.Port()}) ||
			strings.EqualFold(b.origin(), s) {
			out = append(out, b)
		}
	}
	return out
}

// parseDrainDeadline parses the deadline of a drain request from its body
// (empty, or {"deadline": "30s"}) and its deadline query parameter; when
// both are given they must agree. 0 means no deadline.
func parseDrainDeadline(body []byte, query string) (time.Duration, error) {
	var req struct {
		Deadline string `json:"deadline"`
	}
	if len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return 0, fmt.Errorf("body: %w", err)
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return 0, errors.New("body: unexpected data after the JSON object")
		}
	}
	s := req.Deadline
	switch {
	case s == "":
		s = query
	case query != "" && query != s:
		return 0, fmt.Errorf("deadline %q in the body and %q in the query differ", s, query)
	}
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > maxDrainDeadline {
		return 0, fmt.Errorf("deadline %q is not a duration between 0 and %s, such as \"30s\"", s, maxDrainDeadline)
	}
	return d, nil
}

// drainBackends takes bs out of rotation. With a deadline, their flows
// still open then are closed; a new drain replaces an earlier deadline.
// false: the state was freed (its service removed) or the gateway is
// closing, and nothing was done.
func (g *Gateway) drainBackends(st *serviceState, bs []*backend, deadline time.Duration) bool {
	hc := &st.health
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.closed { // its service was removed and the state freed meanwhile, or the gateway is closing
		return false
	}
	clk := hc.clockOr(g)
	for _, b := range bs {
		e := hc.entryLocked(b)
		e.stopDrain()
		var until time.Time
		if deadline > 0 && !g.closing.Load() { // after stopHealth no timer may start
			until = clk.Now().Add(deadline)
			gen := e.drainGen
			e.drain = clk.AfterFunc(deadline, func() { g.drainDeadline(st, b, gen) })
		}
		b.mu.Lock()
		b.draining, b.drainUntil, b.drainDone = true, until, false
		b.mu.Unlock()
		g.setHealthGauge(st.name, b)
		g.log.Info("backend draining", "service", st.name, "backend", b.label(), "deadline", deadline, "active_flows", b.active.Load())
	}
	return true
}

// rearmDrainLocked arms the deadline of a draining backend whose entry has
// none: its service was removed, which stopped the timer, and added back
// before its last flow ended, which kept the backend and its drain. A
// deadline that passed meanwhile fires at once. The caller holds hc.mu.
func (g *Gateway) rearmDrainLocked(st *serviceState, hc *healthChecks, e *healthEntry, b *backend) {
	b.mu.Lock()
	draining, until, done := b.draining, b.drainUntil, b.drainDone
	b.mu.Unlock()
	if e.drain != nil || !draining || until.IsZero() || done || g.closing.Load() {
		return
	}
	clk := hc.clockOr(g)
	gen := e.drainGen
	e.drain = clk.AfterFunc(max(0, until.Sub(clk.Now())), func() { g.drainDeadline(st, b, gen) })
}

// undrainBackends puts bs back into rotation and cancels pending deadlines;
// false as drainBackends.
func (g *Gateway) undrainBackends(st *serviceState, bs []*backend) bool {
	hc := &st.health
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.closed {
		return false
	}
	for _, b := range bs {
		if e := hc.entries[b]; e != nil {
			e.stopDrain()
		}
		b.mu.Lock()
		was := b.draining
		b.draining, b.drainUntil, b.drainDone = false, time.Time{}, false
		b.mu.Unlock()
		g.setHealthGauge(st.name, b)
		if was {
			g.log.Info("backend undrained", "service", st.name, "backend", b.label())
		}
	}
	return true
}

// drainDeadline closes the flows still bound to b when the drain deadline
// of generation gen passes, unless b was undrained or drained anew since.
func (g *Gateway) drainDeadline(st *serviceState, b *backend, gen uint64) {
	if !g.enter() {
		return
	}
	defer g.leave()
	hc := &st.health
	hc.mu.Lock()
	e := hc.entries[b]
	current := e != nil && e.drainGen == gen && e.drain != nil
	if current {
		e.drain = nil
		b.mu.Lock()
		b.drainDone = true // a later sync arms it no more (rearmDrainLocked)
		b.mu.Unlock()
	}
	hc.mu.Unlock()
	if !current {
		return
	}
	n := 0
	for _, f := range g.flows.list(func(f *flow) bool { return f.backend == b }) {
		f.close("drained")
		n++
	}
	g.log.Info("drain deadline passed", "service", st.name, "backend", b.label(), "closed_flows", n)
}
