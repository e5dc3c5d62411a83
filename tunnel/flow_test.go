package tunnel

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// Test packets of the flow tests.
func ipv4Packet(proto uint8, src, dst netip.Addr, l4 []byte) []byte {
	p := make([]byte, 20, 20+len(l4))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(20+len(l4)))
	p[8], p[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	return append(p, l4...)
}

func tcpSegment(src, dst netip.AddrPort, flags byte) []byte {
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4, src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	l4[12], l4[13] = 5<<4, flags
	return ipv4Packet(ProtoTCP, src.Addr(), dst.Addr(), l4)
}

func udpDatagram(src, dst netip.AddrPort) []byte {
	l4 := make([]byte, 9)
	binary.BigEndian.PutUint16(l4, src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	return ipv4Packet(ProtoUDP, src.Addr(), dst.Addr(), l4)
}

func icmpMessage(src, dst netip.Addr, typ byte, id uint16) []byte {
	l4 := make([]byte, 8)
	l4[0] = typ
	binary.BigEndian.PutUint16(l4[4:], id)
	return ipv4Packet(ProtoICMP, src, dst, l4)
}

var (
	flowSrc = netip.MustParseAddrPort("100.64.0.1:40000")
	flowDst = netip.MustParseAddrPort("10.100.0.2:80")
)

func TestParseFlow(t *testing.T) {
	withFlags := func(p []byte, flags uint16) []byte {
		binary.BigEndian.PutUint16(p[6:], flags)
		return p
	}
	v6 := make([]byte, 60)
	v6[0] = 0x60
	tests := []struct {
		name           string
		packet         []byte
		ok             bool
		proto          uint8
		sport          uint16
		start, closing bool
	}{
		{"udp", udpDatagram(flowSrc, flowDst), true, ProtoUDP, 40000, false, false},
		{"udp with DF", withFlags(udpDatagram(flowSrc, flowDst), 0x4000), true, ProtoUDP, 40000, false, false},
		{"tcp syn", tcpSegment(flowSrc, flowDst, 0x02), true, ProtoTCP, 40000, true, false},
		{"tcp syn-ack is no start", tcpSegment(flowSrc, flowDst, 0x12), true, ProtoTCP, 40000, false, false},
		{"tcp ack", tcpSegment(flowSrc, flowDst, 0x10), true, ProtoTCP, 40000, false, false},
		{"tcp fin", tcpSegment(flowSrc, flowDst, 0x11), true, ProtoTCP, 40000, false, true},
		{"tcp rst", tcpSegment(flowSrc, flowDst, 0x04), true, ProtoTCP, 40000, false, true},
		{"icmp echo: id as port", icmpMessage(flowSrc.Addr(), flowDst.Addr(), 8, 77), true, ProtoICMP, 77, false, false},
		{"icmp unreachable: no port", icmpMessage(flowSrc.Addr(), flowDst.Addr(), 3, 77), true, ProtoICMP, 0, false, false},
		{"first fragment", withFlags(udpDatagram(flowSrc, flowDst), 0x2000), false, 0, 0, false, false},
		{"later fragment", withFlags(udpDatagram(flowSrc, flowDst), 0x0010), false, 0, 0, false, false},
		{"ipv6", v6, false, 0, 0, false, false},
		{"truncated tcp", tcpSegment(flowSrc, flowDst, 0x02)[:30], false, 0, 0, false, false},
		{"truncated ip", udpDatagram(flowSrc, flowDst)[:19], false, 0, 0, false, false},
		{"header length below 20", append([]byte{0x44}, udpDatagram(flowSrc, flowDst)[1:]...), false, 0, 0, false, false},
		{"header length beyond the packet", append([]byte{0x4f}, udpDatagram(flowSrc, flowDst)[1:24]...), false, 0, 0, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, ok := ParseFlow(tc.packet)
			if ok != tc.ok {
				t.Fatalf("ok %v", ok)
			}
			if !ok {
				return
			}
			if f.Key.Proto != tc.proto || f.Key.SrcPort != tc.sport || f.Start != tc.start || f.Closing != tc.closing ||
				f.Key.Src != flowSrc.Addr().As4() || f.Key.Dst != flowDst.Addr().As4() {
				t.Errorf("got %+v", f)
			}
		})
	}
}

