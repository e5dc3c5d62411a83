package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// TestTunnelICMPErrorQuotesAgentAddress: the ICMP error the gateway sends
// an agent about one of its packets (a port unreachable for a refused UDP
// flow, an administratively prohibited for a refused ping) must quote the
// packet as the agent sent it: the agent's kernel finds the socket an
// error is for by the quoted source address and port, so an error quoting
// the ingress's synthetic address (169.254.x.y) reaches no socket and the
// refusal becomes the silent hang DESIGN §3.3 rules out (and the agent
// learns the gateway's internal address).
func TestTunnelICMPErrorQuotesAgentAddress(t *testing.T) {
	_, port := startHTTP(t, nil)
	h := newHarness(t, withTunnel(t, baseConfig(port, startUDPEcho(t))))
	in, replies := h.recordingIngress(t, "acme")
	for _, tc := range []struct {
		name string
		pkt  []byte
	}{
		{"udp port unreachable", netstacktest.UDPDatagram(netip.AddrPortFrom(agentInner, 40000), netip.MustParseAddrPort("10.100.0.20:9"), []byte("x"))},
		{"echo prohibited", netstacktest.EchoRequest(agentInner, netip.MustParseAddr("10.100.0.77"), 1, 1, []byte("ping"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(replies())
			h.gw.deliverTunnel(in, "", tc.pkt, h.gw.tunLink)
			var got [][]byte
			waitFor(t, 5*time.Second, "an ICMP error", func() bool { got = replies(); return len(got) > before })
			p := got[before]
			if len(p) < 20+8+20 || p[9] != 1 || p[20] != 3 {
				t.Fatalf("not an ICMP unreachable: % x", p)
			}
			outerDst := netip.AddrFrom4([4]byte(p[16:20]))
			quotedSrc := netip.AddrFrom4([4]byte(p[28+12 : 28+16]))
			if outerDst != agentInner || quotedSrc != agentInner {
				t.Errorf("error to %v quotes a packet from %v, want the agent's %v", outerDst, quotedSrc, agentInner)
			}
		})
	}
}
