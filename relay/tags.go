package relay

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"

	"github.com/ztgate/ztgate/tunnel"
)

// maxTagDraws bounds the search for a free tag; with 2^32 values a
// collision is already rare, 16 in a row means the table is broken.
const maxTagDraws = 16

// drawTagLocked returns an unguessable tag that is neither 0 nor live, or
// 0 when none was found. Callers hold r.mu.
func (r *Relay) drawTagLocked() uint32 {
	var b [4]byte
	for range maxTagDraws {
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
		if id := binary.BigEndian.Uint32(b[:]); id != 0 && r.tags[id] == nil {
			return id
		}
	}
	return 0
}

// chooseGatewayLocked picks the gateway for a new tag of svc: among the
// gateways that report the service healthy (or, if none does, all of
// them) the one with the fewest tags, the earliest registered on a tie.
func chooseGatewayLocked(svc *service) *gateway {
	var best *gateway
	bestHealthy := false
	for _, g := range svc.gateways {
		healthy := g.services[svc.name]
		switch {
		case best == nil,
			healthy && !bestHealthy,
			healthy == bestHealthy && len(g.tags) < len(best.tags):
			best, bestHealthy = g, healthy
		}
	}
	return best
}

// openTag draws the tag of (a, service) on a gateway chosen for it, after
// the checks that only a new tag needs: the service exists, the agent may
// reach it, a gateway serves it. It tells the gateway with tag_open before
// returning, so that the tag's first 0x30 follows it. inner is the
// agent's inner address (for v1 possibly not yet pinned).
func (r *Relay) openTag(a *agent, service string, inner netip.Addr) (*tag, dropReason) {
	r.mu.Lock()
	svc := r.services[service]
	var reason dropReason
	var g *gateway
	switch {
	case svc == nil:
		reason = dropUnknownService
	case !a.may(svc):
		reason = dropNotAuthorized
	default:
		if g = chooseGatewayLocked(svc); g == nil {
			reason = dropNoGateway
		}
	}
	var t *tag
	if g != nil {
		if id := r.drawTagLocked(); id != 0 {
			t = &tag{id: id, service: svc.name, agent: a, gw: g}
			r.tags[id], g.tags[id], a.tags[id] = t, t, t
			r.m.tags.Set(float64(len(r.tags)))
		} else {
			reason = dropNoGateway
		}
	}
	r.mu.Unlock()
	if t == nil {
		return nil, reason
	}
	err := g.s.Send(&tunnel.TagOpen{
		Type: tunnel.MessageTagOpen, Tag: t.id, Service: t.service,
		Tenant: a.id.Tenant, Identity: a.id.String(), InnerAddr: inner,
	})
	if err != nil {
		r.mu.Lock()
		r.killTagLocked(t)
		r.mu.Unlock()
		return nil, dropGatewayGone
	}
	return t, 0
}

// killTagLocked takes a tag out of the table; its agent draws a new one
// with its next packet. Callers hold r.mu.
func (r *Relay) killTagLocked(t *tag) {
	if t.dead.Swap(true) {
		return
	}
	delete(r.tags, t.id)
	delete(t.gw.tags, t.id)
	delete(t.agent.tags, t.id)
	r.m.tags.Set(float64(len(r.tags)))
}

// tagsByGateway groups tag ids by the gateway they were routed to, for
// tag_close messages.
type tagsByGateway map[*gateway][]uint32

// add records a killed tag.
func (c tagsByGateway) add(t *tag) { c[t.gw] = append(c[t.gw], t.id) }

// send tells every gateway which of its tags died. Gateways that are gone
// do not need to know; errors are ignored (the session is ending).
func (c tagsByGateway) send() {
	for g, ids := range c {
		_ = g.s.Send(&tunnel.TagClose{Type: tunnel.MessageTagClose, Tags: ids})
	}
}