func FuzzParseFlow(f *testing.F) {
	f.Add(tcpSegment(flowSrc, flowDst, 0x02))
	f.Add(udpDatagram(flowSrc, flowDst))
	f.Add(icmpMessage(flowSrc.Addr(), flowDst.Addr(), 8, 1))
	f.Add([]byte{0x4f, 0, 0, 20})
	f.Add(icmpError(flowSrc.Addr(), flowDst.Addr(), 3, udpDatagram(flowDst, flowSrc)))
	f.Fuzz(func(t *testing.T, p []byte) {
		fl, ok := ParseFlow(p)
		if !ok {
			return
		}
		// What parses is an unfragmented IPv4 packet whose addresses the
		// key holds, and flags only TCP has.
		if len(p) < 20 || p[0]>>4 != 4 || p[6]&0x3f != 0 || p[7] != 0 || fl.Key.Src != [4]byte(p[12:16]) || fl.Key.Dst != [4]byte(p[16:20]) {
			t.Fatalf("accepted % x as %+v", p, fl)
		}
		// An ICMP error is keyed by the TCP or UDP flow it quotes.
		if fl.Error && (p[9] != ProtoICMP || fl.Key.Proto != ProtoTCP && fl.Key.Proto != ProtoUDP) || !fl.Error && fl.Key.Proto != p[9] {
			t.Fatalf("accepted % x as %+v", p, fl)
		}
		if (fl.Start || fl.Closing) && fl.Key.Proto != ProtoTCP {
			t.Fatalf("TCP flags on protocol %d", fl.Key.Proto)
		}
	})
}

// key returns the flow key of a UDP datagram from port.
func key(port uint16) FlowKey {
	f, _ := ParseFlow(udpDatagram(netip.AddrPortFrom(flowSrc.Addr(), port), flowDst))
	return f.Key
}

