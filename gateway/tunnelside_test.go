package gateway

import (
	"testing"

	"github.com/ztgate/ztgate/tunnel"
)

// TestLinkMTUFor checks the tunnel link's MTU derived from a session
// (docs/protocol.md, "Sizing"): a reply must fit the session's datagram
// with its framing, and the link, shared by every session, only goes down.
func TestLinkMTUFor(t *testing.T) {
	for _, tc := range []struct {
		name                           string
		current, maxDatagram, overhead int
		want                           int
		lower                          bool
	}{
		{"relay session lowers the initial link", tunnelLinkMTU, 1200, tunnel.TagReturnOverhead, 1195, true},
		{"direct session: raw packets", tunnelLinkMTU, 1200, 0, 1200, true},
		{"a smaller session lowers it again", 1195, 1100, tunnel.TagReturnOverhead, 1095, true},
		{"a larger session never raises it", 1095, 1452, tunnel.TagReturnOverhead, 1095, false},
		{"exactly the current size", 1195, 1200, tunnel.TagReturnOverhead, 1195, false},
		{"ended session changes nothing", 1195, 0, tunnel.TagReturnOverhead, 1195, false},
		{"datagram smaller than the framing", 1195, 4, tunnel.TagReturnOverhead, 1195, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, lower := linkMTUFor(tc.current, tc.maxDatagram, tc.overhead)
			if got != tc.want || lower != tc.lower {
				t.Errorf("linkMTUFor(%d, %d, %d) = %d, %v; want %d, %v",
					tc.current, tc.maxDatagram, tc.overhead, got, lower, tc.want, tc.lower)
			}
		})
	}
}
