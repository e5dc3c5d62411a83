//go:build race

package tunnel

// raceEnabled: the race detector allocates for itself, so allocation
// figures mean nothing; quic-go's datagram pool checks releases.
const raceEnabled = true
