package gateway

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
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
		inner: agentInner,
		peer:  peer{tenant: tenant, identity: "ztna://" + tenant + "/agent/" + t.Name()},
		send: func(_, pkt []byte) error {
			mu.Lock()
			pkts = append(pkts, slices.Clone(pkt))
			mu.Unlock()
			return nil
		},
	}
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
	_, port := startHTTP(t, nil)
	h := newHarness(t, withTunnel(t, baseConfig(port, startUDPEcho(t))))
	src := netip.AddrPortFrom(agentInner, 40000)
	dst := netip.MustParseAddrPort("10.100.0.20:7")
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
