package udpseg

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsg builds one control message of level, type and data.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func int32Data(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func TestGROSize(t *testing.T) {
	gro := cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, int32Data(1252))
	other := cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{0x10})
	bad := cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, int32Data(1252))
	(*unix.Cmsghdr)(unsafe.Pointer(&bad[0])).SetLen(len(bad) + 8) // longer than the buffer
	for _, tc := range []struct {
		name string
		oob  []byte
		want int
	}{
		{"none", nil, 0},
		{"GRO", gro, 1252},
		{"after another message", append(append([]byte{}, other...), gro...), 1252},
		{"another message only", other, 0},
		{"two-byte payload", cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, []byte{0xe4, 0x04}), int(binary.NativeEndian.Uint16([]byte{0xe4, 0x04}))},
		{"empty payload", cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, nil), 0},
		{"length beyond the buffer", bad, 0},
		{"truncated header", gro[:4], 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := GROSize(tc.oob); got != tc.want {
				t.Fatalf("GROSize = %d, want %d", got, tc.want)
			}
		})
	}
}

// FuzzGROSize checks the parser against x/sys/unix's (which allocates):
// both find the same UDP_GRO message, or none.
func FuzzGROSize(f *testing.F) {
	f.Add(cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, int32Data(1400)))
	f.Add(append(cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{1}), cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, int32Data(9))...))
	f.Add(cmsg(unix.IPPROTO_UDP, unix.UDP_GRO, []byte{1, 2}))
	f.Fuzz(func(t *testing.T, oob []byte) {
		got := GROSize(oob)
		msgs, err := unix.ParseSocketControlMessage(oob)
		if err != nil {
			return // x/sys refuses the whole buffer where GROSize may still find a message before the bad one
		}
		want := 0
		for _, m := range msgs {
			if m.Header.Level == unix.IPPROTO_UDP && m.Header.Type == unix.UDP_GRO {
				switch {
				case len(m.Data) >= 4:
					want = int(binary.NativeEndian.Uint32(m.Data))
				case len(m.Data) >= 2:
					want = int(binary.NativeEndian.Uint16(m.Data))
				}
				break
			}
		}
		if got != want {
			t.Fatalf("GROSize = %d, x/sys/unix finds %d in %x", got, want, oob)
		}
	})
}

func TestSegments(t *testing.T) {
	for _, tc := range []struct{ n, size, want int }{
		{1200, 0, 1}, {1200, 1200, 1}, {2400, 1200, 2}, {2401, 1200, 3}, {100, 1200, 1},
	} {
		if got := Segments(tc.n, tc.size); got != tc.want {
			t.Errorf("Segments(%d, %d) = %d, want %d", tc.n, tc.size, got, tc.want)
		}
	}
}

// TestSendAndReceive sends runs with GSO over loopback and reads them with
// GRO, where the kernel has both: each run's datagrams come back as sent,
// as one read or several.
func TestSendAndReceive(t *testing.T) {
	if !GSO() {
		t.Skip("the kernel has no UDP GSO")
	}
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if GROEnabled(rx) {
		t.Fatal("UDP GRO on before EnableGRO")
	}
	gro := EnableGRO(rx)
	t.Logf("UDP GRO: %v", gro)
	if GROEnabled(rx) != gro {
		t.Fatalf("GROEnabled %v after EnableGRO reported %v", GROEnabled(rx), gro)
	}
	tx, err := net.DialUDP("udp4", nil, rx.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	for _, tc := range []struct {
		name  string
		sizes []int
	}{
		{"four equal", []int{1200, 1200, 1200, 1200}},
		{"a shorter last", []int{1000, 1000, 300}},
		{"one", []int{700}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var run []byte
			var want [][]byte
			for i, n := range tc.sizes {
				d := bytes.Repeat([]byte{byte(i + 1)}, n)
				want = append(want, d)
				run = append(run, d...)
			}
			if _, _, err := tx.WriteMsgUDP(run, PutSegmentSize(make([]byte, CmsgSpace), tc.sizes[0]), nil); err != nil {
				t.Fatal(err)
			}
			buf, oob := make([]byte, 65536), make([]byte, GROCmsgSpace)
			var got [][]byte
			for len(got) < len(want) {
				_ = rx.SetReadDeadline(time.Now().Add(2 * time.Second))
				n, oobn, _, _, err := rx.ReadMsgUDP(buf, oob)
				if err != nil {
					t.Fatalf("after %d of %d datagrams: %v", len(got), len(want), err)
				}
				size := GROSize(oob[:oobn])
				if size == 0 {
					size = n
				}
				for b := buf[:n]; len(b) > 0; b = b[min(size, len(b)):] {
					got = append(got, append([]byte(nil), b[:min(size, len(b))]...))
				}
			}
			if len(got) != len(want) {
				t.Fatalf("%d datagrams, want %d", len(got), len(want))
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("datagram %d: %d bytes of %d, want %d of %d", i, len(got[i]), got[i][0], len(want[i]), want[i][0])
				}
			}
		})
	}
}