func TestFlowTable(t *testing.T) {
	sec := int64(time.Second)
	type op struct {
		put      bool // Put value at; else Lookup
		sweep    bool
		port     uint16
		value    int
		at       int64 // seconds
		idle     time.Duration
		want     int // Lookup: the value, -1 for a miss
		len      int
		removals map[FlowRemoval]int // cumulative
	}
	tests := []struct {
		name string
		max  int
		ops  []op
	}{
		{"put and look up", 4, []op{
			{put: true, port: 1, value: 10, idle: 10 * time.Second, len: 1},
			{port: 1, at: 5, want: 10, len: 1},
			{port: 2, at: 5, want: -1, len: 1},
		}},
		{"a lookup refreshes", 4, []op{
			{put: true, port: 1, value: 10, idle: 10 * time.Second, len: 1},
			{port: 1, at: 9, want: 10, len: 1},
			{port: 1, at: 18, want: 10, len: 1},
			{port: 1, at: 29, want: -1, len: 1},
		}},
		{"a lookup may shorten the timeout", 4, []op{
			{put: true, port: 1, value: 10, idle: time.Hour, len: 1},
			{port: 1, at: 1, idle: 2 * time.Second, want: 10, len: 1},
			{port: 1, at: 4, want: -1, len: 1},
		}},
		{"replace", 4, []op{
			{put: true, port: 1, value: 10, idle: time.Hour, len: 1},
			{put: true, port: 1, value: 11, idle: time.Hour, len: 1, removals: map[FlowRemoval]int{FlowReplaced: 1}},
			{port: 1, want: 11, len: 1, removals: map[FlowRemoval]int{FlowReplaced: 1}},
		}},
		{"sweep removes what expired, not more often than every 5 s", 4, []op{
			{put: true, port: 1, value: 1, idle: time.Second, len: 1},
			{put: true, port: 2, value: 2, idle: time.Hour, len: 2},
			{sweep: true, at: 3, len: 2},
			{sweep: true, at: 6, len: 1, removals: map[FlowRemoval]int{FlowExpired: 1}},
			{port: 2, at: 6, want: 2, len: 1, removals: map[FlowRemoval]int{FlowExpired: 1}},
		}},
		{"full: expired entries go first", 2, []op{
			{put: true, port: 1, value: 1, idle: time.Second, len: 1},
			{put: true, port: 2, value: 2, idle: time.Hour, len: 2},
			{put: true, port: 3, value: 3, at: 5, idle: time.Hour, len: 2, removals: map[FlowRemoval]int{FlowExpired: 1}},
			{port: 2, at: 5, want: 2, len: 2, removals: map[FlowRemoval]int{FlowExpired: 1}},
		}},
		{"full: the stalest is evicted", 2, []op{
			{put: true, port: 1, value: 1, idle: time.Hour, len: 1},
			{put: true, port: 2, value: 2, at: 1, idle: time.Hour, len: 2},
			{port: 1, at: 2, want: 1, len: 2},
			{put: true, port: 3, value: 3, at: 3, idle: time.Hour, len: 2, removals: map[FlowRemoval]int{FlowEvicted: 1}},
			{port: 2, at: 3, want: -1, len: 2, removals: map[FlowRemoval]int{FlowEvicted: 1}},
			{port: 1, at: 3, want: 1, len: 2, removals: map[FlowRemoval]int{FlowEvicted: 1}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			removals := map[FlowRemoval]int{}
			ft := NewFlowTable(tc.max, func(_ int, why FlowRemoval) { removals[why]++ })
			for i, o := range tc.ops {
				switch {
				case o.put:
					ft.Put(key(o.port), o.value, o.at*sec, o.idle)
				case o.sweep:
					ft.Sweep(o.at * sec)
				default:
					v, ok := ft.Lookup(key(o.port), o.at*sec, o.idle)
					if !ok {
						v = -1
					}
					if v != o.want {
						t.Fatalf("op %d: looked up %d, want %d", i, v, o.want)
					}
				}
				if ft.Len() != o.len {
					t.Fatalf("op %d: %d entries, want %d", i, ft.Len(), o.len)
				}
				for _, why := range []FlowRemoval{FlowExpired, FlowEvicted, FlowReplaced, FlowCleared} {
					if removals[why] != o.removals[why] {
						t.Fatalf("op %d: removals %v, want %v", i, removals, o.removals)
					}
				}
			}
			n := ft.Len()
			ft.Clear()
			if ft.Len() != 0 || removals[FlowCleared] != n {
				t.Errorf("clear: %d left, %d reported", ft.Len(), removals[FlowCleared])
			}
		})
	}
}

// BenchmarkFlowTableLookup is the per-packet cost of a known flow: parse
// the 5-tuple, look it up, refresh it. It must not allocate.
func BenchmarkFlowTableLookup(b *testing.B) {
	ft := NewFlowTable[*int](8192, nil)
	v := new(int)
	for i := range 4096 {
		ft.Put(key(uint16(1000+i)), v, 0, time.Hour)
	}
	pkt := udpDatagram(netip.AddrPortFrom(flowSrc.Addr(), 3000), flowDst)
	b.ReportAllocs()
	now := int64(0)
	for b.Loop() {
		now++
		f, _ := ParseFlow(pkt)
		if _, ok := ft.Lookup(f.Key, now, 0); !ok {
			b.Fatal("miss")
		}
	}
}

func TestFlowIdle(t *testing.T) {
	tests := []struct {
		name          string
		packet        []byte
		idle, refresh time.Duration
	}{
		{"tcp", tcpSegment(flowSrc, flowDst, 0x10), FlowTCPIdle, 0},
		{"tcp fin", tcpSegment(flowSrc, flowDst, 0x11), FlowClosingIdle, FlowClosingIdle},
		{"udp", udpDatagram(flowSrc, flowDst), FlowUDPIdle, 0},
		{"icmp", icmpMessage(flowSrc.Addr(), flowDst.Addr(), 8, 1), FlowOtherIdle, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := ParseFlow(tc.packet)
			if f.Idle() != tc.idle || f.Refresh() != tc.refresh {
				t.Errorf("idle %v refresh %v", f.Idle(), f.Refresh())
			}
		})
	}
}

