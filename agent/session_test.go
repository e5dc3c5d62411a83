package agent

import "testing"

// TestTunnelMTU checks the TUN's MTU derived from a session's sizes
// (docs/protocol.md, "Sizing"): every packet the TUN takes must fit the
// agent's datagram with a 0x2F header for the longest service name, and
// the relay's bound onwards.
func TestTunnelMTU(t *testing.T) {
	for _, tc := range []struct {
		name                             string
		configured, maxDatagram, welcome int
		want                             int
	}{
		{"datagram lowers the configured bound", 1280, 1200, 0, 1200 - 2 - 63},
		{"welcome lowers it further", 1280, 1200, 1100, 1100},
		{"datagram tighter than the welcome", 1280, 1100, 1200, 1100 - 2 - 63},
		{"configured bound is the smallest", 1000, 1452, 1383, 1000},
		{"grown path still capped by the configuration", 1280, 1452, 1383, 1280},
		{"ended session: size unknown", 1280, 0, 0, 1280},
		{"unknown datagram, welcome known", 1280, 0, 1131, 1131},
		{"floored at 576", 1280, 600, 0, minMTU},
		{"small welcome floored at 576", 1280, 1200, 500, minMTU},
		{"small configuration floored at 576", 400, 1200, 0, minMTU},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tunnelMTU(tc.configured, tc.maxDatagram, tc.welcome); got != tc.want {
				t.Errorf("tunnelMTU(%d, %d, %d) = %d, want %d", tc.configured, tc.maxDatagram, tc.welcome, got, tc.want)
			}
		})
	}
}
