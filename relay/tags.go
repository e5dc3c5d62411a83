package relay

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"slices"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// maxTagDraws bounds the search for a free tag; with 2^32 values a
// collision is already rare, 16 in a row means the table is broken.
const maxTagDraws = 16

// tagQuarantine is how long a dead tag's number is not drawn again: as
// long as the gateway holds a packet of an unannounced tag, so that no
// packet of the dead tag's flows, in flight either way, is taken for the
// new tag's. recentTagsMax bounds the numbers kept; past it (a burst of
// deaths) a number may come back sooner, as before the quarantine.
const (
	tagQuarantine = 2 * time.Second
	recentTagsMax = 1 << 16
)

// drawTagLocked returns an unguessable tag that is neither 0, nor live, nor
// dead less than tagQuarantine ago, or 0 when none was found. Callers hold
// r.mu.
func (r *Relay) drawTagLocked() uint32 {
	read := r.tagRand
	if read == nil {
		read = rand.Read
	}
	var b [4]byte
	now := time.Now()
	for range maxTagDraws {
		_, _ = read(b[:]) // crypto/rand.Read never fails
		id := binary.BigEndian.Uint32(b[:])
		if died, recent := r.recentTags[id]; id != 0 && r.tags[id] == nil && (!recent || now.Sub(died) > tagQuarantine) {
			return id
		}
	}
	return 0
}

// rememberDeadLocked keeps a dead tag's number out of the draws for
// tagQuarantine. Callers hold r.mu.
func (r *Relay) rememberDeadLocked(id uint32) {
	now := time.Now()
	if r.recentTags == nil {
		r.recentTags = make(map[uint32]time.Time)
	}
	if len(r.recentTags) >= recentTagsMax || now.Sub(r.recentSwept) > tagQuarantine {
		for id, died := range r.recentTags {
			if now.Sub(died) > tagQuarantine {
				delete(r.recentTags, id)
			}
		}
		r.recentSwept = now
	}
	if len(r.recentTags) < recentTagsMax {
		r.recentTags[id] = now
	}
}

// chooseGatewayLocked picks the gateway for a new flow of svc (or, with
// direct, for a direct path: only gateways that sent candidates). Only
// gateways whose definition admits the agent's tenant qualify; drained
// gateways take nothing new. Those that serve what the flow needs (its
// destination port, or ICMP) come first, then those that report the
// service healthy (the others stay eligible: the agent's directory may be
// behind). Among the best it keeps hint, the gateway a retransmitted SYN
// went to, else takes the one with the fewest flows, then the fewest
// tags, then the earliest registered. Callers hold r.mu.
func (r *Relay) chooseGatewayLocked(svc *service, w flowWants, hint *gateway, direct bool) *gateway {
	var best *gateway
	bestRank := -1
	for _, g := range svc.gateways {
		rank, ok := r.rankLocked(svc, g, w, direct)
		switch {
		case !ok:
		case rank == 3 && g == hint:
			return g
		case rank > bestRank, rank == bestRank && fewerFlows(g, best):
			best, bestRank = g, rank
		}
	}
	return best
}

// rankLocked reports whether g may take a new flow of svc for w (with
// direct, a direct path), and its rank as chooseGatewayLocked orders
// gateways: 2 when it serves what the flow needs, plus 1 when it reports
// the service healthy. Callers hold r.mu.
func (r *Relay) rankLocked(svc *service, g *gateway, w flowWants, direct bool) (int, bool) {
	def, ok := g.defs[svc.name]
	if !ok || !def.admits(w.tenant) ||
		r.drained[gatewayName(g)] || (direct && (len(g.candidates) == 0 || g.id.Legacy)) {
		return 0, false
	}
	rank := 0
	if w.servedBy(def) {
		rank += 2
	}
	if g.services[svc.name] {
		rank++
	}
	return rank, true
}

