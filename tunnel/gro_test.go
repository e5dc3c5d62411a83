//go:build linux

package tunnel

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/udpseg"
)

// TestReceiveGRO: ztgate's quic-go reads with UDP generic receive offload
// (third_party/README.md), so a run of datagrams sent with one UDP GSO
// send reaches it as one message, which it must cut back into the
// datagrams the sender sent. Each datagram here is a long-header packet
// of a version no one speaks, which the listener answers with a version
// negotiation packet naming the datagram's connection ID: one answer per
// datagram, each with its own ID, shows that every datagram of the
// message was parsed at its own boundaries. Where the kernel has UDP GRO,
// the listener's socket must have it on. Over IPv4 and IPv6 loopback (the
// control messages differ; IPv6 is skipped where loopback has none).
func TestReceiveGRO(t *testing.T) {
	gro := kernelHasGRO(t)
	if !gro {
		t.Log("this kernel has no UDP GRO; checking the datagrams only")
	}
	if off, _ := strconv.ParseBool(os.Getenv("QUIC_GO_DISABLE_GRO")); off {
		gro = false
		t.Log("QUIC_GO_DISABLE_GRO is set; checking the datagrams only")
	}
	families := []struct {
		name   string
		listen string
		client net.IP
	}{
		{"IPv4", "127.0.0.1:0", net.IPv4(127, 0, 0, 1)},
		{"IPv6", "[::1]:0", net.IPv6loopback},
	}
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			f := newTLSFixture(t)
			ln, err := Listen(fam.listen, ListenConfig{Credentials: f.relay(CredentialsConfig{})}, nil)
			if err != nil {
				if fam.name == "IPv6" {
					t.Skipf("no IPv6 loopback here: %v", err)
				}
				t.Fatal(err)
			}
			defer ln.Close()
			if on := udpseg.GROEnabled(ln.udp); on != gro {
				t.Fatalf("the listener's socket has UDP GRO %v, want %v", on, gro)
			}
			testGRORuns(t, ln.udp.LocalAddr().(*net.UDPAddr), fam.client)
		})
	}
}

// testGRORuns sends runs of datagrams to server, each run with one UDP GSO
// send from client, and requires a version negotiation packet for each
// datagram.
func testGRORuns(t *testing.T, server *net.UDPAddr, client net.IP) {
	cases := []struct {
		name  string
		sizes []int // datagram sizes; all but the last equal, as GSO sends them
	}{
		{"three datagrams, the last one shorter", []int{1300, 1300, 1250}},
		{"four equal datagrams", []int{1232, 1232, 1232, 1232}},
		{"one datagram without GSO", []int{1400}},
		// Longer than quic-go's packet buffers (1452 bytes): each is cut to
		// that, as a read without GRO cuts it, and still read on its own.
		{"two datagrams longer than a packet buffer", []int{1500, 1500}},
	}
	for ci, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: client})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var msg []byte
			want := map[string]bool{}
			for i, size := range tc.sizes {
				id := []byte{byte(ci + 1), byte(i + 1), 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, byte(i)}
				want[string(id)] = true
				msg = append(msg, unknownVersionPacket(id, size)...)
			}
			var oob []byte
			if len(tc.sizes) > 1 {
				oob = udpSegmentMsg(uint16(tc.sizes[0]))
			}
			if _, _, err := c.WriteMsgUDP(msg, oob, server); err != nil {
				if udpseg.Refused(err) {
					t.Skipf("this kernel cannot send with UDP GSO on loopback: %v", err)
				}
				t.Fatal(err)
			}
			got := map[string]bool{}
			buf := make([]byte, 2048)
			deadline := time.Now().Add(5 * time.Second)
			for len(got) < len(want) {
				_ = c.SetReadDeadline(deadline)
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("%d version negotiation packets of %d: %v (got %x)", len(got), len(want), err, keys(got))
				}
				id, ok := versionNegotiationDCIDEcho(buf[:n])
				if !ok {
					t.Fatalf("not a version negotiation packet: %x", buf[:min(n, 32)])
				}
				if !want[string(id)] {
					t.Fatalf("version negotiation for connection ID %x, which was not sent (sent %x)", id, keys(want))
				}
				got[string(id)] = true
			}
		})
	}
}

// unknownVersionPacket is a long-header packet of size bytes in version
// 0x1a2a3a4a (reserved, never supported) with destination connection ID
// id and an empty source connection ID.
func unknownVersionPacket(id []byte, size int) []byte {
	p := []byte{0xc0}
	p = binary.BigEndian.AppendUint32(p, 0x1a2a3a4a)
	p = append(p, byte(len(id)))
	p = append(p, id...)
	p = append(p, 0)
	return append(p, bytes.Repeat([]byte{0x5a}, size-len(p))...)
}

// versionNegotiationDCIDEcho returns the source connection ID of a version
// negotiation packet: the destination ID of the packet it answers.
func versionNegotiationDCIDEcho(p []byte) ([]byte, bool) {
	if len(p) < 7 || p[0]&0x80 == 0 || binary.BigEndian.Uint32(p[1:5]) != 0 {
		return nil, false
	}
	rest := p[5:]
	dl := int(rest[0])
	if len(rest) < 1+dl+1 {
		return nil, false
	}
	rest = rest[1+dl:]
	sl := int(rest[0])
	if len(rest) < 1+sl {
		return nil, false
	}
	return rest[1 : 1+sl], true
}

// udpSegmentMsg is the control message of a UDP GSO send of datagrams of
// size bytes.
func udpSegmentMsg(size uint16) []byte {
	return udpseg.PutSegmentSize(make([]byte, udpseg.CmsgSpace), int(size))
}

// kernelHasGRO reports whether a UDP socket of this kernel takes UDP_GRO.
func kernelHasGRO(t *testing.T) bool {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return udpseg.EnableGRO(c)
}

func keys(m map[string]bool) [][]byte {
	var out [][]byte
	for k := range m {
		out = append(out, []byte(k))
	}
	return out
}
