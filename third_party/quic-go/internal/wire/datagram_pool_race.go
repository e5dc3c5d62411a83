//go:build race

package wire

import (
	"sync"
	"unsafe"
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
// The record is keyed by the array's address, not a pointer to it, so that
// a buffer never given back is still collected. A stale entry (such a
// buffer collected, its address reused) can only hide a misuse, never
// report a false one. Not caught: a buffer released twice with a Get in
// between that took it out again.

const poisonDatagramByte = 0xdb

var datagramBuffersOut struct {
	sync.Mutex
	m map[uintptr]struct{}
}

func datagramBufferOut(p *[datagramBufferSize]byte) {
	datagramBuffersOut.Lock()
	if datagramBuffersOut.m == nil {
		datagramBuffersOut.m = make(map[uintptr]struct{})
	}
	datagramBuffersOut.m[uintptr(unsafe.Pointer(p))] = struct{}{}
	datagramBuffersOut.Unlock()
}

func datagramBufferBack(p *[datagramBufferSize]byte) {
	k := uintptr(unsafe.Pointer(p))
	datagramBuffersOut.Lock()
	_, out := datagramBuffersOut.m[k]
	delete(datagramBuffersOut.m, k)
	datagramBuffersOut.Unlock()
	if !out {
		panic("quic: datagram buffer released twice or not from the pool")
	}
	for i := range p {
		p[i] = poisonDatagramByte
	}
}
