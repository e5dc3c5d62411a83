package gateway

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// recordingIngress registers an agent ingress of tenant that keeps a copy
// of every packet sent back to it.
func (h *harness) recordingIngress(t *testing.T, tenant string) (*ingress, func() [][]byte) {
	t.Helper()
	var (
		mu   sync.Mutex
		pkts [][]byte
	)
	in := &ingress{
		peer: peer{tenant: tenant, identity: "ztna://" + tenant + "/agent/" + t.Name()},
		out: testOutbox(t, func(pkt []byte) error {
			mu.Lock()
			pkts = append(pkts, slices.Clone(pkt))
			mu.Unlock()
			return nil
		}),
	}
	in.pinInner(agentInner)
	if err := h.gw.ingresses.add(in); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.gw.ingresses.remove(in) })
	return in, func() [][]byte {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(pkts)
	}
}

// TestUDPFlowsKeepTheirIngress: two agents of two tenants use the same
// inner address and port towards the same UDP service at the same time,
// many datagrams each (all but the first of a flow take the netstack's
// fast path): each gets exactly its own echoes back, in order, addressed
// to its inner address, and nothing of the other's.
func TestUDPFlowsKeepTheirIngress(t *testing.T) {
	h := newTunnelHarness(t, "")
	dst, src := udpEchoVIP, agentSrc
	const n = 200
	type agent struct {
		name    string
		in      *ingress
		replies func() [][]byte
	}
	var agents []agent
	for _, tenant := range []string{"acme", "globex"} {
		in, replies := h.recordingIngress(t, tenant)
		agents = append(agents, agent{tenant, in, replies})
	}
	for i := range n { // interleaved, as two busy agents would be
		for _, a := range agents {
			pkt := netstacktest.UDPDatagram(src, dst, fmt.Appendf(nil, "%s %04d", a.name, i))
			h.gw.deliverTunnel(a.in, "", pkt, h.gw.tunLink)
		}
		if i%10 == 9 {
			// Bursts of 20: every queue on the way (the netstack's, the
			// flows', the echo server's socket) holds them even while their
			// readers wait for a core on a loaded machine.
			time.Sleep(2 * time.Millisecond)
		}
	}
	for _, a := range agents {
		var got [][]byte
		waitFor(t, 5*time.Second, a.name+"'s echoes", func() bool { got = a.replies(); return len(got) >= n })
		time.Sleep(20 * time.Millisecond)
		got = a.replies()
		if len(got) != n {
			t.Fatalf("%s got %d packets, want %d", a.name, len(got), n)
		}
		for i, p := range got {
			if len(p) < 28 || p[9] != 17 {
				t.Fatalf("%s: reply %d is not UDP: % x", a.name, i, p)
			}
			to := netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[16:20])), binary.BigEndian.Uint16(p[22:24]))
			from := netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[12:16])), binary.BigEndian.Uint16(p[20:22]))
			if to != src || from != dst {
				t.Fatalf("%s: reply %d goes %s -> %s, want %s -> %s", a.name, i, from, to, dst, src)
			}
			if want := fmt.Appendf(nil, "%s %04d", a.name, i); !bytes.Equal(p[28:], want) {
				t.Fatalf("%s: reply %d carries %q, want %q", a.name, i, p[28:], want)
			}
		}
	}
}

