package gateway

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// tunnelLinkMTU is the largest packet the tunnel link is built for; each
// session lowers the link's MTU to what its datagrams carry.
const tunnelLinkMTU = 1500

// tunnelOn reports whether [tunnel] takes agents, through a relay or
// directly.
func (g *Gateway) tunnelOn() bool { return g.cfg.Tunnel.Relay != "" || g.cfg.Tunnel.Listen != "" }

// startTunnel opens the netstack link of tunnel ingress and starts the
// relay client and the direct listener that [tunnel] configures.
func (g *Gateway) startTunnel() error {
	tc := g.cfg.Tunnel
	if !g.tunnelOn() {
		return nil
	}
	creds, err := tunnel.NewCredentials(tunnel.CredentialsConfig{
		CertFile: tc.Cert, KeyFile: tc.Key, CAFile: tc.CA, Insecure: tc.Insecure, Role: tunnel.RoleGateway,
		OnReject: func(_ net.Addr, e *tunnel.AuthError) {
			g.m.tunnelRefused(e.Reason)
		},
	}, g.root.With("component", "tunnel"))
	if err != nil {
		return fmt.Errorf("gateway: tunnel: %w", err)
	}
	if tc.Insecure {
		g.log.Warn("INSECURE: [tunnel] insecure_allow_unauthenticated is on: peers without a verified ztgate identity are accepted; never use this in production")
	}
	g.creds = creds
	link, err := g.ns.NewLink(netstack.LinkConfig{
		Name:   "tunnel",
		MTU:    tunnelLinkMTU,
		Output: &tunnelOutput{g: g},
		Routes: []netip.Prefix{synthPrefix},
		Async:  true, // QUIC's datagram queue may block: never in the stack's goroutines
		// Every packet arrived in a QUIC datagram that its AEAD
		// authenticated: checking its checksums again costs 5 % of the
		// gateway's CPU on an upload and protects from nothing on the
		// wire. Race builds (the tests) check them all the same: they end
		// to end cover the buffers the tunnel hands back to quic-go, and a
		// packet damaged by one given back too early is dropped there
		// instead of reaching a backend.
		ChecksumsTrusted: !raceBuild,
	})
	if err != nil {
		return fmt.Errorf("gateway: tunnel link: %w", err)
	}
	g.tunLink = link
	if tc.Relay != "" {
		g.startRelayClient()
	}
	if tc.Listen != "" {
		if err := g.startDirect(); err != nil {
			return err
		}
	}
	return nil
}

// fitLink lowers the tunnel link's MTU to what a session's datagrams carry
// after overhead bytes of framing, so that no full-size packet is dropped.
func (g *Gateway) fitLink(s *tunnel.Session, overhead int) {
	max := s.MaxDatagram()
	if m := max - overhead; m > 0 && m < minLinkMTU {
		g.log.Warn("a tunnel session's datagrams are smaller than the tunnel link's least MTU: its larger packets are dropped",
			"session", s.ID(), "remote", s.RemoteAddr().String(), "max_datagram", max, "least_mtu", minLinkMTU)
	}
	if mtu, lower := linkMTUFor(g.tunLink.MTU(), max, overhead); lower {
		g.tunLink.SetMTU(mtu)
		g.log.Info("tunnel link MTU", "mtu", mtu, "session", s.ID())
	}
}

// minLinkMTU is the least MTU a session brings the tunnel link down to.
// Every QUIC path carries packets of 1200 bytes, whose DATAGRAMs hold more
// than this; only a peer that announces a small max_datagram_frame_size
// asks for less. The link is every session's: following such a peer would
// let one agent shrink the packets of every other session, of every
// tenant, until the gateway restarts. Its own larger packets are dropped
// instead (ztgate_packets_dropped_total{reason="send_error"}).
const minLinkMTU = 1024

// linkMTUFor is fitLink's arithmetic: the link's MTU for a session whose
// largest datagram is maxDatagram, and whether that lowers the current one.
// The link is shared by every session, so it only ever goes down, and not
// below minLinkMTU; a size of 0 (an ended session) changes nothing.
func linkMTUFor(current, maxDatagram, overhead int) (mtu int, lower bool) {
	if m := max(maxDatagram-overhead, minLinkMTU); maxDatagram-overhead > 0 && m < current {
		return m, true
	}
	return current, false
}

// serviceInfos describes the current services for a relay registration.
func (g *Gateway) serviceInfos() []tunnel.ServiceInfo {
	t := g.tbl.Load()
	out := make([]tunnel.ServiceInfo, 0, len(t.byName))
	for _, s := range t.byName {
		out = append(out, tunnel.ServiceInfo{
			Name:    s.spec.Name,
			Tenants: s.spec.Tenants,
			Ports:   portInfos(s.spec.Ports),
			ICMP:    s.spec.ICMP,
			Healthy: s.healthy(),
			VIP:     s.spec.VIP,
			VIP6:    s.spec.VIP6,
		})
	}
	slices.SortFunc(out, func(a, b tunnel.ServiceInfo) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

func portInfos(ps []catalog.Port) []tunnel.PortInfo {
	out := make([]tunnel.PortInfo, len(ps))
	for i, p := range ps {
		out[i] = tunnel.PortInfo{Name: p.Name, Protocol: p.Protocol.String(), Port: p.Port}
	}
	return out
}

// healthy reports whether the service has a backend that takes new flows.
func (s *service) healthy() bool {
	for _, b := range s.st.backends.Load().list {
		if b.usable() {
			return true
		}
	}
	return false
}

// directory is what an agent of tenant may reach, for a direct session.
func (g *Gateway) directory(tenant string, id tunnel.Identity) tunnel.Directory {
	t := g.tbl.Load()
	d := tunnel.Directory{
		Zone: g.cfg.DNS.Zone, TTL: int(g.cfg.DNS.TTL.Seconds()),
		Pool: g.cfg.TUN.Pool, Pool6: g.cfg.TUN.Pool6,
		Services: []tunnel.DirectoryService{},
	}
	// Attached to a relay, the VIPs are the relay's: both pools are, the
	// local ones would name addresses the relay never hands out.
	if p, p6, ok := g.relayPools(); ok {
		d.Pool, d.Pool6 = p, p6
	}
	for _, s := range t.byName {
		if !s.spec.Allows(tenant) || !id.Permits(s.spec.Name) || !s.vip.IsValid() {
			continue
		}
		d.Services = append(d.Services, tunnel.DirectoryService{
			Name: s.spec.Name, VIP: s.vip, VIP6: s.vip6, Ports: portInfos(s.spec.Ports),
			ICMP: s.spec.ICMP, Healthy: s.healthy(),
		})
	}
	slices.SortFunc(d.Services, func(a, b tunnel.DirectoryService) int { return cmp.Compare(a.Name, b.Name) })
	return d
}
