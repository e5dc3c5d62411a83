package tunnel

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// fragmentOf makes p (an IPv4 packet of a 20-byte header) look like a
// fragment of datagram id at offset (in 8-byte units), with more to follow
// or not. The transport header stays where a first fragment has it; a
// later fragment's bytes there are payload.
func fragmentOf(p []byte, id, offset uint16, more bool) []byte {
	p = append([]byte(nil), p...)
	binary.BigEndian.PutUint16(p[4:], id)
	v := offset
	if more {
		v |= 0x2000
	}
	binary.BigEndian.PutUint16(p[6:], v)
	return p
}

// TestFragmentsFlow: every fragment of a datagram gets the flow its first
// fragment named, until the last one or FragmentTimeout; a whole packet
// gets ParseFlow's flow, and nothing is remembered of it.
func TestFragmentsFlow(t *testing.T) {
	first := udpDatagram(flowSrc, flowDst)
	want, _ := ParseFlow(first)
	// A later fragment whose payload, where a first fragment has its
	// ports, says another flow.
	other := udpDatagram(netip.AddrPortFrom(flowSrc.Addr(), 1), netip.AddrPortFrom(flowDst.Addr(), 2))
	type step struct {
		p      []byte
		at     time.Duration
		ok     bool
		key    FlowKey
		remain int
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"a whole packet", []step{{first, 0, true, want.Key, 0}}},
		{"first, middle and last fragment", []step{
			{fragmentOf(first, 7, 0, true), 0, true, want.Key, 1},
			{fragmentOf(other, 7, 185, true), time.Millisecond, true, want.Key, 1},
			{fragmentOf(other, 7, 370, false), time.Millisecond, true, want.Key, 0},
			{fragmentOf(other, 7, 370, false), time.Millisecond, false, FlowKey{}, 0}, // a duplicate of the last: forgotten
		}},
		{"a later fragment whose first was not seen", []step{
			{fragmentOf(other, 7, 185, false), 0, false, FlowKey{}, 0},
		}},
		{"another datagram's fragment", []step{
			{fragmentOf(first, 7, 0, true), 0, true, want.Key, 1},
			{fragmentOf(other, 8, 185, false), 0, false, FlowKey{}, 1},
		}},
		{"a fragment of another protocol with the same identification", []step{
			{fragmentOf(first, 7, 0, true), 0, true, want.Key, 1},
			{fragmentOf(tcpSegment(flowSrc, flowDst, 0x10), 7, 185, false), 0, false, FlowKey{}, 1},
		}},
		{"a later fragment after the timeout", []step{
			{fragmentOf(first, 7, 0, true), 0, true, want.Key, 1},
			{fragmentOf(other, 7, 185, false), FragmentTimeout + time.Millisecond, false, FlowKey{}, 0},
		}},
		{"a first fragment too short for its ports", []step{
			{fragmentOf(first[:22], 7, 0, true), 0, false, FlowKey{}, 0},
			{fragmentOf(other, 7, 185, false), 0, false, FlowKey{}, 0},
		}},
		{"a tcp syn's first fragment", []step{
			{fragmentOf(tcpSegment(flowSrc, flowDst, 0x02), 9, 0, true), 0, true, FlowKey{Src: want.Key.Src, Dst: want.Key.Dst, SrcPort: flowSrc.Port(), DstPort: flowDst.Port(), Proto: ProtoTCP}, 1},
		}},
		{"an echo request's fragments", []step{
			{fragmentOf(icmpMessage(flowSrc.Addr(), flowDst.Addr(), 8, 77), 3, 0, true), 0, true, FlowKey{Src: want.Key.Src, Dst: want.Key.Dst, SrcPort: 77, Proto: ProtoICMP}, 1},
			{fragmentOf(other, 3, 185, false)[:20:20], 0, false, FlowKey{}, 1}, // UDP's: another protocol
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ft := NewFragments(16)
			now := int64(1e9)
			for i, s := range tc.steps {
				f, ok := ft.Flow(s.p, now+int64(s.at))
				if ok != s.ok || ok && f.Key != s.key {
					t.Fatalf("step %d: %+v, %v; want %+v, %v", i, f.Key, ok, s.key, s.ok)
				}
				if ok && binary.BigEndian.Uint16(s.p[6:])&0x1fff != 0 && (f.Start || f.Closing || f.Error) {
					t.Errorf("step %d: a later fragment is %+v", i, f)
				}
				if ft.Len() != s.remain {
					t.Errorf("step %d: %d datagrams remembered, want %d", i, ft.Len(), s.remain)
				}
			}
		})
	}
}

// TestFragmentsBound: a table at its bound takes a new datagram in place
// of an expired one if there is one, else of any other, and never holds
// more than its bound.
func TestFragmentsBound(t *testing.T) {
	ft := NewFragments(4)
	p := udpDatagram(flowSrc, flowDst)
	now := int64(1e9)
	for id := range uint16(4) {
		ft.Flow(fragmentOf(p, id, 0, true), now)
	}
	later := now + int64(FragmentTimeout) + 1
	ft.Flow(fragmentOf(p, 100, 0, true), later) // all four expired
	if ft.Len() != 1 {
		t.Errorf("%d datagrams remembered, want the new one only", ft.Len())
	}
	for id := range uint16(50) {
		ft.Flow(fragmentOf(p, 200+id, 0, true), later)
		if ft.Len() > 4 {
			t.Fatalf("%d datagrams remembered, bound 4", ft.Len())
		}
	}
	if _, ok := ft.Flow(fragmentOf(p, 249, 185, false), later); !ok {
		t.Error("the newest datagram's last fragment found no flow")
	}
}

func FuzzFragments(f *testing.F) {
	f.Add(fragmentOf(udpDatagram(flowSrc, flowDst), 7, 0, true), fragmentOf(udpDatagram(flowSrc, flowDst), 7, 185, false))
	f.Add(udpDatagram(flowSrc, flowDst), tcpSegment(flowSrc, flowDst, 0x02))
	f.Add(fragmentOf(icmpMessage(flowSrc.Addr(), flowDst.Addr(), 8, 1), 1, 0, true), []byte{0x45, 0, 0, 20, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		ft := NewFragments(2)
		fa, okA := ft.Flow(a, 1)
		fb, okB := ft.Flow(b, 2)
		for _, c := range []struct {
			p  []byte
			f  Flow
			ok bool
		}{{a, fa, okA}, {b, fb, okB}} {
			if !c.ok {
				continue
			}
			if whole, ok := ParseFlow(c.p); ok && whole != c.f {
				t.Fatalf("% x: %+v, ParseFlow %+v", c.p, c.f, whole)
			}
			if len(c.p) < 20 || c.p[0]>>4 != 4 || !c.f.Error && (c.f.Key.Src != [4]byte(c.p[12:16]) || c.f.Key.Dst != [4]byte(c.p[16:20])) {
				t.Fatalf("accepted % x as %+v", c.p, c.f)
			}
		}
		if okB && binary.BigEndian.Uint16(b[6:])&0x1fff != 0 && (!okA || fb.Key != fa.Key) {
			t.Fatalf("a later fragment % x got %+v, not its first's flow (%+v, %v)", b, fb, fa, okA)
		}
		if ft.Len() > 2 {
			t.Fatalf("%d datagrams remembered, bound 2", ft.Len())
		}
	})
}
