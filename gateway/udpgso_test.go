package gateway

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/ztgate/ztgate/internal/udpseg"
)

// sized returns one datagram per size, each filled with its index so that
// a reordered or merged datagram shows.
func sized(sizes ...int) [][]byte {
	d := make([][]byte, len(sizes))
	for i, n := range sizes {
		d[i] = bytes.Repeat([]byte{byte(i + 1)}, n)
	}
	return d
}

func repeat(n, size int) []int { return slices.Repeat([]int{size}, n) }

func TestUDPSenderPlan(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sizes []int
		gso   bool
		runs  []int // datagrams per sendmmsg entry
	}{
		{"one", []int{64}, true, []int{1}},
		{"equal", repeat(32, 64), true, []int{32}},
		{"shorter ends a run", []int{100, 100, 40, 100}, true, []int{3, 1}},
		{"longer starts a run", []int{40, 100, 100}, true, []int{1, 2}},
		{"empty travels alone", []int{64, 0, 64, 64}, true, []int{1, 1, 2}},
		{"segment limit", repeat(70, 10), true, []int{64, 6}},
		{"byte limit", repeat(50, 1400), true, []int{46, 4}},
		{"off", []int{64, 64, 64}, false, []int{1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &udpSender{gso: tc.gso, oob: make([]byte, len(tc.sizes)*udpseg.CmsgSpace)}
			d := sized(tc.sizes...)
			var runs []int
			at := 0
			for _, m := range s.plan(d) {
				runs = append(runs, len(m.Buffers))
				if !bytes.Equal(m.Buffers[0], d[at]) {
					t.Fatalf("entry starting at datagram %d holds another one", at)
				}
				if len(m.Buffers) == 1 && m.OOB != nil {
					t.Errorf("single datagram %d carries a segment size", at)
				}
				if len(m.Buffers) > 1 {
					if len(m.OOB) != udpseg.CmsgSpace {
						t.Fatalf("run at %d: control message %d bytes", at, len(m.OOB))
					}
					if got := int(binary.NativeEndian.Uint16(m.OOB[unix.CmsgLen(0):])); got != tc.sizes[at] {
						t.Errorf("run at %d: segment size %d, want %d", at, got, tc.sizes[at])
					}
				}
				at += len(m.Buffers)
			}
			if at != len(d) {
				t.Fatalf("plan covers %d of %d datagrams", at, len(d))
			}
			if !slices.Equal(runs, tc.runs) {
				t.Errorf("runs %v, want %v", runs, tc.runs)
			}
		})
	}
}

// udpPair returns a connected sender socket and the receiver it sends to,
// on loopback.
func udpPair(t testing.TB) (*net.UDPConn, *net.UDPConn) {
	t.Helper()
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close() })
	rx.SetReadBuffer(4 << 20)
	tx, err := net.DialUDP("udp4", nil, rx.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Close() })
	return tx, rx
}

// receive reads n datagrams from rx.
func receive(t *testing.T, rx *net.UDPConn, n int) [][]byte {
	t.Helper()
	rx.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([][]byte, 0, n)
	buf := make([]byte, 65536)
	for len(got) < n {
		k, err := rx.Read(buf)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), n, err)
		}
		got = append(got, slices.Clone(buf[:k]))
	}
	return got
}

// TestUDPSenderKeepsDatagrams: whatever the runs, the receiver gets the
// same datagrams in the same order.
func TestUDPSenderKeepsDatagrams(t *testing.T) {
	tx, rx := udpPair(t)
	s := newUDPSender(ipv4.NewPacketConn(tx), udpBatch)
	t.Logf("UDP GSO: %v", s.gso)
	for _, sizes := range [][]int{
		repeat(32, 64),
		{1200, 1200, 1200, 17},
		{64, 0, 64, 64, 1, 1472, 1472, 9000},
		repeat(20, 1472),
	} {
		d := sized(sizes...)
		if err := s.send(d); err != nil {
			t.Fatal(err)
		}
		got := receive(t, rx, len(d))
		for i := range d {
			if !bytes.Equal(got[i], d[i]) {
				t.Fatalf("sizes %v: datagram %d is %d bytes of %v, want %d bytes of %d", sizes, i, len(got[i]), got[i][:min(len(got[i]), 1)], len(d[i]), i+1)
			}
		}
	}
	if s.gso != udpseg.GSO() {
		t.Errorf("GSO turned off on a path that takes it")
	}
}

// TestUDPSenderFallsBack: a socket that refuses GSO (here: UDP checksums
// off, which GSO needs) turns it off for the flow, and every datagram,
// including the refused run, still arrives once and in order.
func TestUDPSenderFallsBack(t *testing.T) {
	if !udpseg.GSO() {
		t.Skip("the kernel has no UDP GSO")
	}
	tx, rx := udpPair(t)
	rc, err := tx.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1) })
	if serr != nil {
		t.Skipf("SO_NO_CHECK: %v", serr)
	}
	s := newUDPSender(ipv4.NewPacketConn(tx), udpBatch)
	d := sized(append([]int{10}, repeat(8, 100)...)...)
	if err := s.send(d); err != nil {
		t.Fatal(err)
	}
	if s.gso {
		t.Error("GSO still on after the socket refused it")
	}
	got := receive(t, rx, len(d))
	for i := range d {
		if !bytes.Equal(got[i], d[i]) {
			t.Fatalf("datagram %d: %d bytes, want %d", i, len(got[i]), len(d[i]))
		}
	}
	rx.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := rx.Read(make([]byte, 2048)); err == nil {
		t.Errorf("an extra %d-byte datagram arrived", n)
	}
}

func BenchmarkUDPSender(b *testing.B) {
	for _, gso := range []bool{false, true} {
		b.Run(fmt.Sprintf("gso=%v", gso), func(b *testing.B) {
			if gso && !udpseg.GSO() {
				b.Skip("the kernel has no UDP GSO")
			}
			tx, rx := udpPair(b)
			go func() { // drain
				buf := make([]byte, 65536)
				for {
					if _, err := rx.Read(buf); err != nil {
						return
					}
				}
			}()
			s := newUDPSender(ipv4.NewPacketConn(tx), udpBatch)
			s.gso = gso
			d := sized(repeat(udpBatch, 64)...)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := s.send(d); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*udpBatch)/b.Elapsed().Seconds(), "datagrams/s")
		})
	}
}

// TestSetReadBuffer: a backend socket gets the receive buffer asked for,
// beyond net.core.rmem_max too when the process may force it (root here).
func TestSetReadBuffer(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	setReadBuffer(c, udpBackendReadBuffer)
	rc, _ := c.SyscallConn()
	var got int
	rc.Control(func(fd uintptr) { got, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
	if err != nil {
		t.Fatal(err)
	}
	want := 2 * udpBackendReadBuffer // the kernel doubles what it grants
	if os.Geteuid() != 0 {
		b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
		if err != nil {
			t.Skip(err)
		}
		limit, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		want = min(want, 2*limit)
	}
	if got < want {
		t.Errorf("receive buffer %d bytes, want at least %d", got, want)
	}
}
