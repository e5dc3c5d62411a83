package netstack

import (
	"net/netip"
	"testing"
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
