package tunnel

import (
	"net/netip"
	"testing"
)

// benchPacket is a full-size packet for a 1280-byte tunnel MTU.
var benchPacket = func() []byte {
	p := make([]byte, 1280)
	p[0] = 0x45
	return p
}()

func BenchmarkAppendRouted(b *testing.B) {
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchPacket)))
	for b.Loop() {
		buf, _ = AppendRouted(buf[:0], "echo-service", benchPacket)
	}
}

func BenchmarkParseRouted(b *testing.B) {
	dgram, _ := AppendRouted(nil, "echo-service", benchPacket)
	b.ReportAllocs()
	b.SetBytes(int64(len(dgram)))
	for b.Loop() {
		if _, _, err := ParseRouted(dgram); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendTagged(b *testing.B) {
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchPacket)))
	for b.Loop() {
		buf, _ = AppendTagged(buf[:0], 0xDEADBEEF, "echo-service", benchPacket)
	}
}

func BenchmarkParseTagged(b *testing.B) {
	dgram, _ := AppendTagged(nil, 0xDEADBEEF, "echo-service", benchPacket)
	b.ReportAllocs()
	b.SetBytes(int64(len(dgram)))
	for b.Loop() {
		if _, _, _, err := ParseTagged(dgram); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendTagReturn(b *testing.B) {
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchPacket)))
	for b.Loop() {
		buf = AppendTagReturn(buf[:0], 0xDEADBEEF, benchPacket)
	}
}

func BenchmarkParseV2(b *testing.B) {
	tagReturn := AppendTagReturn(nil, 1, benchPacket)
	for _, bc := range []struct {
		name  string
		dgram []byte
	}{
		{"raw_ip", benchPacket},
		{"tag_return", tagReturn},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.dgram)))
			for b.Loop() {
				if _, err := Parse(V2, bc.dgram); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAppendQAD(b *testing.B) {
	buf := make([]byte, 0, QADLen)
	addr := netip.MustParseAddrPort("203.0.113.5:54321")
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = AppendQAD(buf[:0], addr)
	}
}
