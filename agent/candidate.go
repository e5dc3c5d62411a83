package agent

import (
	"net/netip"
	"strings"

	"github.com/ztgate/ztgate/tunnel"
)

// The gateway's candidates come from the gateway, through the relay, which
// checks only that they are unicast with a port: a gateway must not be
// able to make the agent send QUIC Initials to the agent's own host or
// link (a loopback port, a link-local neighbour) on its say-so, even
// though the identity check would stop any session there. Such an address
// is dialled only where the agent's relay is itself: a loopback candidate
// when the relay is reached over loopback (one host, as in tests), a
// link-local one when the relay is reached over loopback or link-local.

// limitedBroadcast is 255.255.255.255, which netip does not count as
// multicast.
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// candidateSkip returns why the agent does not dial a gateway's candidate
// c when its relay is at relay (invalid without a session), or "" when it
// may.
func candidateSkip(c netip.AddrPort, relay netip.Addr) string {
	a, relay := c.Addr().Unmap(), relay.Unmap()
	switch {
	case !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a == limitedBroadcast:
		return "not unicast"
	case c.Port() == 0:
		return "no port"
	case a.IsLoopback() && !relay.IsLoopback():
		return "loopback, relay not on loopback"
	case a.IsLinkLocalUnicast() && !relay.IsLoopback() && !relay.IsLinkLocalUnicast():
		return "link-local, relay not on loopback or link-local"
	}
	return ""
}

// dialable returns the candidates of an answer for service the agent may
// dial; it logs the others once per answer and counts each.
func (d *direct) dialable(m *tunnel.Answer, service string) []netip.AddrPort {
	relay := d.relayAddr()
	out := make([]netip.AddrPort, 0, len(m.Candidates))
	var skipped []string
	for _, c := range m.Candidates {
		if why := candidateSkip(c, relay); why != "" {
			skipped = append(skipped, c.String()+" ("+why+")")
			d.a.m.candidatesSkipped.Inc()
			continue
		}
		out = append(out, c)
	}
	if len(skipped) > 0 {
		d.log.Warn("gateway candidates not dialled", "service", service, "gateway", m.Gateway,
			"relay", relay.String(), "skipped", strings.Join(skipped, ", "))
	}
	return out
}
