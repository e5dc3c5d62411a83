package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// FuzzDeliverTunnel feeds arbitrary packets from an agent into the
// gateway's tunnel ingress path (deliverTunnel), as any service and as
// web's: it never panics, and what is malformed or spoofed is dropped and
// counted before the netstack sees it.
func FuzzDeliverTunnel(f *testing.F) {
	web := netip.AddrPortFrom(webVIP.Addr(), 80)
	from := netip.AddrPortFrom(agentInner, 40000)
	f.Add(netstacktest.TCPSegment(from, web, netstacktest.FlagSYN, 1, nil), false)
	f.Add(netstacktest.UDPDatagram(from, netip.MustParseAddrPort("10.100.0.1:53"), []byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}), false)
	f.Add(netstacktest.EchoRequest(agentInner, web.Addr(), 1, 1, []byte("ping")), true)
	f.Add(netstacktest.TCPSegment(netip.MustParseAddrPort("100.64.0.2:1"), web, netstacktest.FlagSYN, 1, nil), true)
	f.Add(netstacktest.TCPSegment(from, netip.MustParseAddrPort("10.100.0.99:80"), netstacktest.FlagSYN, 1, nil), true)
	f.Add([]byte{0x45, 0, 0, 20}, false)
	f.Add([]byte{}, true)

	h := newHarness(f, withTunnel(f, limitsConfig(startHold(f), "", "", "")),
		func(o *Options) { o.HandshakeTimeout = 100 * time.Millisecond })
	in, _ := h.testIngress(f, "acme")
	drops := func() float64 {
		var n float64
		for _, r := range []string{"malformed", "not_ipv4", "spoofed_source", "wrong_service"} {
			n += testutil.ToFloat64(h.gw.m.dropped.WithLabelValues(r))
		}
		return n
	}
	f.Fuzz(func(t *testing.T, pkt []byte, asWeb bool) {
		pkt = append([]byte(nil), pkt...)
		svc := ""
		if asWeb {
			svc = "web"
		}
		src, _, ok := netstack.IPv4Addrs(pkt)
		before := drops()
		h.gw.deliverTunnel(in, svc, pkt, h.gw.tunLink)
		if (!ok || src != agentInner) && drops() == before {
			t.Fatalf("malformed or spoofed packet % x not counted", pkt)
		}
	})
}