// directGatewaysLocked returns every gateway of svc that may take a
// direct path of an agent of tenant, in chooseGatewayLocked's order of
// preference (its first is the one chooseGatewayLocked picks): the
// signaling state machine binds an offer to the first of them with room
// for it. Callers hold r.mu.
func (r *Relay) directGatewaysLocked(svc *service, tenant string) []*gateway {
	type ranked struct {
		g     *gateway
		rank  int
		flows int64
		tags  int
	}
	var rs []ranked
	w := wantsOf(tenant, nil)
	for _, g := range svc.gateways {
		if rank, ok := r.rankLocked(svc, g, w, true); ok {
			// The load is read once: flows change meanwhile, and a sort
			// must see one order.
			rs = append(rs, ranked{g, rank, g.flows.Load(), len(g.tags)})
		}
	}
	slices.SortStableFunc(rs, func(x, y ranked) int {
		return cmp.Or(cmp.Compare(y.rank, x.rank), cmp.Compare(x.flows, y.flows), cmp.Compare(x.tags, y.tags))
	})
	gws := make([]*gateway, len(rs))
	for i, x := range rs {
		gws[i] = x.g
	}
	return gws
}

// fewerFlows orders gateways by load: flows, then tags.
func fewerFlows(g, than *gateway) bool {
	gf, tf := g.flows.Load(), than.flows.Load()
	return gf < tf || (gf == tf && len(g.tags) < len(than.tags))
}

// openTag draws the tag of (a, svc, g) and queues its tag_open to g before
// returning, so that the tag's first 0x30 follows it (one that overtakes
// it is held by the gateway until the tag_open arrives). g must still serve
// the service and admit the agent's tenant. inner is the agent's inner
// address (for v1 possibly not yet pinned).
func (r *Relay) openTag(a *agent, svc *service, g *gateway, inner netip.Addr) (*tag, dropReason) {
	r.mu.Lock()
	var t *tag
	reason := dropGatewayGone
	_, serves := g.services[svc.name]
	switch {
	case serves && !g.admits(svc.name, a.id.Tenant): // g's definition changed since it was chosen
		reason = dropNotAuthorized
	case serves:
		id := r.drawTagLocked()
		if id == 0 {
			reason = dropTagsExhausted
			break
		}
		// Posted (never blocking) under mu, so that a tag_close of the tag,
		// which is collected under mu and posted after, follows it.
		err := g.s.Post(&tunnel.TagOpen{
			Type: tunnel.MessageTagOpen, Tag: id, Service: svc.name,
			Tenant: a.id.Tenant, Identity: a.id.String(), InnerAddr: inner,
		})
		if err != nil {
			break // reason: dropGatewayGone
		}
		t = &tag{id: id, service: svc.name, vip: svc.vip, vip6: svc.vip6, agent: a, gw: g}
		r.tags[id], g.tags[id], a.tags[id] = t, t, t
		r.m.tags.Set(float64(len(r.tags)))
	}
	r.mu.Unlock()
	if t == nil {
		return nil, reason
	}
	return t, 0
}

// killTagLocked takes a tag out of the table; its agent draws a new one
// with its next packet. Callers hold r.mu.
func (r *Relay) killTagLocked(t *tag) {
	if t.dead.Swap(true) {
		return
	}
	t.uncount()
	r.rememberDeadLocked(t.id)
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

// tagCloseBatch bounds the tags of one tag_close, so that the message
// stays far below tunnel.MaxMessageSize (a tag is at most 11 bytes of JSON).
const tagCloseBatch = 2048

// send tells every gateway which of its tags died. Gateways that are gone
// do not need to know; errors are ignored (the session is ending).
func (c tagsByGateway) send() {
	for g, ids := range c {
		for batch := range slices.Chunk(ids, tagCloseBatch) {
			_ = g.s.Post(&tunnel.TagClose{Type: tunnel.MessageTagClose, Tags: batch})
		}
	}
}
