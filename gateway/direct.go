package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// startDirect accepts agents on [tunnel] listen: the direct path, no relay
// in between. Each session is its own ingress, bound to the identity of the
// agent's certificate.
func (g *Gateway) startDirect() error {
	l, err := tunnel.Listen(g.cfg.Tunnel.Listen, tunnel.ListenConfig{
		Credentials:  g.creds,
		Registerer:   g.m.reg,
		ResetKeyFile: tunnel.ResetKeyFile(g.cfg.StateDir),
	}, g.root.With("component", "tunnel-listener"))
	if err != nil {
		return fmt.Errorf("gateway: tunnel listen: %w", err)
	}
	g.direct = l
	g.log.Info("accepting agents directly", "addr", l.Addr().String())
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			s, err := l.Accept(g.ctx)
			if err != nil {
				return
			}
			if !g.enter() {
				s.Close("gateway shutting down")
				return
			}
			go func() {
				defer g.leave()
				err := g.serveDirect(s)
				s.Close(fmt.Sprint(err))
			}()
		}
	}()
	return nil
}

// errWrongRole refuses a peer whose certificate is not an agent's.
var errWrongRole = errors.New("wrong role")

// serveDirect runs one direct agent session.
func (g *Gateway) serveDirect(s *tunnel.Session) error {
	id := s.Peer()
	if id.Tenant == "" && g.creds.Insecure() {
		id = tunnel.Identity{Tenant: tunnel.DefaultTenant, Role: tunnel.RoleAgent, Name: "anonymous"}
		g.log.Warn("INSECURE: unauthenticated agent accepted", "remote", s.RemoteAddr())
	}
	if id.Role != tunnel.RoleAgent || (s.Version() == tunnel.V2 && s.Hello().Role != tunnel.RoleAgent) {
		g.m.tunnelRefused("wrong_role")
		if s.Version() == tunnel.V2 {
			s.Refuse("wrong_role", "only agents connect to a gateway's [tunnel] listen")
		}
		return fmt.Errorf("%w: %s", errWrongRole, id)
	}
	if bounded := s.Peer().Tenant != "" && !id.Legacy; bounded {
		if !g.directSessions.take(id.String()) {
			g.m.tunnelRefused("too_many_sessions")
			msg := fmt.Sprintf("%s has %d direct sessions to this gateway already", id, tunnel.MaxIdentitySessions)
			s.Refuse("busy", msg)
			return errors.New(msg)
		}
		defer g.directSessions.give(id.String())
	}
	if s.Version() == tunnel.V2 && !s.Hello().InnerAddr.Is4() {
		g.m.tunnelRefused("bad_hello")
		s.Refuse(tunnel.CodeBadMessage, "hello needs an IPv4 inner_addr")
		return errors.New("agent without an inner address")
	}
	in := g.directIngress(id, s)
	if s.Version() == tunnel.V2 {
		in.pinInner(s.Hello().InnerAddr)
	}
	if err := g.ingresses.add(in); err != nil {
		in.out.Close()
		s.Refuse("busy", err.Error())
		return err
	}
	defer g.closeIngress(in, "agent_disconnected")
	g.directAgents.add(s, id, in)
	defer g.directAgents.remove(s)
	g.fitLink(s, 0)
	g.log.Info("agent connected directly", "identity", id.String(), "remote", s.RemoteAddr(), "version", s.Version().String())

	ctx, cancel := context.WithCancel(g.ctx)
	defer cancel()
	if s.Version() != tunnel.V2 {
		return g.directDatagrams(ctx, s, in, id)
	}
	if err := s.SendWelcome(tunnel.Welcome{MaxPacket: s.MaxDatagram()}); err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Go(func() { g.pushDirectory(ctx, s, id) })
	wg.Go(func() { g.directControl(s) })
	err := g.directDatagrams(ctx, s, in, id)
	cancel()
	s.Close(fmt.Sprint(err)) // ends directControl's read
	wg.Wait()
	return err
}

// directOutboxLen bounds the replies waiting for one direct session. It is
// the relay's per-session bound (relay/serve.go), so that an agent's
// downlink has the same room for a TCP burst directly as through a relay.
// Queued replies hold pooled buffers, given back once sent; an idle
// session holds only the channel (56 KiB).
const directOutboxLen = 1024

