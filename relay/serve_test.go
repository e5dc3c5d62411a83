package relay

import "testing"

// TestPacketBound checks the welcome's max_packet (docs/protocol.md,
// "Sizing"): a packet must fit the agent's datagram with a 0x2F header and
// every gateway's datagram with a 0x30 header, for the longest service
// name.
func TestPacketBound(t *testing.T) {
	for _, tc := range []struct {
		name     string
		own      int
		gateways []int
		want     int
	}{
		{"no gateway: the agent's path stands in", 1200, nil, 1200 - 6 - 63},
		{"gateway on an equal path", 1200, []int{1200}, 1200 - 6 - 63},
		{"gateway path smaller", 1300, []int{1200}, 1200 - 6 - 63},
		{"smallest of several gateways", 1400, []int{1452, 1250, 1300}, 1250 - 6 - 63},
		// A gateway connecting later starts at the agent's initial size: the
		// 0x30 header counts against the agent's own path too.
		{"agent path smaller than every gateway's", 1200, []int{1452, 1452}, 1200 - 6 - 63},
		{"gateway just above the agent", 1200, []int{1203}, 1200 - 6 - 63},
		{"ended agent session", 0, []int{1200}, 0},
		{"ended gateway session", 1200, []int{0}, 0},
		{"nothing fits", 60, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := packetBound(tc.own, tc.gateways); got != tc.want {
				t.Errorf("packetBound(%d, %v) = %d, want %d", tc.own, tc.gateways, got, tc.want)
			}
		})
	}
}