// icmpError is an ICMP error of type typ from src to dst quoting q.
func icmpError(src, dst netip.Addr, typ byte, q []byte) []byte {
	l4 := append(make([]byte, 8, 8+len(q)), q...)
	l4[0] = typ
	return ipv4Packet(ProtoICMP, src, dst, l4)
}

// TestParseFlowICMPError: an ICMP error that an agent sends about a
// packet of one of its flows (its port unreachable for a backend's late
// datagram) is keyed by that flow, as the agent sends it, so that it goes
// where the flow goes; an error whose quote is not from where it is sent
// to, or names no ports, is an ICMP packet of its own, as before.
func TestParseFlowICMPError(t *testing.T) {
	reply := udpDatagram(flowDst, flowSrc) // the backend's datagram, as the agent got it
	segment := tcpSegment(flowDst, flowSrc, 0x12)
	other := udpDatagram(netip.MustParseAddrPort("10.100.0.9:53"), flowSrc)
	fragment := udpDatagram(flowDst, flowSrc)
	binary.BigEndian.PutUint16(fragment[6:], 185) // a later fragment: its quote has no ports
	flowKey := func(proto uint8) FlowKey {
		return FlowKey{Src: flowSrc.Addr().As4(), Dst: flowDst.Addr().As4(), SrcPort: flowSrc.Port(), DstPort: flowDst.Port(), Proto: proto}
	}
	plain := FlowKey{Src: flowSrc.Addr().As4(), Dst: flowDst.Addr().As4(), Proto: ProtoICMP}
	for _, tc := range []struct {
		name  string
		p     []byte
		error bool
		key   FlowKey
	}{
		{"port unreachable about a UDP reply", icmpError(flowSrc.Addr(), flowDst.Addr(), 3, reply), true, flowKey(ProtoUDP)},
		{"unreachable about a TCP segment", icmpError(flowSrc.Addr(), flowDst.Addr(), 3, segment), true, flowKey(ProtoTCP)},
		{"time exceeded", icmpError(flowSrc.Addr(), flowDst.Addr(), 11, reply), true, flowKey(ProtoUDP)},
		{"parameter problem", icmpError(flowSrc.Addr(), flowDst.Addr(), 12, reply), true, flowKey(ProtoUDP)},
		{"quote of a packet from another address", icmpError(flowSrc.Addr(), flowDst.Addr(), 3, other), false, plain},
		{"quote cut before its ports", icmpError(flowSrc.Addr(), flowDst.Addr(), 3, reply[:22]), false, plain},
		{"quote of a later fragment", icmpError(flowSrc.Addr(), flowDst.Addr(), 3, fragment), false, plain},
		{"quote of an ICMP packet", icmpError(flowSrc.Addr(), flowDst.Addr(), 3, icmpMessage(flowDst.Addr(), flowSrc.Addr(), 0, 7)), false, plain},
		{"source quench is no error here", icmpError(flowSrc.Addr(), flowDst.Addr(), 4, reply), false, plain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, ok := ParseFlow(tc.p)
			if !ok || f.Error != tc.error || f.Key != tc.key || f.Start || f.Closing {
				t.Errorf("ParseFlow = %+v, %v; want key %+v, error %v", f, ok, tc.key, tc.error)
			}
		})
	}
}
