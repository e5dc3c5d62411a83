package netstack

import (
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// countOutput is an Output that counts packets without keeping them.
type countOutput struct{ n atomic.Int64 }

func (c *countOutput) WritePackets(pkts [][]byte) error {
	c.n.Add(int64(len(pkts)))
	return nil
}

// fakeTUN is a tun.Device whose reads return batches of copies of pkt,
// reads times, then os.ErrClosed; writes are counted.
type fakeTUN struct {
	pkt     []byte
	batch   int
	reads   int
	written int
}

func (d *fakeTUN) File() *os.File { return nil }

func (d *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if d.reads == 0 {
		return 0, os.ErrClosed
	}
	d.reads--
	n := min(d.batch, len(bufs))
	for i := range n {
		sizes[i] = copy(bufs[i][offset:], d.pkt)
	}
	return n, nil
}

func (d *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	d.written += len(bufs)
	return len(bufs), nil
}

func (d *fakeTUN) MTU() (int, error)        { return 1500, nil }
func (d *fakeTUN) Name() (string, error)    { return "fake", nil }
func (d *fakeTUN) Events() <-chan tun.Event { return nil }
func (d *fakeTUN) Close() error             { return nil }
func (d *fakeTUN) BatchSize() int           { return d.batch }

// countSink counts delivered packets.
type countSink struct{ n int }

func (s *countSink) Deliver(pkt []byte) { s.n++ }

// TestTUNBatchNoPerPacketAllocs: the TUN's read loop allocates its buffers
// once per Run, never per batch or packet; its write path allocates
// nothing.
func TestTUNBatchNoPerPacketAllocs(t *testing.T) {
	pkt := echo4(nil, 1, 1, make([]byte, 56))
	runAllocs := func(reads int) float64 {
		return testing.AllocsPerRun(20, func() {
			d := &fakeTUN{pkt: pkt, batch: 8, reads: reads}
			sink := &countSink{}
			if err := NewTUNOn(d, 1500).Run(sink); err != nil {
				t.Fatal(err)
			}
			if sink.n != reads*8 {
				t.Fatalf("%d packets delivered, want %d", sink.n, reads*8)
			}
		})
	}
	one, many := runAllocs(1), runAllocs(500)
	if many != one {
		t.Errorf("a Run of 500 batches allocates %v times, one of 1 batch %v: allocations per batch", many, one)
	}

	d := &fakeTUN{batch: 8}
	tn := NewTUNOn(d, 1500)
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, tunHeadroom+len(pkt))
		copy(bufs[i][tunHeadroom:], pkt)
	}
	if n := testing.AllocsPerRun(100, func() {
		if err := tn.WritePackets(bufs); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("WritePackets allocates %v times per batch, want 0", n)
	}
	if d.written == 0 {
		t.Error("nothing written to the device")
	}
}

// TestDeliverNoPerPacketAllocs: in the steady state, a packet handed to a
// link costs no allocation: neither one the link drops before the stack
// (malformed, not routed), nor an echo request answered (reply or ICMP
// error) or dropped by the handler, from the request to the Output.
func TestDeliverNoPerPacketAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops pooled objects at random")
	}
	notRouted := echo4(nil, 1, 1, make([]byte, 56))
	copy(notRouted[16:20], []byte{192, 0, 2, 1}) // destination outside the pool
	for _, tc := range []struct {
		name    string
		end     func(*EchoRequest)
		pkt     []byte
		answers bool
	}{
		{"echo reply IPv4", (*EchoRequest).Reply, echo4(nil, 1, 1, make([]byte, 56)), true},
		{"echo reply IPv6", (*EchoRequest).Reply, echo6(1, 1, make([]byte, 56)), true},
		{"echo refused IPv4", (*EchoRequest).Refuse, echo4(nil, 1, 1, make([]byte, 56)), true},
		{"echo refused IPv6", (*EchoRequest).Refuse, echo6(1, 1, make([]byte, 56)), true},
		{"echo dropped", (*EchoRequest).Drop, echo4(nil, 1, 1, make([]byte, 56)), false},
		{"malformed", (*EchoRequest).Drop, []byte{0x45, 0, 0}, false},
		{"not routed", (*EchoRequest).Drop, notRouted, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &countOutput{}
			ns, l := newTestLink(t, Config{Handler: echoEnder{end: tc.end}}, out)
			ns.s.SetICMPLimit(1e9) // every refusal answered
			ns.s.SetICMPBurst(1e9)
			// Each packet is measured with its answer written: the steady
			// state, where the link's writer returns packet buffers to their
			// pools as fast as requests take them.
			deliver := func() {
				want := out.n.Load() + 1
				l.Deliver(tc.pkt)
				if tc.answers {
					waitCount(t, &out.n, want)
				}
			}
			for range 100 { // warm up: pools and queue capacities
				deliver()
			}
			if allocs := testing.AllocsPerRun(1000, deliver); allocs != 0 {
				t.Errorf("Deliver allocates %v times per packet, want 0", allocs)
			}
		})
	}
}

// waitCount waits, for at most 10s, until n reaches want. It yields rather
// than sleeps, so that it allocates nothing.
func waitCount(t *testing.T, n *atomic.Int64, want int64) {
	deadline := time.Now().Add(10 * time.Second)
	for n.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d packets written in 10s, want %d", n.Load(), want)
		}
		runtime.Gosched()
	}
}
