package agent

import (
	"bytes"
	"errors"
	"testing"

	"github.com/ztgate/ztgate/netstack"
)

// batchDevice records the batches written to it.
type batchDevice struct {
	hr, capacity, batch int
	writes              [][][]byte // copies of each batch, headroom included
	caps                []int      // capacity of every buffer written
	fail                error
	quiet               bool // record nothing (allocation checks)
}

func (d *batchDevice) WritePackets(pkts [][]byte) error {
	if d.quiet {
		return d.fail
	}
	batch := make([][]byte, len(pkts))
	for i, p := range pkts {
		batch[i] = bytes.Clone(p)
		d.caps = append(d.caps, cap(p))
	}
	d.writes = append(d.writes, batch)
	return d.fail
}
func (d *batchDevice) Run(netstack.PacketSink) error { return nil }
func (d *batchDevice) Close() error                  { return nil }
func (d *batchDevice) MTU() int                      { return 1280 }
func (d *batchDevice) Headroom() int                 { return d.hr }
func (d *batchDevice) WriteCap() int                 { return d.capacity }
func (d *batchDevice) BatchSize() int                { return d.batch }

func TestTUNWriter(t *testing.T) {
	tests := []struct {
		name      string
		batch     int // the device's
		wantBatch int // the writer's
	}{
		{"device batch below the bound", 4, 4},
		{"device batch above the bound", 128, maxWriteBatch},
		{"device without batches", 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := &batchDevice{hr: 10, capacity: 10 + 65535, batch: tc.batch}
			w := newTUNWriter(dev)
			pkts := [][]byte{}
			for i := 0; !w.full(); i++ {
				p := bytes.Repeat([]byte{byte(i + 1)}, 60+i)
				pkts = append(pkts, p)
				w.add(p)
			}
			if w.len() != tc.wantBatch {
				t.Fatalf("full at %d packets, want %d", w.len(), tc.wantBatch)
			}
			if err := w.flush(); err != nil {
				t.Fatal(err)
			}
			if w.len() != 0 || len(dev.writes) != 1 || len(dev.writes[0]) != tc.wantBatch {
				t.Fatalf("one write of %d packets expected, got %d writes, %d left", tc.wantBatch, len(dev.writes), w.len())
			}
			for i, got := range dev.writes[0] {
				if len(got) != dev.hr+len(pkts[i]) || !bytes.Equal(got[dev.hr:], pkts[i]) {
					t.Fatalf("packet %d written as % X", i, got)
				}
				if dev.caps[i] < dev.capacity {
					t.Fatalf("packet %d in a buffer of capacity %d, the device wants %d to coalesce", i, dev.caps[i], dev.capacity)
				}
			}
			// Buffers are reused: a second batch allocates nothing.
			p := pkts[0]
			dev.quiet = true
			if n := testing.AllocsPerRun(100, func() {
				for !w.full() {
					w.add(p)
				}
				_ = w.flush()
			}); n != 0 {
				t.Errorf("%v allocations per batch after the first", n)
			}
		})
	}
}

// TestTUNWriterFailureEmptiesBatch: a failed write drops its batch; the
// next one starts empty.
func TestTUNWriterFailureEmptiesBatch(t *testing.T) {
	dev := &batchDevice{hr: 0, capacity: 65535, batch: 8, fail: errors.New("gone")}
	w := newTUNWriter(dev)
	w.add([]byte{0x45})
	w.add([]byte{0x45})
	if err := w.flush(); err == nil {
		t.Fatal("flush hid the device's error")
	}
	dev.fail = nil
	w.add([]byte{0x45, 1})
	if err := w.flush(); err != nil || len(dev.writes[1]) != 1 {
		t.Fatalf("after a failure: %v, batch of %d", err, len(dev.writes[1]))
	}
}
