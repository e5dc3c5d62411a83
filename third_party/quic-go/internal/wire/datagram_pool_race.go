//go:build race

package wire

import (
	"sync"
	"weak"
)

// ztgate: in race builds (go test -race) the pool checks its callers. A
// buffer released twice would be handed to two owners at once, and a
// buffer used after its release would carry another datagram's bytes:
// both corrupt data without a sound. So each buffer handed out is recorded
// until it comes back, a buffer that comes back unrecorded panics, and a
// released buffer is filled with poisonDatagramByte, so that a read after
// the release shows garbage (and a write races with the poisoning, which
// the race detector reports). Builds without race do none of this
// (datagram_pool_norace.go).
//
// The record is keyed by weak pointers, so that a buffer never given back
// is still collected, and so that its entry never matches a later
// allocation at the same address (weak pointers to different objects
// never compare equal, even after the first is collected): a slice that
// did not come from the pool always panics. Entries of collected buffers
// are pruned as the record grows. Not caught: a buffer released twice with
// a Get in between that took it out again.

const poisonDatagramByte = 0xdb

type datagramBufferKey = weak.Pointer[[datagramBufferSize]byte]

var datagramBuffersOut struct {
	sync.Mutex
	m       map[datagramBufferKey]struct{}
	pruneAt int // len(m) at which entries of collected buffers are deleted
}

func datagramBufferOut(p *[datagramBufferSize]byte) {
	o := &datagramBuffersOut
	o.Lock()
	defer o.Unlock()
	if o.m == nil {
		o.m = make(map[datagramBufferKey]struct{})
	}
	if len(o.m) >= o.pruneAt {
		for k := range o.m {
			if k.Value() == nil {
				delete(o.m, k)
			}
		}
		o.pruneAt = 2*len(o.m) + 1024
	}
	o.m[weak.Make(p)] = struct{}{}
}

func datagramBufferBack(p *[datagramBufferSize]byte) {
	o := &datagramBuffersOut
	k := weak.Make(p)
	o.Lock()
	_, out := o.m[k]
	delete(o.m, k)
	o.Unlock()
	if !out {
		panic("quic: datagram buffer released twice or not from the pool")
	}
	for i := range p {
		p[i] = poisonDatagramByte
	}
}
