package netstack

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"
)

// TestAdmitCutsTrailingBytes: bytes past an IP packet's length are cut off
// before anything sees the packet, GRO included, which would otherwise take
// a TCP segment's for payload on a link whose checksums nobody checks.
func TestAdmitCutsTrailingBytes(t *testing.T) {
	_, l := newTestLink(t, Config{Handler: echoEnder{}}, &capture{})
	src, dst := netip.MustParseAddrPort("198.51.100.10:40000"), netip.MustParseAddrPort("10.100.0.7:53")
	seg := udpPacket(src, dst, []byte("payload"), nil)
	tests := []struct {
		name  string
		extra int
	}{{"exact", 0}, {"one byte more", 1}, {"a segment's worth more", 1000}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pkt := append(append([]byte(nil), seg...), make([]byte, tc.extra)...)
			pkb, _, _ := l.admit(pkt)
			if pkb == nil {
				t.Fatal("the packet was not admitted")
			}
			defer pkb.DecRef()
			if got := pkb.Data().Size(); got != len(seg) {
				t.Errorf("the packet buffer holds %d bytes, want the packet's %d", got, len(seg))
			}
		})
	}
}

// TestFastPathsRefuseInvalidSources: gVisor drops every IPv4 packet whose
// source is the limited broadcast, a multicast or a loopback address
// (ipv4.go, handleValidatedPacket and HandlePacket: "invalid source").
// The link's own paths — datagrams to a ListenUDP socket (the DNS server)
// and echo requests it hands to the handler — must drop them as well: a
// DNS answer or an echo reply to 255.255.255.255 or 224.0.0.x is a
// packet the stack would never have sent. The slow path (the same
// datagram with IPv4 options, which the link leaves to gVisor) shows what
// gVisor does.
func TestFastPathsRefuseInvalidSources(t *testing.T) {
	local := netip.MustParseAddrPort("10.100.0.1:53")
	vip := netip.MustParseAddr("10.100.0.5")
	for _, src := range []netip.Addr{
		netip.MustParseAddr("255.255.255.255"),
		netip.MustParseAddr("224.0.0.5"),
		netip.MustParseAddr("127.0.0.1"),
	} {
		for _, path := range []struct {
			name    string
			options []byte
		}{{"fast", nil}, {"gVisor", []byte{1, 1, 1, 0}}} {
			t.Run(src.String()+"/dns "+path.name, func(t *testing.T) {
				ns, l := newTestLink(t, Config{Handler: flowTaker{make(chan *UDPConn, 1)},
					Local: []netip.Addr{local.Addr()}}, &capture{})
				pc, err := ns.ListenUDP(local)
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				l.Deliver(udpPacket(netip.AddrPortFrom(src, 5353), local, []byte("query"), path.options))
				pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				n, from, err := pc.ReadFrom(make([]byte, 64))
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("the listener read %d bytes from %v (err %v): gVisor drops this source", n, from, err)
				}
			})
		}
		t.Run(src.String()+"/echo", func(t *testing.T) {
			handled := make(chan netip.Addr, 1)
			_, l := newTestLink(t, Config{Handler: echoEnder{end: func(r *EchoRequest) {
				handled <- r.Src
				r.Drop()
			}}}, &capture{})
			pkt := echo4(nil, 3, 4, []byte("x"))
			s, d := src.As4(), vip.As4()
			copy(pkt[12:16], s[:])
			copy(pkt[16:20], d[:])
			setIPv4Checksum(pkt[:20])
			l.Deliver(pkt)
			select {
			case a := <-handled:
				t.Errorf("an echo request from %v reached the handler: gVisor drops this source", a)
			default:
			}
		})
	}
}
