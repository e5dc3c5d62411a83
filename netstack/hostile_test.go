package netstack_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

var (
	vipTCP   = netip.AddrPortFrom(accepted, 80)
	vipUDP   = netip.AddrPortFrom(accepted, 53)
	hostileC = netip.AddrPortFrom(clientAddr, 40000)
)

// synOf returns a SYN from the client to the accepted VIP.
func synOf(src netip.AddrPort) []byte {
	return netstacktest.TCPSegment(src, vipTCP, netstacktest.FlagSYN, 1000, nil)
}

// corrupt returns a copy of pkt changed by f.
func corrupt(pkt []byte, f func([]byte) []byte) []byte {
	return f(append([]byte(nil), pkt...))
}

// hostilePackets are malformed or unusual IPv4 packets a LAN host can send.
// parseDrop marks the ones the link itself must drop and count (the rest
// are gVisor's to reject).
func hostilePackets() []struct {
	name      string
	pkt       []byte
	parseDrop bool
} {
	syn := synOf(hostileC)
	udp := netstacktest.UDPDatagram(hostileC, vipUDP, []byte("payload"))
	big := netstacktest.UDPDatagram(hostileC, vipUDP, bytes.Repeat([]byte("x"), 1000))
	frags := netstacktest.Fragment(big, 256)
	odd := func(proto uint8) []byte {
		return netstacktest.IPv4Packet(clientAddr, accepted, proto, nil, []byte("odd protocol payload"))
	}
	return []struct {
		name      string
		pkt       []byte
		parseDrop bool
	}{
		{"empty", nil, true},
		{"one byte", []byte{0x45}, true},
		{"version 5", corrupt(syn, func(b []byte) []byte { b[0] = 0x55; return b }), true},
		{"version 0", corrupt(syn, func(b []byte) []byte { b[0] = 0x05; return b }), true},
		{"truncated header", syn[:19], true},
		{"IHL below 5", corrupt(syn, func(b []byte) []byte { b[0] = 0x44; return b }), true},
		{"IHL past the end", corrupt(syn[:24], func(b []byte) []byte { b[0] = 0x4f; binary.BigEndian.PutUint16(b[2:], 24); return b }), true},
		{"total length past the end", corrupt(syn, func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], uint16(len(b)+100)); return b }), true},
		{"total length below the header", corrupt(syn, func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 12); return b }), true},
		{"total length shorter than the TCP header", corrupt(syn, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[2:], 30)
			netstacktest.SetIPv4Checksum(b)
			return b
		}), false},
		{"trailing bytes after total length", append(append([]byte(nil), syn...), 0xde, 0xad), false},
		{"bad header checksum", corrupt(syn, func(b []byte) []byte { b[10] ^= 0xff; return b }), false},
		{"bad TCP checksum", corrupt(syn, func(b []byte) []byte { b[36] ^= 0xff; return b }), false},
		{"TCP data offset past the end", corrupt(syn, func(b []byte) []byte { b[32] = 0xf0; return b }), false},
		{"TCP data offset below 5", corrupt(syn, func(b []byte) []byte { b[32] = 0x10; return b }), false},
		{"option length past the header", netstacktest.IPv4Packet(clientAddr, accepted, netstacktest.ProtoTCP,
			[]byte{0x44, 40, 5, 0}, syn[20:]), false},
		{"option length zero", netstacktest.IPv4Packet(clientAddr, accepted, netstacktest.ProtoTCP,
			[]byte{0x07, 0, 0, 0}, syn[20:]), false},
		{"record route past the end", netstacktest.IPv4Packet(clientAddr, accepted, netstacktest.ProtoTCP,
			[]byte{0x07, 39, 4, 0, 0, 0, 0, 0}, syn[20:]), false},
		{"UDP length past the end", corrupt(udp, func(b []byte) []byte { binary.BigEndian.PutUint16(b[24:], 500); return b }), false},
		{"UDP length below 8", corrupt(udp, func(b []byte) []byte { binary.BigEndian.PutUint16(b[24:], 3); return b }), false},
		{"lone middle fragment", frags[1], false},
		{"last fragment only", frags[len(frags)-1], false},
		{"fragment past 64 KiB", corrupt(frags[1], func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[6:], 0x2000|0x1fff)
			netstacktest.SetIPv4Checksum(b)
			return b
		}), false},
		{"tiny first fragment", netstacktest.FragmentAt(syn, 0, syn[20:28], true), false},
		{"overlapping fragment", netstacktest.FragmentAt(big, 8, big[28:300], true), false},
		{"fragmented echo request", netstacktest.FragmentAt(
			netstacktest.EchoRequest(clientAddr, accepted, 1, 1, bytes.Repeat([]byte("p"), 64)), 0,
			bytes.Repeat([]byte("p"), 16), true), false},
		{"truncated echo request", netstacktest.IPv4Packet(clientAddr, accepted, netstacktest.ProtoICMP, nil, []byte{8, 0, 0}), false},
		{"ICMP redirect", netstacktest.IPv4Packet(clientAddr, accepted, netstacktest.ProtoICMP, nil, append([]byte{5, 1, 0, 0, 10, 100, 0, 66}, syn[:28]...)), true}, // icmp_refused: never taken from a client
		{"protocol 0", odd(0), false},
		{"IGMP", odd(2), false},
		{"GRE", odd(47), false},
		{"ESP", odd(50), false},
		{"SCTP", odd(132), false},
		{"protocol 255", odd(255), false},
		{"source is the destination", netstacktest.TCPSegment(vipTCP, vipTCP, netstacktest.FlagSYN, 1, nil), false},
		{"broadcast source", netstacktest.TCPSegment(netip.MustParseAddrPort("255.255.255.255:1"), vipTCP, netstacktest.FlagSYN, 1, nil), false},
		{"multicast destination", netstacktest.TCPSegment(hostileC, netip.MustParseAddrPort("224.0.0.1:80"), netstacktest.FlagSYN, 1, nil), true},
		{"IPv6 header too short", []byte{0x60, 0, 0, 0, 0, 8, 6, 64}, true},
	}
}

