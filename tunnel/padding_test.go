package tunnel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

// padTo is what SendDatagram does to a datagram on a session that pads:
// b padded to size in buf when paddable, else b.
func padTo(b []byte, size int, buf *[maxPadded]byte) []byte {
	if !paddable(b, size) {
		return b
	}
	return fill(b, size, buf)
}

// ip6Packet returns an IPv6 packet of n bytes (at least 40).
func ip6Packet(n int) []byte {
	b := make([]byte, n)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(n-40))
	return b
}

func TestDataEnd(t *testing.T) {
	v4 := ip4Packet(100, 7)
	v6 := ip6Packet(80)
	routed, _ := AppendRouted(nil, "web", v4)
	tagged, _ := AppendTagged(nil, 9, "web", v4)
	tagReturn := AppendTagReturn(nil, 9, v6)
	qad, _ := AppendQAD(nil, netip.MustParseAddrPort("192.0.2.1:443"))
	reg, _ := AppendRegistration(nil, TypeAgentRegistration, "web")
	shortV4 := ip4Packet(100, 7)
	binary.BigEndian.PutUint16(shortV4[2:4], 19) // shorter than a header
	tests := []struct {
		name string
		b    []byte
		end  int
		ok   bool
	}{
		{"raw IPv4", v4, 100, true},
		{"raw IPv6", v6, 80, true},
		{"routed", routed, 5 + 100, true},
		{"tagged", tagged, 9 + 100, true},
		{"tag return", tagReturn, 5 + 80, true},
		{"IPv4 length below its header", shortV4, 0, false},
		{"truncated IPv4 header", v4[:19], 0, false},
		{"truncated IPv6 header", v6[:39], 0, false},
		{"routed without packet", routed[:5], 0, false},
		{"routed shorter than its name", routed[:3], 0, false},
		{"tagged without length byte", tagged[:5], 0, false},
		{"tag return without packet", tagReturn[:5], 0, false},
		{"QAD", qad, 0, false},
		{"registration", reg, 0, false},
		{"empty", nil, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			end, ok := dataEnd(tc.b)
			if end != tc.end || ok != tc.ok {
				t.Fatalf("dataEnd = %d, %v; want %d, %v", end, ok, tc.end, tc.ok)
			}
		})
	}
}

func TestPadAndTrim(t *testing.T) {
	const size = 1243
	v4 := ip4Packet(1174, 3)
	routed, _ := AppendRouted(nil, "web", v4)
	tagged, _ := AppendTagged(nil, 1, "web", v4)
	liar := ip4Packet(1200, 3)
	binary.BigEndian.PutUint16(liar[2:4], 1300) // claims more than it has
	reg, _ := AppendRegistration(nil, TypeAgentRegistration, "web")
	tests := []struct {
		name   string
		b      []byte
		size   int
		padded bool
	}{
		{"raw packet 69 bytes short", v4, size, true},
		{"routed packet", routed, size, true},
		{"tagged packet", tagged, size, true},
		{"exactly padSlack short", ip4Packet(size-padSlack, 1), size, true},
		{"more than padSlack short", ip4Packet(size-padSlack-1, 1), size, false},
		{"already full", ip4Packet(size, 1), size, false},
		{"larger than size", ip4Packet(size+1, 1), size, false},
		{"size beyond any packet", ip4Packet(maxPadded, 1), maxPadded + 1, false},
		{"IP length beyond the datagram", liar, size, false},
		{"control datagram", reg, len(reg) + 10, false},
		{"unknown size", v4, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := bytes.Clone(tc.b)
			var buf [maxPadded]byte
			for i := range buf {
				buf[i] = 0xEE // stale bytes must not leak into padding
			}
			got := padTo(tc.b, tc.size, &buf)
			if !bytes.Equal(tc.b, orig) {
				t.Fatal("padTo changed its input")
			}
			if !tc.padded {
				if !bytes.Equal(got, tc.b) {
					t.Fatalf("padded %d bytes to %d", len(tc.b), len(got))
				}
				return
			}
			if len(got) != tc.size || !bytes.Equal(got[:len(tc.b)], tc.b) {
				t.Fatalf("padded to %d bytes, want %d with the datagram first", len(got), tc.size)
			}
			if pad := got[len(tc.b):]; !bytes.Equal(pad, make([]byte, len(pad))) {
				t.Fatal("padding is not zeros")
			}
			if trimmed := trimPadding(got); !bytes.Equal(trimmed, tc.b) {
				t.Fatalf("trimmed to %d bytes, want %d", len(trimmed), len(tc.b))
			}
		})
	}
	// A datagram whose IP packet claims more bytes than it carries is left
	// for the parser to refuse.
	if got := trimPadding(liar); len(got) != len(liar) {
		t.Errorf("trimmed a lying packet to %d bytes", len(got))
	}
}

