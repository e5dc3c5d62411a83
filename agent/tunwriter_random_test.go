package agent

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/ztgate/ztgate/internal/testseed"
	"github.com/ztgate/ztgate/netstack"
)

// coalescingDevice is a TUN device as the agent's writer sees it: it checks
// each batch as it is handed over, then grows every element within its
// capacity and scribbles there, as a device that coalesces a flow's
// segments in place does.
type coalescingDevice struct {
	hr, capacity, batch int
	rng                 *rand.Rand
	got                 [][]byte // packets written, headroom cut off, copied
	batches             []int    // packets per write
	err                 error    // the first thing wrong with a batch
}

func (d *coalescingDevice) WritePackets(pkts [][]byte) error {
	d.batches = append(d.batches, len(pkts))
	for i, p := range pkts {
		if d.err == nil && cap(p) < d.capacity {
			d.err = fmt.Errorf("packet %d of a batch in a buffer of capacity %d, the device wants %d to coalesce", i, cap(p), d.capacity)
		}
		if d.err == nil && len(p) < d.hr {
			d.err = fmt.Errorf("packet %d of a batch shorter than the headroom", i)
		}
		for j := range i {
			if d.err == nil && overlaps(p[:cap(p)], pkts[j][:cap(pkts[j])]) {
				d.err = fmt.Errorf("packets %d and %d of a batch share a buffer: coalescing one would overwrite the other", j, i)
			}
		}
		d.got = append(d.got, bytes.Clone(p[d.hr:]))
	}
	for _, p := range pkts { // coalesce: grow within the capacity and write there, headroom too
		q := p[:cap(p)]
		for k := 0; k < d.hr; k++ {
			q[k] = byte(d.rng.Uint32())
		}
		for k := len(p); k < len(q) && k < len(p)+3000; k++ {
			q[k] = 0xc0
		}
	}
	return nil
}

func overlaps(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	a0, b0 := uintptr(unsafe.Pointer(&a[0])), uintptr(unsafe.Pointer(&b[0]))
	return a0 < b0+uintptr(len(b)) && b0 < a0+uintptr(len(a))
}

func (d *coalescingDevice) Run(netstack.PacketSink) error { return nil }
func (d *coalescingDevice) Close() error                  { return nil }
func (d *coalescingDevice) MTU() int                      { return 1420 }
func (d *coalescingDevice) Headroom() int                 { return d.hr }
func (d *coalescingDevice) WriteCap() int                 { return d.capacity }
func (d *coalescingDevice) BatchSize() int                { return d.batch }

// TestTUNWriterRandom writes random runs of packets, as a session hands
// over the datagrams that arrived together (TCP segments of interleaved
// flows with payloads of 0 to a full datagram, UDP datagrams, ICMP echo
// replies and errors, of 20 to 1,452 bytes), through the agent's TUN
// writer the way receive does (a write when a batch is full, and at the
// end of every run) to devices of random headroom, write capacity and
// batch size, which grow each packet's buffer and write into it as a
// coalescing TUN does. Checked: every packet written once, byte for byte
// and in the order received, none held past its run's end, each batch
// within the writer's bound, each packet in a buffer of its own with room
// to coalesce. ZTGATE_TUNNELCUT_SEED replays a run.
func TestTUNWriterRandom(t *testing.T) {
	seed := testseed.Get(t, "ZTGATE_TUNNELCUT_SEED")
	rng := rand.New(rand.NewPCG(seed, seed^0x7077))
	for dev := range 8 {
		hr := []int{0, 10, 16}[rng.IntN(3)]
		d := &coalescingDevice{hr: hr, capacity: hr + 65535, batch: []int{0, 1, 2, 7, 32, 128}[rng.IntN(6)], rng: rng}
		if rng.IntN(3) == 0 {
			d.capacity = hr + 1500 // a device that does not coalesce
		}
		w := newTUNWriter(d)
		bound := min(max(d.batch, 1), maxWriteBatch)
		var sent [][]byte
		for run := range 60 {
			n := 1 + rng.IntN(100)
			for range n {
				p := randDownPacket(rng)
				sent = append(sent, p)
				w.add(p)
				if w.full() {
					if err := w.flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if w.len() > 0 {
				if err := w.flush(); err != nil {
					t.Fatal(err)
				}
			}
			if d.err != nil {
				t.Fatalf("device %d (headroom %d, capacity %d, batch %d), run %d: %v", dev, hr, d.capacity, d.batch, run, d.err)
			}
			if len(d.got) != len(sent) {
				t.Fatalf("device %d, run %d: %d packets written by the run's end, %d received", dev, run, len(d.got), len(sent))
			}
		}
		for i := range sent {
			if !bytes.Equal(d.got[i], sent[i]) {
				t.Fatalf("device %d: packet %d written as % x, received % x", dev, i, d.got[i][:min(len(d.got[i]), 48)], sent[i][:min(len(sent[i]), 48)])
			}
		}
		for i, b := range d.batches {
			if b < 1 || b > bound {
				t.Fatalf("device %d: batch %d of %d packets, the bound is %d", dev, i, b, bound)
			}
		}
	}
}

// randDownPacket returns a packet as a gateway sends one to an agent.
func randDownPacket(rng *rand.Rand) []byte {
	var l4 []byte
	proto := uint8(6)
	switch rng.IntN(4) {
	case 0, 1:
		size := 20 + []int{0, 1, 1412, 1411, rng.IntN(1413)}[rng.IntN(5)]
		l4 = make([]byte, size)
		l4[12] = 5 << 4
		l4[13] = 0x10
	case 2:
		proto = 17
		l4 = make([]byte, 8+rng.IntN(1425))
	default:
		proto = 1
		l4 = make([]byte, 8+rng.IntN(600))
		if rng.IntN(2) == 0 {
			l4[0] = 3 // an ICMP error
		}
	}
	for i := 4; i < len(l4); i++ {
		if proto != 6 || i < 12 || i > 13 {
			l4[i] = byte(rng.Uint32())
		}
	}
	p := make([]byte, 20+len(l4))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, proto
	copy(p[12:], []byte{10, 100, 0, byte(7 + rng.IntN(3))})
	copy(p[16:], []byte{100, 64, 0, 1})
	copy(p[20:], l4)
	return p
}
