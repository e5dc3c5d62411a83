package gateway

import (
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/ztgate/ztgate/tunnel"
)

// The gateway's part of the direct path (docs/direct-path.md): it tells
// the relay where agents may reach its [tunnel] listen (the candidates of
// its register) and answers the offers the relay forwards with them. The
// agent then dials the listener itself (direct.go), where its certificate
// decides what it may reach, exactly as for any direct agent.

// directCandidates returns the addresses of the direct listener that
// agents may dial: the configured address when it is a specific IP, else
// the host's interface addresses (neither loopback nor link-local); then
// the address the relay observed (its welcome's) with the listen port,
// for a gateway behind a NAT that forwards it. None without [tunnel]
// listen or with port 0.
func (g *Gateway) directCandidates(observed netip.AddrPort) []netip.AddrPort {
	host, port, ok := g.listenAddr()
	if !ok {
		return nil
	}
	var out []netip.AddrPort
	add := func(a netip.Addr) {
		ap := netip.AddrPortFrom(a.Unmap(), port)
		if len(out) < tunnel.MaxCandidates && !slices.Contains(out, ap) {
			out = append(out, ap)
		}
	}
	if host.IsValid() && !host.IsUnspecified() {
		add(host)
	} else {
		for _, a := range tunnel.HostAddrs() {
			if !host.IsValid() || host.Is6() || a.Is4() { // 0.0.0.0 listens on IPv4 only
				add(a)
			}
		}
	}
	if tunnel.Dialable(observed.Addr()) {
		add(observed.Addr())
	}
	return out
}

// listenAddr parses [tunnel] listen; host is invalid when the listen
// address names no IP (an empty host, or a name).
func (g *Gateway) listenAddr() (host netip.Addr, port uint16, ok bool) {
	h, p, err := net.SplitHostPort(g.cfg.Tunnel.Listen)
	if err != nil {
		return netip.Addr{}, 0, false
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return netip.Addr{}, 0, false
	}
	host, _ = netip.ParseAddr(h)
	return host, uint16(n), true
}

// answerOffer answers an offer the relay forwarded: the candidates, or an
// error when the gateway takes no direct connections.
func (rs *relaySession) answerOffer(m *tunnel.Offer) {
	g := rs.g
	cands := g.directCandidates(rs.s.Welcome().Observed)
	if len(cands) == 0 {
		_ = rs.s.Send(tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeNoListener,
			Message: "this gateway accepts no direct connections", SessionID: m.SessionID})
		return
	}
	g.log.Info("direct path offered", "agent", m.Agent, "service", m.Service, "agent_candidates", m.Candidates)
	_ = rs.s.Send(tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: m.SessionID, Service: m.Service, Candidates: cands})
}

// signalMessage handles the relay's messages of the direct path and its
// pings; it reports whether msg was one of them.
func (rs *relaySession) signalMessage(msg any) bool {
	switch m := msg.(type) {
	case *tunnel.Ping:
		_ = rs.s.Send(tunnel.Pong{Type: tunnel.MessagePong, Seq: m.Seq})
	case *tunnel.Offer:
		rs.answerOffer(m)
	case *tunnel.Result:
		rs.g.log.Info("direct path attempt", "success", m.Success, "address", m.Address.String())
	default:
		return false
	}
	return true
}
