package netstack_test

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// discard is an Output that counts and drops what the stack sends.
type discard struct{ n atomic.Int64 }

func (d *discard) WritePackets(pkts [][]byte) error {
	d.n.Add(int64(len(pkts)))
	return nil
}

// dnsAddr is where FuzzLinkDeliver's stack listens for DNS.
var dnsAddr = netip.MustParseAddrPort("10.100.0.1:53")

// FuzzLinkDeliver feeds arbitrary bytes to a link of a stack whose handler
// accepts flows and which listens for DNS: Deliver never panics, and
// whatever the link cannot parse is dropped and counted before gVisor sees
// it. The same bytes, twice, go through GRO to a link whose checksums are
// trusted (a tunnel's), where gVisor checks no checksum.
func FuzzLinkDeliver(f *testing.F) {
	for _, tc := range hostilePackets() {
		f.Add(tc.pkt)
	}
	f.Add(synOf(hostileC))
	f.Add(netstacktest.UDPDatagram(hostileC, vipUDP, []byte("q")))
	f.Add(netstacktest.EchoRequest(clientAddr, accepted, 1, 2, []byte("ping")))
	f.Add(netstacktest.UDPDatagram(hostileC, dnsAddr, []byte("query")))

	var drops atomic.Int64
	ns, err := netstack.New(netstack.Config{
		Pools:            []netip.Prefix{netip.MustParsePrefix("10.100.0.0/24")},
		Local:            []netip.Addr{netip.MustParseAddr("10.100.0.1")},
		Handler:          &echoHandler{},
		HandshakeTimeout: 50 * time.Millisecond,
		OnDrop:           func(netstack.DropReason) { drops.Add(1) },
	}, nil)
	if err != nil {
		f.Fatal(err)
	}
	link, err := ns.NewLink(netstack.LinkConfig{Name: "fuzz", MTU: 1500, Output: &discard{}})
	if err != nil {
		f.Fatal(err)
	}
	// A tunnel's link: checksums taken as valid, packets merged by GRO.
	trusted, err := ns.NewLink(netstack.LinkConfig{Name: "fuzz-trusted", MTU: 1500, Output: &discard{}, ChecksumsTrusted: true})
	if err != nil {
		f.Fatal(err)
	}
	batch := trusted.NewBatch()
	// The DNS server's socket, whose datagrams the links take themselves.
	dns, err := ns.ListenUDP(dnsAddr)
	if err != nil {
		f.Fatal(err)
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := dns.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	f.Cleanup(func() {
		dns.Close()
		link.Close()
		trusted.Close()
		ns.Close()
	})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		before := drops.Load()
		_, _, v4 := netstack.IPv4Addrs(pkt)
		v6 := len(pkt) >= 40 && pkt[0]>>4 == 6
		link.Deliver(pkt)
		if !v4 && !v6 && drops.Load() == before {
			t.Fatalf("unparseable packet % x not counted as dropped", pkt)
		}
		batch.Deliver(pkt)
		batch.Deliver(pkt) // a twin GRO may merge it with
		batch.Flush()
	})
}
