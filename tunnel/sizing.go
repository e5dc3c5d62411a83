package tunnel

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ztgate/ztgate/internal/monoclock"
)

// Datagram sizing. quic-go does not export the largest DATAGRAM payload a
// connection takes; it reports it in the DatagramTooLargeError of a send
// that is too large. A session probes with a payload no path carries (QUIC
// packets never exceed 1452 bytes in quic-go v0.65) and caches the answer.
// The tunnel's connections keep quic-go's initial packet size (path MTU
// discovery is off, padding.go), so the size read at the start of a
// session stays safe: it only ever shrinks (a migrated path, a send that
// failed for size), which MaxDatagram notices within sizeRefresh and a
// DatagramTooLargeError at once.
const (
	// probeSize is larger than any DATAGRAM quic-go sends. Its first byte
	// is 0 (TypeUnknown): should a path ever carry it, receivers drop it.
	probeSize = 4096
	// sizeRefresh is how long a probed size is reused before MaxDatagram
	// probes again (it may have changed: quic-go starts a migrated path,
	// or one whose large packets failed, from a smaller size).
	sizeRefresh = time.Second
)

// sizing caches the largest DATAGRAM payload of a connection.
type sizing struct {
	max    atomic.Int64 // bytes; 0 before the first probe
	probed atomic.Int64 // monoclock stamp of the last probe or update
}

// set records a size quic-go reported.
func (z *sizing) set(n int64) {
	z.max.Store(n)
	z.probed.Store(monoclock.Now())
}

// MaxDatagram returns the largest DATAGRAM payload the connection carries
// now: for ztna-v1 and raw IP datagrams, the largest IP packet. It is 0
// once the session has ended and nothing was learnt before.
func (s *Session) MaxDatagram() int {
	if n := s.size.max.Load(); n > 0 && time.Duration(monoclock.Now()-s.size.probed.Load()) < sizeRefresh {
		return int(n)
	}
	var probe [probeSize]byte
	err := s.conn.SendDatagram(probe[:])
	var tooLarge *quic.DatagramTooLargeError
	switch {
	case errors.As(err, &tooLarge):
		s.size.set(tooLarge.MaxDatagramPayloadSize)
	case err == nil:
		s.size.set(probeSize)
	}
	return int(s.size.max.Load())
}