// outboxBudget bounds the replies queued in all direct sessions' outboxes
// together (tunnel.OutboxBudget; the relay session's stays out of it:
// relayOutbox): 16 full direct outboxes, 32 MiB of pooled buffers. Past it a session that holds tunnel.OutboxReserve
// replies or more drops its new ones as outbox_budget: many slow agents
// at once hold that much and 64 replies each, not 2 MiB each.
const outboxBudget = 16 * directOutboxLen

// directIngress is the ingress of a direct session of identity id, whose
// replies s sends from an outbox of their own, so that the tunnel link's
// writer never waits for this session's send queue. A reply the session
// fails to send is counted as send_error, as when the writer sent it, and
// so is one still queued when the outbox is closed.
// closeIngress stops the outbox; until the ingress is added, whoever made
// it does.
func (g *Gateway) directIngress(id tunnel.Identity, s tunnel.DatagramSender) *ingress {
	return &ingress{
		peer:     peer{tenant: id.Tenant, identity: id.String()},
		services: id.Services,
		out:      tunnel.NewOutbox(s, directOutboxLen, g.outboxes, func(error) { g.m.tunnelDrop("send_error") }),
	}
}

// directControl answers a direct agent's pings, its liveness check of the
// path, until the session ends. Other messages are answered as the
// control stream's rules say (docs/protocol.md).
func (g *Gateway) directControl(s *tunnel.Session) {
	for {
		typ, raw, err := s.Next()
		msg, err := tunnel.DecodeControl(typ, raw, err)
		if err != nil {
			reply, ok := tunnel.ReplyFor(err)
			if !ok {
				return
			}
			s.Send(reply)
			continue
		}
		switch m := msg.(type) {
		case *tunnel.Ping:
			s.Send(tunnel.Pong{Type: tunnel.MessagePong, Seq: m.Seq})
		case *tunnel.ErrorMessage:
			g.log.Warn("direct agent error", "peer", s.Peer().String(), "code", m.Code, "message", m.Message)
		default:
			s.Send((&tunnel.UnknownTypeError{Type: typ}).Reply())
		}
	}
}

// directDatagrams carries an agent's packets into the netstack, each run
// of them that arrived together as one batch (GRO merges a flow's
// segments).
func (g *Gateway) directDatagrams(ctx context.Context, s *tunnel.Session, in *ingress, id tunnel.Identity) error {
	registered := map[string]bool{} // ztna-v1 registrations
	var buf []byte
	batch := g.tunLink.NewBatch()
	return s.ReceiveBatches(ctx, func(b []byte) {
		d, err := tunnel.Parse(s.Version(), b)
		if err != nil {
			if s.Version() == tunnel.V1 && errors.Is(err, tunnel.ErrInvalidServiceID) && tunnel.Kind(b) == tunnel.TypeAgentRegistration {
				if nack, err := tunnel.AppendNack(buf[:0], tunnel.StatusInvalid, ""); err == nil {
					s.SendDatagram(nack)
				}
			}
			g.m.tunnelDrop("malformed_datagram")
			return
		}
		switch {
		case d.Type == tunnel.TypeAgentRegistration && s.Version() == tunnel.V1:
			svc := string(d.Service)
			if g.mayReach(id, svc) {
				registered[svc] = true
				buf, err = tunnel.AppendAck(buf[:0], svc)
			} else {
				g.m.tunnelRefused("denied")
				buf, err = tunnel.AppendNack(buf[:0], tunnel.StatusDenied, svc)
			}
			if err == nil {
				s.SendDatagram(buf)
			}
		case d.Type == tunnel.TypeGatewayRegistration && s.Version() == tunnel.V1:
			// The original system's connector offering a service: refused
			// as at the relay, and told so, not left waiting.
			g.m.tunnelRefused("denied")
			if buf, err = tunnel.AppendNack(buf[:0], tunnel.StatusDenied, string(d.Service)); err == nil {
				s.SendDatagram(buf)
			}
		case d.Type == tunnel.TypeRouted:
			svc := string(d.Service)
			if !g.mayReach(id, svc) || (s.Version() == tunnel.V1 && !registered[svc]) {
				g.m.tunnelDrop("not_authorised")
				return
			}
			g.deliverTunnel(in, svc, d.Packet, batch)
		case d.Type == tunnel.TypeIP:
			svc, ok := g.rawService(id, b)
			if !ok || (svc != "" && s.Version() == tunnel.V1 && !registered[svc]) {
				g.m.tunnelDrop("not_authorised")
				return
			}
			g.deliverTunnel(in, svc, b, batch)
		default: // registrations on ztna-v2 among them: they are ztna-v1's, as at the relay
			g.m.tunnelDrop("unexpected_datagram")
		}
	}, batch.Flush)
}