// sizeCounter counts the UDP payloads of one direction by size, as a
// proxy observes them.
type sizeCounter struct {
	mu    sync.Mutex
	sizes map[int]int
}

func (c *sizeCounter) count(n int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sizes[n]
}

func (c *sizeCounter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprint(c.sizes)
}

// connectCounting connects a client and a server through a proxy that
// counts the sizes of the UDP datagrams towards the server (toServer) or
// the client, once the handshake's last packets have passed.
func connectCounting(t *testing.T, toServer bool) (client, server *Session, c *sizeCounter) {
	sf := newSessionFixture(t, false)
	c = &sizeCounter{sizes: map[int]int{}}
	p, err := tunneltest.NewProxy(tunneltest.ProxyConfig{
		Target: sf.addr(),
		Observe: func(up bool, n int) {
			if up == toServer {
				c.mu.Lock()
				c.sizes[n]++
				c.mu.Unlock()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	client, server = sf.connectVia(p.Addr(), sf.dialConfig(sf.agentCreds()))
	time.Sleep(100 * time.Millisecond)
	return client, server, c
}

// TestPaddingFillsPackets sends datagrams a little short of the largest
// over a v2 session through a proxy that records the size of every UDP
// datagram: each must go out as a QUIC packet of exactly the connection's
// packet size (the condition for quic-go's GSO batches), and arrive
// without its padding. It guards connIDLen and the path MTU setting
// against a quic-go upgrade that changes its header arithmetic.
func TestPaddingFillsPackets(t *testing.T) {
	client, server, sizes := connectCounting(t, true)
	before := sizes.count(packetSize)

	const n = 50
	max := client.MaxDatagram()
	for i := range n {
		pkt := ip4Packet(max-60, byte(i)) // 60 bytes short: the service name room of a TUN MTU
		if err := client.SendDatagram(pkt); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, server); !bytes.Equal(got, pkt) {
			t.Fatalf("datagram %d: received %d bytes, want the %d sent", i, len(got), len(pkt))
		}
	}
	if full := sizes.count(packetSize) - before; full < n {
		t.Fatalf("%d of %d padded datagrams left in %d-byte packets; sizes seen: %v", full, n, packetSize, sizes)
	}
}

// packetSize is the size of every QUIC packet of a tunnel connection:
// quic-go's initial packet size, kept with path MTU discovery off.
const packetSize = 1280

// TestV1NotPadded: the original agents take every byte of a datagram as
// the IP packet, so a v1 session sends exactly what it is given.
func TestV1NotPadded(t *testing.T) {
	sf := newSessionFixture(t, false)
	client, server := sf.connect(sf.dialConfig(sf.agentCreds(), ALPNV1))
	for _, from := range []struct {
		name     string
		src, dst *Session
	}{{"client", client, server}, {"server", server, client}} {
		pkt := ip4Packet(from.src.MaxDatagram()-20, 5)
		if err := from.src.SendDatagram(pkt); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, from.dst); !bytes.Equal(got, pkt) {
			t.Fatalf("%s sent %d bytes, %d arrived", from.name, len(pkt), len(got))
		}
	}
}

// TestPaddingOnlyToPeersThatTrim: a ztna-v2 peer that did not announce
// padding in its hello or welcome (an older ztgate) gets datagrams as they
// are, so that a relay of that build never forwards zeros it cannot fit.
func TestPaddingOnlyToPeersThatTrim(t *testing.T) {
	msg, err := DecodeControl(MessageHello, []byte(`{"type":"hello","role":"agent","name":"old"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if msg.(*Hello).Padding {
		t.Fatal("a hello without the field announces padding")
	}
	client, server, sizes := connectCounting(t, false)
	server.pad.Store(false) // what acceptHello records for such a hello
	before := sizes.count(packetSize)
	for i := range 20 {
		pkt := ip4Packet(server.MaxDatagram()-60, byte(i))
		if err := server.SendDatagram(pkt); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, client); !bytes.Equal(got, pkt) {
			t.Fatalf("datagram %d: received %d bytes, want %d", i, len(got), len(pkt))
		}
	}
	if full := sizes.count(packetSize) - before; full != 0 {
		t.Fatalf("%d datagrams padded to a peer that does not trim; sizes: %v", full, sizes)
	}
}
