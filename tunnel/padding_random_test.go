package tunnel

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/internal/testseed"
)

// TestPaddingRandom pads and trims random datagrams as a ztna-v2 session
// does: raw, service-routed, tagged and tag-return data datagrams around
// IPv4 and IPv6 packets of random sizes (a service name of 1 to 63 bytes),
// packets followed by bytes beyond their IP length, packets whose length
// claims more than they have, headers cut short and control datagrams, each
// padded for a random largest DATAGRAM size (at, below and above the
// packets', up to past maxPadded). Checked against a reference built from
// how each datagram was made: a well-formed data datagram at most padSlack
// bytes short of the size, and the size within maxPadded, goes out exactly
// the size, its bytes first and zeros after (no stale byte of the buffer);
// any other as it came; and what the receiver trims is the datagram sent,
// whose packet each parser finds whole. ZTGATE_TUNNELCUT_SEED replays a
// run.
func TestPaddingRandom(t *testing.T) {
	seed := testseed.Get(t, "ZTGATE_TUNNELCUT_SEED")
	rng := rand.New(rand.NewPCG(seed, seed^0xbadd))
	var buf [maxPadded]byte
	for i := range 20000 {
		// The IP packet.
		v6 := rng.IntN(4) == 0
		minLen := 20
		if v6 {
			minLen = 40
		}
		n := minLen + rng.IntN(maxPadded-minLen+1)
		if rng.IntN(4) == 0 {
			n = maxPadded - rng.IntN(padSlack+20)
		}
		pkt := make([]byte, n)
		for k := range pkt {
			pkt[k] = byte(rng.Uint32())
		}
		ipLen := n
		shape := rng.IntN(10)
		switch shape {
		case 0: // bytes beyond the IP length
			if n > minLen {
				ipLen = n - 1 - rng.IntN(min(8, n-minLen))
			} else {
				shape = -1
			}
		case 1: // an IP length beyond the bytes
			ipLen = n + 1 + rng.IntN(100)
		}
		if v6 {
			pkt[0] = 0x60 | pkt[0]&0x0f
			binary.BigEndian.PutUint16(pkt[4:], uint16(ipLen-40))
		} else {
			pkt[0] = 0x45
			binary.BigEndian.PutUint16(pkt[2:], uint16(ipLen))
		}
		wellFormed := ipLen == n
		trimmedLen := min(ipLen, n) // what trimming leaves of the packet
		if shape == 1 {
			trimmedLen = n
		}
		if shape == 2 { // a header cut short
			// Short of the header its first byte announces: an IPv6
			// packet's 40 bytes cut to 34 and starting 0x45 are a whole
			// IPv4 header, which trimming rightly reads (seed
			// 8173519381951935098 drew that).
			first, hdrLen := byte(0x45), 20
			if rng.IntN(2) == 1 {
				first, hdrLen = 0x60, 40
			}
			pkt = pkt[:min(rng.IntN(hdrLen), len(pkt))]
			if len(pkt) > 0 {
				pkt[0] = first
			} else {
				pkt = []byte{first}
			}
			wellFormed = false
			trimmedLen = len(pkt)
		}

		// The datagram around it.
		service := strings.Repeat("s", 1+rng.IntN(MaxServiceName))
		var b []byte
		hdr := 0
		kind := rng.IntN(5)
		switch kind {
		case 0:
			b = pkt
		case 1:
			b, _ = AppendRouted(nil, service, pkt)
			hdr = 2 + len(service)
		case 2:
			b, _ = AppendTagged(nil, rng.Uint32(), service, pkt)
			hdr = 6 + len(service)
		case 3:
			b = AppendTagReturn(nil, rng.Uint32(), pkt)
			hdr = TagReturnOverhead
		default: // a control datagram: never padded
			b, _ = AppendRegistration(nil, TypeAgentRegistration, service)
			wellFormed = false
			trimmedLen = len(b)
		}
		if kind == 0 && len(b) > 0 && b[0]>>4 != 4 && b[0]>>4 != 6 {
			t.Fatalf("step %d: a raw packet of kind %v", i, Kind(b))
		}

		size := len(b) + rng.IntN(2*padSlack+20) - padSlack/2
		switch rng.IntN(6) {
		case 0:
			size = len(b) + padSlack + rng.IntN(2)
		case 1:
			size = maxPadded + rng.IntN(3)
		}
		short := size - len(b)
		wantPad := wellFormed && short > 0 && short <= padSlack && size <= maxPadded

		orig := bytes.Clone(b)
		for k := range buf {
			buf[k] = 0xEE
		}
		got := padTo(b, size, &buf)
		if !bytes.Equal(b, orig) {
			t.Fatalf("step %d: padding changed the datagram", i)
		}
		if wantPad {
			if len(got) != size || !bytes.Equal(got[:len(b)], b) || bytes.ContainsFunc(got[len(b):], func(r rune) bool { return r != 0 }) {
				t.Fatalf("step %d (kind %d, shape %d): a datagram of %d bytes for size %d padded to %d bytes: % x", i, kind, shape, len(b), size, len(got), got[len(b):])
			}
		} else if !bytes.Equal(got, b) {
			t.Fatalf("step %d (kind %d, shape %d, well-formed %v): a datagram of %d bytes %d short of %d padded to %d", i, kind, shape, wellFormed, len(b), short, size, len(got))
		}
		trimmed := trimPadding(bytes.Clone(got))
		wantTrim := b
		if kind != 4 && shape != 2 {
			wantTrim = b[:hdr+trimmedLen]
		}
		if !bytes.Equal(trimmed, wantTrim) {
			t.Fatalf("step %d (kind %d, shape %d): trimmed to %d bytes, want %d", i, kind, shape, len(trimmed), len(wantTrim))
		}
		if wellFormed {
			var p []byte
			var err error
			switch kind {
			case 0:
				p = trimmed
			case 1:
				_, p, err = ParseRouted(trimmed)
			case 2:
				_, _, p, err = ParseTagged(trimmed)
			case 3:
				_, p, err = ParseTagReturn(trimmed)
			}
			if err != nil || !bytes.Equal(p, pkt) {
				t.Fatalf("step %d (kind %d): the packet parsed after trimming: %v, %d bytes of %d", i, kind, err, len(p), len(pkt))
			}
		}
	}
}