// TestLANCannotPoseAsIngress: a LAN client of a tenant whose sources cover
// 169.254.0.0/16 (as a tenant of "everyone else" would) sends from an agent's
// synthetic address. It must not get the agent's identity and tenant: its
// SYN to a service of the agent's tenant only is dropped and counted as an
// unknown source, and its datagram does not join the agent's UDP flow,
// while the agent's own packets still pass and a LAN client from a real
// address of the same tenant is refused as that tenant.
func TestLANCannotPoseAsIngress(t *testing.T) {
	h := newTunnelHarness(t, `
[[tenant]]
name = "guest"
sources = ["160.0.0.0/4"]
`)
	in, replies := h.recordingIngress(t, "acme")
	web := netip.MustParseAddrPort("10.100.0.10:80")
	echo := udpEchoVIP

	h.gw.deliverTunnel(in, "", netstacktest.UDPDatagram(agentSrc, echo, []byte("agent")), h.gw.tunLink)
	waitFor(t, 5*time.Second, "the agent's echo", func() bool { return len(replies()) == 1 })

	drops := func() float64 {
		return max(0, metricValue(t, h.gw, "ztgate_packets_dropped_total", "reason", "unknown_source"))
	}
	before, deniedBefore := drops(), h.refused(t, refuseTenant)
	h.gw.lan.Deliver(netstacktest.TCPSegment(netip.AddrPortFrom(in.synth, 5000), web, netstacktest.FlagSYN, 1, nil))
	// The same source port as the agent's flow: without the check it would
	// join that flow and its echo would go to the agent.
	h.gw.lan.Deliver(netstacktest.UDPDatagram(netip.AddrPortFrom(in.synth, 40000), echo, []byte("spoofed")))
	// A real address of the tenant: refused as that tenant.
	h.gw.lan.Deliver(netstacktest.TCPSegment(netip.MustParseAddrPort("160.0.0.5:5000"), web, netstacktest.FlagSYN, 1, nil))
	waitFor(t, 5*time.Second, "the spoofed packets counted", func() bool { return drops() >= before+2 })
	waitFor(t, 5*time.Second, "the guest refused", func() bool { return h.refused(t, refuseTenant) >= deniedBefore+1 })
	time.Sleep(100 * time.Millisecond)
	if got := replies(); len(got) != 1 {
		t.Errorf("the agent got %d packets, want only its own echo", len(got))
	}
	if n := metricValue(t, h.gw, "ztgate_flows_total", "service", "web", "tenant", "acme", "protocol", "tcp"); n > 0 {
		t.Errorf("%v flows of acme to web", n)
	}
}

// icmpUnreachable is an ICMP port unreachable from src to dst quoting
// quoted.
func icmpUnreachable(src, dst netip.Addr, quoted []byte) []byte {
	return netstacktest.ICMPError(src, dst, 3, 3, quoted)
}

// TestForgedICMPErrorsEndNoFlow: a client of one tenant forges ICMP port
// unreachable errors quoting packets the gateway sent to an agent's and to
// another tenant's UDP flows. Neither flow ends; the errors are dropped
// and counted, while the errors of the flow's own client and of a router
// in its tenant's prefixes pass on to gVisor.
func TestForgedICMPErrorsEndNoFlow(t *testing.T) {
	h := newTunnelHarness(t, "")
	in, replies := h.recordingIngress(t, "acme")
	echo := udpEchoVIP
	lanVictim := netip.AddrPortFrom(acmeClient, 4000)
	h.gw.lan.Deliver(netstacktest.UDPDatagram(lanVictim, echo, []byte("lan")))
	h.gw.deliverTunnel(in, "", netstacktest.UDPDatagram(netip.AddrPortFrom(agentInner, 4000), echo, []byte("agent")), h.gw.tunLink)
	waitFor(t, 5*time.Second, "two UDP flows", func() bool { return h.gw.flows.len() == 2 })
	flows := h.gw.flows.list(nil)

	refused := func() float64 {
		return max(0, metricValue(t, h.gw, "ztgate_packets_dropped_total", "reason", "icmp_refused"))
	}
	before := refused()
	for _, victim := range []netip.AddrPort{lanVictim, netip.AddrPortFrom(in.synth, 4000)} {
		h.gw.lan.Deliver(icmpUnreachable(globexClient, echo.Addr(), netstacktest.UDPDatagram(echo, victim, []byte("x"))))
	}
	waitFor(t, 5*time.Second, "the forged errors counted", func() bool { return refused() >= before+2 })
	time.Sleep(200 * time.Millisecond)
	for _, f := range flows {
		if reason, closed := f.closed(); closed {
			t.Errorf("the flow of %v ended (%s) on another client's forged ICMP error", f.client, reason)
		}
	}

	t.Run("its own client's error, and its router's", func(t *testing.T) {
		router := netip.MustParseAddr("198.51.100.1") // in acme's sources
		h.gw.lan.Deliver(icmpUnreachable(router, echo.Addr(), netstacktest.UDPDatagram(echo, lanVictim, []byte("x"))))
		h.gw.lan.Deliver(icmpUnreachable(acmeClient, echo.Addr(), netstacktest.UDPDatagram(echo, lanVictim, []byte("x"))))
		// A marker behind it: once its echo is back, the error was taken.
		h.gw.deliverTunnel(in, "", netstacktest.UDPDatagram(netip.AddrPortFrom(agentInner, 4000), echo, []byte("marker")), h.gw.tunLink)
		waitFor(t, 5*time.Second, "the marker's echo", func() bool { return len(replies()) == 2 })
		if got := refused(); got != before+2 {
			t.Errorf("%v refused, want %v: the client's own error was refused", got, before+2)
		}
	})
}

