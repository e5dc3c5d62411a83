package gateway

import (
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// nullDevice is a LAN device that reads nothing and counts what the
// gateway writes to it.
type nullDevice struct {
	written atomic.Int64
	done    chan struct{}
}

func (d *nullDevice) WritePackets(pkts [][]byte) error {
	d.written.Add(int64(len(pkts)))
	return nil
}
func (d *nullDevice) Run(netstack.PacketSink) error { <-d.done; return nil }
func (d *nullDevice) Close() error                  { close(d.done); return nil }
func (d *nullDevice) MTU() int                      { return 1420 }
func (d *nullDevice) Headroom() int                 { return 0 }
func (d *nullDevice) WriteCap() int                 { return 1420 }
func (d *nullDevice) BatchSize() int                { return 16 }

// TestRefusedEchoNoAllocs: a refused ping (a tenant the service does not
// allow, a VIP without a service) is classified, counted and answered
// without allocating, so that a flood of them costs the gateway no garbage. (An admitted ping
// allocates: the backend is pinged in a goroutine of its own.)
func TestRefusedEchoNoAllocs(t *testing.T) {
	if raceBuild {
		t.Skip("the race detector drops pooled objects at random")
	}
	gw := startEchoGateway(t)
	for _, tc := range []struct {
		name     string
		src, dst string
	}{
		{"tenant denied", "203.0.113.10", "10.100.0.10"},
		{"no service", "198.51.100.10", "10.100.0.99"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := netstacktest.EchoRequest(netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst), 1, 1, make([]byte, 56))
			// Each refusal is answered or, over the netstack's ICMP rate
			// limit, counted: wait for either.
			answered := func() uint64 {
				st := gw.ns.Stats()
				return st.ICMPErrorsSent + st.ICMPRateLimited
			}
			ping := func() {
				want := answered() + 1
				gw.lan.Deliver(pkt)
				deadline := time.Now().Add(10 * time.Second)
				for answered() < want {
					if time.Now().After(deadline) {
						t.Fatal("refusal neither answered nor rate-limited in 10s")
					}
					runtime.Gosched()
				}
			}
			for range 100 { // warm up: pools, metric children
				ping()
			}
			// Past the first refusals, the ICMP rate limit suppresses most
			// errors; the netstack's tests measure the written error with
			// the limit lifted.
			if n := testing.AllocsPerRun(1000, ping); n != 0 {
				t.Errorf("a refused ping allocates %v times, want 0", n)
			}
		})
	}
}
