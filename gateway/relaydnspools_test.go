package gateway

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// TestRelayPoolsDNSReverse: behind a relay the VIPs are the relay's, of its
// pool and pool6, not of the gateway's own tun.pool (10.100.0.0/24 by
// default). The gateway's DNS answers the PTR of a VIP
// (configuration.md, dns.zone), so its reverse zones must follow the pools
// of every assign: before, they stayed those of its own file, and the PTR
// of each VIP the relay assigned was REFUSED (found by
// TestRelayReloadRandom). A pool that moves takes its reverse zone along.
// A tag gets the A record and no AAAA: the tunnel carries IPv4 only.
func TestRelayPoolsDNSReverse(t *testing.T) {
	rl, toml := relayWebGateway(t, "gw-ptr", "STATE", "")
	h := newHarness(t, toml)
	s, err := rl.await("gw-ptr", 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close("test over")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	replies := make(chan []byte, 16)
	go tagReturns(ctx, s, func(_ uint32, pkt []byte) bool {
		select {
		case replies <- pkt:
			return true
		case <-ctx.Done():
			return false
		}
	})
	inner := netip.MustParseAddr("100.64.0.9")
	if err := s.Send(tunnel.TagOpen{Type: tunnel.MessageTagOpen, Tag: 77, Service: "web", Tenant: "acme",
		Identity: "ztna://acme/agent/a1", InnerAddr: inner}); err != nil {
		t.Fatal(err)
	}
	port := uint16(40000)
	ask := func(name string, qtype uint16) string {
		t.Helper()
		port++
		q := dnsQueryFor(port, name, qtype)
		pkt := netstacktest.UDPDatagram(netip.AddrPortFrom(inner, port), netip.AddrPortFrom(h.gw.cfg.TUN.GatewayAddr(), 53), q)
		b, err := tunnel.AppendTagged(nil, 77, "web", pkt)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SendDatagram(b); err != nil {
			t.Fatal(err)
		}
		for deadline := time.After(5 * time.Second); ; {
			select {
			case p := <-replies:
				if len(p) >= 28 && p[9] == 17 && uint16(p[22])<<8|uint16(p[23]) == port {
					return rlDNSParse(p[28:])
				}
			case <-deadline:
				t.Fatalf("%s type %d: no answer", name, qtype)
			}
		}
	}
	for _, a := range []tunnel.Assign{
		{Pool: netip.MustParsePrefix("10.200.0.0/24"), Pool6: netip.MustParsePrefix("fd00:99::/120"),
			VIPs: []tunnel.VIPAssignment{{Service: "web", VIP: netip.MustParseAddr("10.200.0.10"), VIP6: netip.MustParseAddr("fd00:99::a")}}},
		// The relay restarted with other pools.
		{Pool: netip.MustParsePrefix("10.201.7.0/24"), Pool6: netip.MustParsePrefix("fd00:98:1::/112"),
			VIPs: []tunnel.VIPAssignment{{Service: "web", VIP: netip.MustParseAddr("10.201.7.20"), VIP6: netip.MustParseAddr("fd00:98:1::14")}}},
	} {
		a.Type, a.Zone, a.TTL = tunnel.MessageAssign, "ztna.internal", 30
		if err := s.Send(a); err != nil {
			t.Fatal(err)
		}
		vip, vip6 := a.VIPs[0].VIP, a.VIPs[0].VIP6
		waitFor(t, 5*time.Second, "the assigned VIPs in the table", func() bool {
			svc := h.gw.tbl.Load().byName["web"]
			return svc != nil && svc.vip == vip && svc.vip6 == vip6
		})
		if in := (&trModel{g: h.gw}).tagIngress(77); in == nil {
			t.Fatal("tag 77 not open")
		}
		for _, addr := range []netip.Addr{vip, vip6} {
			if got := ask(rlReverse(addr), 12); got != "web.ztna.internal." {
				t.Errorf("pool %v, pool6 %v: PTR of %v: %s, want web.ztna.internal.", a.Pool, a.Pool6, addr, got)
			}
		}
		// A and no AAAA: a gateway takes only IPv4 from a tunnel, and the
		// agent answers no AAAA either (it answered the IPv6 VIP).
		if got := ask("web.ztna.internal", 1); got != vip.String() {
			t.Errorf("A of web under a tag: %s, want %v", got, vip)
		}
		if got := ask("web.ztna.internal", 28); got != "rcode 0, no answer" {
			t.Errorf("AAAA of web under a tag: %s, want none (NOERROR)", got)
		}
	}
}

// rlReverse is the PTR name of addr.
func rlReverse(addr netip.Addr) string {
	var labels []string
	if addr.Is4() {
		b := addr.As4()
		for i := 3; i >= 0; i-- {
			labels = append(labels, fmt.Sprint(b[i]))
		}
		return strings.Join(labels, ".") + ".in-addr.arpa"
	}
	b := addr.As16()
	for i := 15; i >= 0; i-- {
		labels = append(labels, fmt.Sprintf("%x", b[i]&0xf), fmt.Sprintf("%x", b[i]>>4))
	}
	return strings.Join(labels, ".") + ".ip6.arpa"
}

// rlDNSParse reads a DNS reply: the data of its first answer record (an
// address, or a PTR's name with a final dot), or its rcode when it has
// none.
func rlDNSParse(b []byte) string {
	if len(b) < 12 {
		return "short"
	}
	if an := binary.BigEndian.Uint16(b[6:]); an == 0 {
		return fmt.Sprintf("rcode %d, no answer", b[3]&0xf)
	}
	off, ok := rlSkipName(b, 12)
	if !ok || off+4 > len(b) {
		return "malformed"
	}
	off, ok = rlSkipName(b, off+4)
	if !ok || off+10 > len(b) {
		return "malformed"
	}
	typ := binary.BigEndian.Uint16(b[off:])
	n := int(binary.BigEndian.Uint16(b[off+8:]))
	off += 10
	if off+n > len(b) {
		return "malformed"
	}
	rd := b[off : off+n]
	switch {
	case typ == 1 && n == 4:
		return netip.AddrFrom4([4]byte(rd)).String()
	case typ == 28 && n == 16:
		return netip.AddrFrom16([16]byte(rd)).String()
	case typ == 12:
		name, ok := rlReadName(b, off)
		if !ok {
			return "malformed"
		}
		return name
	}
	return fmt.Sprintf("type %d", typ)
}

func rlSkipName(b []byte, off int) (int, bool) {
	for off < len(b) {
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xc0 == 0xc0:
			return off + 2, off+2 <= len(b)
		}
		off += 1 + l
	}
	return 0, false
}

func rlReadName(b []byte, off int) (string, bool) {
	var labels []string
	for hops := 0; off < len(b) && hops < 32; hops++ {
		l := int(b[off])
		switch {
		case l == 0:
			return strings.Join(labels, ".") + ".", true
		case l&0xc0 == 0xc0:
			if off+1 >= len(b) {
				return "", false
			}
			off = int(binary.BigEndian.Uint16(b[off:]) & 0x3fff)
			continue
		case off+1+l > len(b):
			return "", false
		}
		labels = append(labels, strings.ToLower(string(b[off+1:off+1+l])))
		off += 1 + l
	}
	return "", false
}
