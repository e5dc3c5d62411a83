package adminapi

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/internal/promreg"
)

// Reason is why a request was rejected: a label value of
// ztgate_api_requests_rejected_total.
type Reason string

// Reasons for ztgate_api_requests_rejected_total.
const (
	Unauthorized     Reason = "unauthorized"      // no or wrong bearer token (401)
	NoRoute          Reason = "no_route"          // no handler for the method and path (404, 405)
	MalformedRequest Reason = "malformed_request" // net/http refused the request line or headers itself and hung up
	BodyTooLarge     Reason = "body_too_large"    // over MaxBodyBytes (413)
	BodyReadFailed   Reason = "body_read_failed"  // shorter than announced, broken chunking, or too slow
	MalformedBody    Reason = "malformed_body"    // not JSON at all (400)
	InvalidRequest   Reason = "invalid_request"   // JSON or parameters the handler refused (400)

	ForbiddenHost        Reason = "forbidden_host"         // without a token, a Host that is not an IP address or localhost (403)
	CrossOrigin          Reason = "cross_origin"           // a change sent by a browser from another origin (403)
	UnsupportedMediaType Reason = "unsupported_media_type" // a change whose Content-Type is not application/json (415)
)

var reasons = []Reason{Unauthorized, NoRoute, MalformedRequest, BodyTooLarge, BodyReadFailed, MalformedBody, InvalidRequest,
	ForbiddenHost, CrossOrigin, UnsupportedMediaType}

// cut is the timeout that made the server close a connection: a label
// value of ztgate_api_connections_closed_total.
type cut int32

const (
	notCut        cut = iota
	headerTimeout     // no complete request header within ReadHeaderTimeout
	readTimeout       // the request body not received within ReadTimeout
	writeTimeout      // the response not taken by the client within WriteTimeout
	idleTimeout       // no new request on a kept-alive connection within IdleTimeout
	cuts
)

var cutNames = [cuts]string{"", "header_timeout", "read_timeout", "write_timeout", "idle_timeout"}

// metrics are the counters of the admin API; the maps and arrays are not
// written after newMetrics, so counting costs a lookup and an atomic add.
type metrics struct {
	rejected map[Reason]prometheus.Counter
	closed   [cuts]prometheus.Counter
}

// newMetrics registers the API's counters in reg, or takes the ones
// already registered there (the roles build a handler for each start of
// the API and tests build several); a nil reg keeps them unregistered.
func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_api_requests_rejected_total",
		Help: "Admin API requests answered with an error because of the request itself (bad token, no route, malformed or oversized request or body, a request a web page could have sent), by reason.",
	}, []string{"reason"})
	closed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_api_connections_closed_total",
		Help: "Admin API connections the server closed because the client was too slow (header, body, response or keep-alive timeout), by reason.",
	}, []string{"reason"})
	if reg != nil {
		var err error
		if rejected, err = register(reg, rejected); err != nil {
			return nil, err
		}
		if closed, err = register(reg, closed); err != nil {
			return nil, err
		}
	}
	m := &metrics{rejected: make(map[Reason]prometheus.Counter, len(reasons))}
	for _, r := range reasons {
		m.rejected[r] = rejected.WithLabelValues(string(r))
	}
	for c := headerTimeout; c < cuts; c++ {
		m.closed[c] = closed.WithLabelValues(cutNames[c])
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// its name (see promreg.Register).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := promreg.Register(reg, c)
	if err != nil {
		return c, fmt.Errorf("adminapi: %w", err)
	}
	return c, nil
}

// reject counts a rejected request; m may be nil.
func (m *metrics) reject(r Reason) {
	if m != nil {
		m.rejected[r].Inc()
	}
}

// metricsKey is the request context key of the API's metrics.
type metricsKey struct{}

// withMetrics hands m to the handlers below it through the request
// context, so that the shared helpers (requireToken, ReadBody, Reject)
// count in the registry of the role that serves the request.
func withMetrics(m *metrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), metricsKey{}, m)))
	})
}

// metricsOf returns the metrics of the API serving r, nil outside one.
func metricsOf(r *http.Request) *metrics {
	m, _ := r.Context().Value(metricsKey{}).(*metrics)
	return m
}

// router is what ServeMux offers to tell a request it has no route for.
type router interface {
	Handler(r *http.Request) (h http.Handler, pattern string)
}

// routed counts the requests next has no route for (it answers them 404
// or 405 itself) when next is a router.
func routed(next http.Handler) http.Handler {
	rt, ok := next.(router)
	if !ok {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := rt.Handler(r); pattern == "" {
			metricsOf(r).reject(NoRoute)
		}
		next.ServeHTTP(w, r)
	})
}
