package wire

import (
	"sync"

	"github.com/quic-go/quic-go/internal/protocol"
)

// ztgate: the payloads of DATAGRAM frames come from a pool, so that a tunnel
// that carries every packet in a DATAGRAM does not allocate one buffer per
// packet for the garbage collector to find. A sent frame's payload goes back
// once the frame is in its packet (DATAGRAM frames are never retransmitted);
// a received one when the application is done with it and says so
// (quic.ReleaseDatagram). A payload that is never given back is collected as
// before.

// datagramBufferSize is the capacity of a pooled payload: no DATAGRAM frame
// of a received packet is longer.
const datagramBufferSize = protocol.MaxPacketBufferSize

var datagramBuffers = sync.Pool{New: func() any { return new([datagramBufferSize]byte) }}

// GetDatagramBuffer returns a buffer of n bytes: a pooled one when n fits.
func GetDatagramBuffer(n int) []byte {
	if n > datagramBufferSize {
		return make([]byte, n)
	}
	p := datagramBuffers.Get().(*[datagramBufferSize]byte)
	datagramBufferOut(p)
	return p[:n]
}

// PutDatagramBuffer gives a payload that GetDatagramBuffer returned (whole
// or cut at its end) back to the pool. A slice whose capacity is not a
// pooled buffer's is left alone; nothing tells any other slice of that
// capacity from a pooled buffer, so callers pass only what they got. Race
// builds check that they do (datagram_pool_race.go).
func PutDatagramBuffer(b []byte) {
	if cap(b) != datagramBufferSize {
		return
	}
	p := (*[datagramBufferSize]byte)(b[:datagramBufferSize])
	datagramBufferBack(p)
	datagramBuffers.Put(p)
}
