package gateway

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// TestTunnelOutputCutsSuperPackets: a TCP super-packet that gVisor hands
// the tunnel link reaches the agent as the segments gVisor would have sent
// one by one, each its own datagram: the agent's address put back, MSS
// payload bytes each (the last the rest), sequence numbers and IPv4
// identifiers advancing, PSH and FIN on the last only, every checksum
// whole. That holds for an MSS smaller than the headers too: gVisor sends
// such segments to an agent that announces a small MSS or reports a small
// path MTU. A super-packet to no ingress, or that does not match its
// layout, is counted and dropped.
func TestTunnelOutputCutsSuperPackets(t *testing.T) {
	for _, c := range []struct {
		name      string
		mss, size int
	}{
		{"datagram-sized", 1134, 10000},
		{"smaller than the headers", 20, 300},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newOutputFixture(t)
			got := make(chanSender, 64)
			in := f.add(t, "laptop", got)

			const seq = 0xfffff000
			mss, size := c.mss, c.size
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i * 13)
			}
			vip := netip.MustParseAddrPort("10.100.0.20:80")
			flags := uint8(netstacktest.FlagACK | netstacktest.FlagPSH | netstacktest.FlagFIN)
			super := netstacktest.TCPSegment(vip, netip.AddrPortFrom(in.synth, 40000), flags, seq, payload)
			layout := netstack.GSO{L3Len: 20, HdrLen: 40, MSS: mss}
			if err := f.out.WriteGSO(super, layout); err != nil {
				t.Fatal(err)
			}
			n := (size + mss - 1) / mss
			for k := range n {
				chunk := payload[k*mss : min((k+1)*mss, size)]
				fl := uint8(netstacktest.FlagACK)
				if k == n-1 {
					fl = flags
				}
				want := netstacktest.TCPSegment(vip, netip.AddrPortFrom(agentInner, 40000), fl, seq+uint32(k*mss), chunk)
				want[4], want[5] = byte((0x2a2a+k)>>8), byte(0x2a2a+k) // the identifier advances from TCPSegment's 0x2a2a
				netstacktest.SetIPv4Checksum(want)
				select {
				case d := <-got:
					if !bytes.Equal(d, want) {
						t.Fatalf("segment %d of %d:\n got % x\nwant % x", k, n, d[:min(len(d), 48)], want[:min(len(want), 48)])
					}
				case <-time.After(time.Second):
					t.Fatalf("%d of %d segments sent", k, n)
				}
			}
			select {
			case d := <-got:
				t.Fatalf("a datagram after the last segment: % x", d[:min(len(d), 48)])
			case <-time.After(50 * time.Millisecond):
			}

			nobody := netstacktest.TCPSegment(vip, netip.MustParseAddrPort("169.254.200.200:40000"), flags, seq, payload)
			f.out.WriteGSO(nobody, layout)
			bad := netstacktest.TCPSegment(vip, netip.AddrPortFrom(in.synth, 40000), flags, seq, payload)
			f.out.WriteGSO(bad, netstack.GSO{L3Len: 20, HdrLen: 44, MSS: mss}) // the TCP header is 20 bytes
			for reason, want := range map[string]float64{"no_ingress": 1, "malformed_out": 1} {
				if n := testutil.ToFloat64(f.g.m.dropped.WithLabelValues(reason)); n != want {
					t.Errorf("dropped as %s: %v, want %v", reason, n, want)
				}
			}
			if len(got) != 0 {
				t.Errorf("%d datagrams sent of super-packets that go nowhere", len(got))
			}
		})
	}
}

// TestTunnelOutputSegmentsLargerThanDatagrams: a connection that began
// before a session lowered the tunnel link's MTU keeps its larger MSS, so
// some of its segments no longer fit the agent's datagrams. Each is
// counted as send_error, as a packet of the link's writer too large for
// the session, and the others go out, for a direct agent as for one
// behind a relay (framed with its tag).
func TestTunnelOutputSegmentsLargerThanDatagrams(t *testing.T) {
	const limit, mss, size = 1200, 1400, 5000 // 3 segments of 1440 bytes, the last of 840
	for _, tagged := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "relayed"}[tagged], func(t *testing.T) {
			f := newOutputFixture(t)
			var mu sync.Mutex
			var sent [][]byte
			s := funcSender(func(b []byte) error {
				if len(b) > limit {
					return errors.New("datagram too large")
				}
				mu.Lock()
				defer mu.Unlock()
				sent = append(sent, slices.Clone(b))
				return nil
			})
			var in *ingress
			if tagged {
				out := f.g.relayOutbox(s)
				t.Cleanup(out.Close)
				in = f.addTag(t, 7, out)
			} else {
				in = f.add(t, "laptop", s)
			}
			vip := netip.MustParseAddrPort("10.100.0.20:80")
			super := netstacktest.TCPSegment(vip, netip.AddrPortFrom(in.synth, 40000), netstacktest.FlagACK, 1, make([]byte, size))
			if err := f.out.WriteGSO(super, netstack.GSO{L3Len: 20, HdrLen: 40, MSS: mss}); err != nil {
				t.Fatal(err)
			}
			sendErrors := func() float64 { return testutil.ToFloat64(f.g.m.dropped.WithLabelValues("send_error")) }
			waitFor(t, 5*time.Second, "every segment sent or counted", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(sent)+int(sendErrors()) == 4
			})
			if n := sendErrors(); n != 3 {
				t.Errorf("send_error %v, want 3", n)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(sent) != 1 {
				t.Fatalf("%d datagrams sent, want 1", len(sent))
			}
			pkt := sent[0]
			if tagged {
				tag, p, err := tunnel.ParseTagReturn(pkt)
				if err != nil || tag != 7 {
					t.Fatalf("a relayed agent's segment: tag %d, %v", tag, err)
				}
				pkt = p
			}
			if _, dst, ok := netstack.IPv4Addrs(pkt); !ok || dst != agentInner || len(pkt) != 40+size-3*mss {
				t.Errorf("the segment sent: %d bytes to %v, want the last, %d bytes to %v", len(pkt), dst, 40+size-3*mss, agentInner)
			}
		})
	}
}