// rawService authorises a raw IP packet from a direct agent, which names
// no service: the service is the one whose VIP the packet is sent to, and
// the identity must be allowed to reach it like a routed packet's. Packets
// to the gateway's own address (DNS of the tenant's view, ping) need no
// service (""). A packet that is not IPv4 passes with "" for deliverTunnel
// to count (not_ipv4 or malformed).
func (g *Gateway) rawService(id tunnel.Identity, pkt []byte) (string, bool) {
	_, dst, ok := netstack.IPv4Addrs(pkt)
	if !ok || dst == g.cfg.TUN.GatewayAddr() {
		return "", true
	}
	s := g.tbl.Load().lookupVIP(dst)
	if s == nil || !g.mayReach(id, s.spec.Name) {
		return "", false
	}
	return s.spec.Name, true
}

// mayReach reports whether an agent identity may reach a service here.
func (g *Gateway) mayReach(id tunnel.Identity, service string) bool {
	s := g.tbl.Load().byName[service]
	return s != nil && s.spec.Allows(id.Tenant) && id.Permits(service)
}

// pushDirectory sends the agent its directory at connect and whenever the
// services or their health change. One that cannot be sent (over
// tunnel.MaxMessageSize) is logged, and the next change is tried.
func (g *Gateway) pushDirectory(ctx context.Context, s *tunnel.Session, id tunnel.Identity) {
	var last []byte
	t := time.NewTicker(healthReportInterval)
	defer t.Stop()
	for {
		d := g.directory(id.Tenant, id)
		d.Type = tunnel.MessageDirectory
		// Encoded once: the body both detects a change and is what is sent.
		body, err := json.Marshal(d)
		if err == nil && !bytes.Equal(body, last) {
			last = body
			if err := s.Send(json.RawMessage(body)); err != nil {
				if s.Err() != nil {
					return
				}
				g.log.Error("cannot send a direct agent its directory; it keeps its last one", "identity", id.String(),
					"bytes", len(body), "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// identitySessions counts the direct sessions of each agent identity.
type identitySessions struct {
	mu sync.Mutex
	n  map[string]int
}

// take counts a new session of id, or reports false when id has
// tunnel.MaxIdentitySessions already.
func (c *identitySessions) take(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[id] >= tunnel.MaxIdentitySessions {
		return false
	}
	if c.n == nil {
		c.n = make(map[string]int)
	}
	c.n[id]++
	return true
}

// give ends a session of id.
func (c *identitySessions) give(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[id]--; c.n[id] <= 0 {
		delete(c.n, id)
	}
}

// endUnreachable ends the flows of direct agents that t no longer lets
// reach the flow's service (the agent's tenant removed from it, or the
// service removed): from t on the direct path drops their packets as
// not_authorised (mayReach), so they could carry nothing until their idle
// timeout, or drain_timeout, while holding their backend's connection;
// ended, the client is told at once. A flow added after the pass checks
// itself (newFlow).
func (g *Gateway) endUnreachable(t *table) {
	for _, f := range g.flows.list(func(f *flow) bool { return g.directUnreachable(t, f) }) {
		f.cut("rights_removed")
	}
}

// directUnreachable reports whether f is a flow of a direct agent whose
// service t does not let the agent reach. A relay tag's flows are the
// relay's to end: it closes the tags of a tenant a service no longer
// admits, and of a service the gateway no longer registers.
func (g *Gateway) directUnreachable(t *table, f *flow) bool {
	if g.ingresses == nil || !synthPrefix.Contains(f.client.Addr()) {
		return false // no tunnel: a link-local source is a LAN client's
	}
	in := g.ingresses.lookup(f.client.Addr())
	if in == nil || in.tagged || in.peer != f.peer {
		return false
	}
	return unreachableBy(t, in, f.svc.spec.Name)
}

// unreachableBy reports whether t does not let the direct ingress in
// reach the service name: gone, not open to its tenant, or not among the
// services its identity has rights for.
func unreachableBy(t *table, in *ingress, name string) bool {
	s := t.byName[name]
	return s == nil || !s.spec.Allows(in.peer.tenant) || (in.services != nil && !slices.Contains(in.services, name))
}