// TestUDPCloseNotLost: a UDP flow closed just as its backend reader sets
// its first read deadline (the clock hook closes it then) still ends at
// once, not when udp_idle passes; Close waits for it.
func TestUDPCloseNotLost(t *testing.T) {
	var (
		g     atomic.Pointer[Gateway]
		armed atomic.Bool
	)
	now := func() time.Time {
		if gw := g.Load(); gw != nil && armed.Load() {
			for _, f := range gw.flows.list(nil) {
				f.mu.Lock()
				ready := f.onClose != nil
				f.mu.Unlock()
				if _, closed := f.closed(); ready && !closed {
					f.close("closed_by_api")
				}
			}
		}
		return time.Now()
	}
	h := newHarness(t, quietGateway+acmeTenant+`
[[service]]
name = "u"
tenants = ["acme"]
vip = "10.100.0.31"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "udp"
  port = 7
  target = 9
  [service.health]
  type = "none"
  [service.timeouts]
  udp_idle = "1h"
`, func(o *Options) { o.Now = now })
	g.Store(h.gw)
	armed.Store(true)
	h.gw.lan.Deliver(netstacktest.UDPDatagram(netip.AddrPortFrom(acmeClient, 4000), netip.MustParseAddrPort("10.100.0.31:7"), []byte("x")))
	waitFor(t, 5*time.Second, "the flow opened and closed", func() bool {
		labels := []string{"protocol", "udp", "service", "u", "tenant", "acme"}
		return metricValue(t, h.gw, "ztgate_flows_total", labels...) == 1 && metricValue(t, h.gw, "ztgate_flows_active", labels...) == 0
	})
}

// TestTunnelICMPErrorsQuoteTheAgent: the ICMP errors between the gateway
// and an agent quote packets with the addresses the receiver knows.
//   - From the gateway: the error about an agent's packet (a port
//     unreachable for a refused UDP flow, a prohibited for a refused ping)
//     quotes it as the agent sent it, from its own address, not from its
//     ingress's 169.254.x.y: the agent's kernel finds the socket an error
//     is for by the quoted addresses, so the refusal would otherwise be a
//     silent hang (DESIGN §3.3), and the internal address would leak.
//   - From the agent: its error about a packet the gateway sent it (its
//     port gone) quotes the agent's address, which gVisor knows as the
//     ingress's: rewritten too, else the error is refused as another
//     client's.
func TestTunnelICMPErrorsQuoteTheAgent(t *testing.T) {
	h := newTunnelHarness(t, "")
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
			h.gw.deliverTunnel(in, "", slices.Clone(tc.pkt), h.gw.tunLink)
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
			if c := onesSum(p[20:]); c != 0xffff {
				t.Errorf("the ICMP checksum does not verify (%#x)", c)
			}
			if c := onesSum(p[28 : 28+20]); c != 0xffff {
				t.Errorf("the quoted IP header's checksum does not verify (%#x)", c)
			}
			if string(p[28+20:28+28]) != string(tc.pkt[20:28]) {
				t.Errorf("quoted transport header % x, want the agent's % x", p[28+20:28+28], tc.pkt[20:28])
			}
		})
	}

	t.Run("the agent's error about a packet to it", func(t *testing.T) {
		refused := func() float64 {
			return max(0, metricValue(t, h.gw, "ztgate_packets_dropped_total", "reason", "icmp_refused"))
		}
		echo := udpEchoVIP
		from := netip.AddrPortFrom(agentInner, 4000)
		n := len(replies())
		h.gw.deliverTunnel(in, "", netstacktest.UDPDatagram(from, echo, []byte("hello")), h.gw.tunLink)
		waitFor(t, 5*time.Second, "the echo", func() bool { return len(replies()) > n })
		reply := replies()[n] // as the agent received it: to its own address
		before := refused()
		h.gw.deliverTunnel(in, "", icmpUnreachable(agentInner, echo.Addr(), reply), h.gw.tunLink)
		// A marker behind it: once its echo is back, the error was taken.
		h.gw.deliverTunnel(in, "", netstacktest.UDPDatagram(netip.AddrPortFrom(agentInner, 4001), echo, []byte("marker")), h.gw.tunLink)
		waitFor(t, 5*time.Second, "the marker's echo", func() bool { return len(replies()) > n+1 })
		if got := refused(); got != before {
			t.Errorf("the agent's own ICMP error was refused (%v refused, %v before)", got, before)
		}
	})
}

// onesSum is the ones' complement sum of b (RFC 1071): 0xffff over data
// that holds its own valid checksum.
func onesSum(b []byte) uint16 {
	var sum uint32
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