// saladPort is the first source port of the flag salads; flags picks the
// port, so a flow tells which combination it came from.
const saladPort = 41000

// saladHandler is an echoHandler that records which flag salads (by source
// port) reached it as new flows. Flows of other packets are not counted:
// the forwarder hands SYNs over in goroutines of their own, so those of
// earlier packets may arrive at any time.
type saladHandler struct {
	echoHandler
	salads [256]atomic.Bool
	n      atomic.Int32
}

func (h *saladHandler) HandleTCP(req *netstack.TCPRequest) {
	if p := int(req.Src.Port()); req.Src.Addr() == clientAddr && p >= saladPort && p < saladPort+256 {
		h.salads[p-saladPort].Store(true)
		h.n.Add(1)
	}
	h.echoHandler.HandleTCP(req)
}

// assertSalads checks that exactly the salads without ACK became flows.
func (h *saladHandler) assertSalads(t *testing.T) {
	t.Helper()
	for flags := range 256 {
		if flags&netstacktest.FlagSYN == 0 {
			continue
		}
		want := flags&netstacktest.FlagACK == 0
		if got := h.salads[flags].Load(); got != want {
			t.Errorf("SYN salad with flags %#02x became a flow: %v, want %v", flags, got, want)
		}
	}
}

// TestHostileIPv4 delivers malformed and unusual packets and checks that
// the stack drops them (counting what its own checks catch), hands no flow
// to the handler for a packet that is not a clean SYN, and still serves.
func TestHostileIPv4(t *testing.T) {
	// Some packets start handshakes nobody completes (a SYN from the VIP
	// itself): give them up quickly.
	h := &saladHandler{}
	f := newFixture(t, h, func(c *netstack.Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	for _, tc := range hostilePackets() {
		t.Run(tc.name, func(t *testing.T) {
			before := f.drops.Load()
			f.link.Deliver(tc.pkt)
			if got := f.drops.Load() > before; got != tc.parseDrop {
				t.Errorf("counted as a link drop: %v, want %v", got, tc.parseDrop)
			}
		})
	}
	// Every flag combination with SYN set: none may break the stack. Those
	// without ACK are offered to the handler (it decides what to do with a
	// SYN|FIN or a SYN|RST); none with ACK set is taken for a new flow.
	withoutACK := int32(0)
	for flags := range 256 {
		if flags&netstacktest.FlagSYN == 0 {
			continue
		}
		if flags&netstacktest.FlagACK == 0 {
			withoutACK++
		}
		src := netip.AddrPortFrom(clientAddr, uint16(saladPort+flags))
		f.link.Deliver(netstacktest.TCPSegment(src, vipTCP, uint8(flags), 7, []byte("salad")))
	}
	// Deliver returns once the forwarder has started a goroutine for each
	// SYN it takes; wait for those to reach the handler.
	deadline := time.Now().Add(10 * time.Second)
	for h.n.Load() < withoutACK && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	h.assertSalads(t)
	if n := h.n.Load(); n != withoutACK {
		t.Errorf("%d flag salads became flows, want the %d without ACK", n, withoutACK)
	}
	if st := f.ns.Stats(); st.IPMalformed+st.TransportMalformed+st.IPMalformedFragments == 0 {
		t.Errorf("gVisor counted none of the malformed packets: %+v", st)
	}
	assertServes(t, f)
	// A salad with ACK that was wrongly taken would have reached the
	// handler by now (its goroutine was started before the loop ended).
	// (Not counted with n: assertServes's own connection comes from the
	// salads' address, and its source port may fall among theirs.)
	h.assertSalads(t)
}

// assertServes checks that a TCP and a UDP echo still work.
func assertServes(t *testing.T, f *fixture) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := f.client.DialTCP(ctx, clientAddr, vipTCP)
	if err != nil {
		t.Fatalf("the stack no longer serves TCP: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("still here"))
	got := make([]byte, 10)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "still here" {
		t.Fatalf("tcp echo after hostile traffic: %q %v", got, err)
	}
	u, err := f.client.DialUDP(clientAddr, vipUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(5 * time.Second))
	u.Write([]byte("udp"))
	n, err := u.Read(got)
	if err != nil || string(got[:n]) != "udp" {
		t.Fatalf("udp echo after hostile traffic: %q %v", got[:n], err)
	}
}

// stallHandler accepts every TCP flow and records how Accept ended.
type stallHandler struct {
	echoHandler
	accepted, failed atomic.Int32
}

func (h *stallHandler) HandleTCP(req *netstack.TCPRequest) {
	c, err := req.Accept()
	if err != nil {
		h.failed.Add(1)
		return
	}
	h.accepted.Add(1)
	c.Close()
}

// TestHandshakeTimeout sends SYNs from a source that never answers the
// SYN-ACK (spoofed): Accept gives up after HandshakeTimeout instead of
// the two minutes of gVisor's retransmissions.
func TestHandshakeTimeout(t *testing.T) {
	h := &stallHandler{}
	f := newFixture(t, h, func(c *netstack.Config) { c.HandshakeTimeout = 300 * time.Millisecond })

	const spoofed = 20
	start := time.Now()
	for i := range spoofed {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(100 + i)}), 5555)
		f.link.Deliver(synOf(src))
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.failed.Load() < spoofed {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d spoofed handshakes given up after %v", h.failed.Load(), spoofed, time.Since(start))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("handshakes given up after %v, before the timeout", d)
	}
	if st := f.ns.Stats(); st.TCPFailedHandshakes < spoofed {
		t.Errorf("failed handshakes counted: %d, want %d", st.TCPFailedHandshakes, spoofed)
	}
	// A real client still completes its handshake.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := f.client.DialTCP(ctx, clientAddr, vipTCP)
	if err != nil {
		t.Fatalf("real client: %v", err)
	}
	c.Close()
}
