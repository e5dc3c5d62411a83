package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/internal/adminapi"
)

// handleAddService serves POST /v1/services: the body is a [[service]] in
// JSON, validated by the same code as the configuration file.
func (g *Gateway) handleAddService(w http.ResponseWriter, r *http.Request) {
	body, ok := adminapi.ReadBody(w, r)
	if !ok {
		return
	}
	a := holdAnswer(w)
	g.reloadMu.Lock()
	g.addServiceLocked(a, r, body)
	g.reloadMu.Unlock()
	a.send()
}

// addServiceLocked is handleAddService under reloadMu, answering into w.
func (g *Gateway) addServiceLocked(w http.ResponseWriter, r *http.Request, body []byte) {
	svc, err := conf.ParseServiceJSON(body, g.running.ServiceContext())
	if err != nil {
		adminapi.RejectBody(w, r, body, confErrors(err)...)
		return
	}
	svc.Source = "api"
	if _, exists := g.tbl.Load().byName[svc.Name]; exists {
		adminapi.WriteErrors(w, http.StatusConflict, fmt.Errorf("service %q exists", svc.Name))
		return
	}
	api := append(slices.Clone(g.apiServices), svc)
	if err := validateAgainst(g.running, g.apiServices, svc); err != nil {
		adminapi.WriteErrors(w, http.StatusConflict, confErrors(err)...)
		return
	}
	d, err := g.changeAPIServicesLocked(svc.Name, body, api)
	if err != nil {
		status := http.StatusInternalServerError // the store or the VIP state could not be saved
		switch {
		case errors.Is(err, errNotUndone): // 500 whatever the cause: the file keeps the change
		case poolConflict(err):
			status = http.StatusConflict
		case errors.Is(err, ErrInvalidConfig):
			status = http.StatusBadRequest
		}
		adminapi.WriteErrors(w, status, err)
		return
	}
	g.logDiff("service added through the API", d)
	adminapi.WriteJSON(w, http.StatusCreated, g.describeService(g.tbl.Load().byName[svc.Name]))
}

// handleDeleteService serves DELETE /v1/services/{name}; flows of the
// service drain.
func (g *Gateway) handleDeleteService(w http.ResponseWriter, r *http.Request) {
	name := strings.ToLower(r.PathValue("name")) // as the configuration and POST fold it
	a := holdAnswer(w)
	g.reloadMu.Lock()
	g.deleteServiceLocked(a, name)
	g.reloadMu.Unlock()
	a.send()
}

// deleteServiceLocked is handleDeleteService under reloadMu, answering
// into w.
func (g *Gateway) deleteServiceLocked(w http.ResponseWriter, name string) {
	s, ok := g.tbl.Load().byName[name]
	if !ok {
		adminapi.WriteErrors(w, http.StatusNotFound, fmt.Errorf("no service %q", name))
		return
	}
	if s.spec.Source != "api" {
		adminapi.WriteErrors(w, http.StatusConflict, fmt.Errorf("service %q is defined in the configuration file %s: remove it there and reload", name, g.cfg.Path))
		return
	}
	api := slices.DeleteFunc(slices.Clone(g.apiServices), func(s catalog.Service) bool { return s.Name == name })
	d, err := g.changeAPIServicesLocked(name, nil, api)
	if err != nil {
		adminapi.WriteErrors(w, http.StatusInternalServerError, err)
		return
	}
	g.logDiff("service deleted through the API", d)
	w.WriteHeader(http.StatusNoContent)
}

// errNotUndone: a change through the API was saved, not applied, and could
// not be taken out of the store's file again.
var errNotUndone = errors.New("the change could not be undone")

// changeAPIServicesLocked saves the API's services with name's body set
// (nil: removed), then applies api, the services that makes. The store is
// saved first so that nothing is served that the next start would not
// serve; if applying fails the store is rolled back, and if the change is
// still in its file after all the error matches errNotUndone. On any error
// the running services are as they were. The caller holds reloadMu.
func (g *Gateway) changeAPIServicesLocked(name string, body json.RawMessage, api []catalog.Service) (Diff, error) {
	undo, err := g.apiStore.save(g.apiStore.with(name, body))
	if err != nil {
		return Diff{}, err
	}
	d, err := g.applyLocked(g.running, api)
	if err != nil {
		if uerr := undo(); uerr != nil {
			g.log.Error("API services: a change that was not applied stays in the file", "service", name, "err", uerr)
			return Diff{}, fmt.Errorf("%w (%w): %w", err, errNotUndone, uerr)
		}
		return Diff{}, err
	}
	g.apiServices = api
	return d, nil
}

// handleReload serves POST /v1/reload.
func (g *Gateway) handleReload(w http.ResponseWriter, r *http.Request) {
	d, err := g.Reload()
	if err != nil {
		adminapi.WriteErrors(w, reloadStatus(err), confErrors(err)...)
		return
	}
	adminapi.WriteJSON(w, http.StatusOK, d)
}

// reloadStatus is the status of a failed reload: 400 when the configuration
// is at fault (its author fixes it and reloads), 409 when there is no file
// to reload, 500 when the gateway is (it could not read the file or save
// its state; the log has the details). The running configuration stays in
// every case.
func reloadStatus(err error) int {
	switch {
	case errors.Is(err, ErrInvalidConfig):
		return http.StatusBadRequest
	case errors.Is(err, errNotFromFile):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// handleCloseFlows serves DELETE /v1/flows?tenant=&service=&backend=: it
// closes the matching flows; without a filter it needs all=true.
func (g *Gateway) handleCloseFlows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	tenant, svc, backend := q.Get("tenant"), q.Get("service"), q.Get("backend")
	if tenant == "" && svc == "" && backend == "" && q.Get("all") != "true" {
		adminapi.Reject(w, r, http.StatusBadRequest, adminapi.InvalidRequest, errors.New("name a tenant, service or backend to close their flows, or all=true to close every flow"))
		return
	}
	fs := g.flows.list(flowFilter(tenant, svc, backend))
	for _, f := range fs {
		f.close("closed_by_api")
	}
	adminapi.WriteJSON(w, http.StatusOK, map[string]int{"closed": len(fs)})
}

// confErrors returns the errors of a conf.Errors, or err alone.
func confErrors(err error) []error {
	var errs conf.Errors
	if errors.As(err, &errs) {
		return errs
	}
	return []error{err}
}

// validateAgainst runs the cross-service checks (duplicate names and pins,
// pool room) of svc, a service posted to the API, against the file's
// services and api. Errors name svc's keys as in its body and the other
// services by name and origin (conf.ValidateAddedService).
func validateAgainst(cfg *conf.Gateway, api []catalog.Service, svc catalog.Service) error {
	existing, err := mergeServices(cfg.Services, api)
	if err != nil {
		return err
	}
	if errs := conf.ValidateAddedService(existing, svc, cfg.ServiceContext()); len(errs) > 0 {
		return errs
	}
	return nil
}
