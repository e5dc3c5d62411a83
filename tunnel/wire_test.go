package tunnel

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// unhex decodes space-separated hex, e.g. "01 CB 00".
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// testPacket is a minimal IPv4 header (20 bytes, version 4, IHL 5).
const testPacket = "45 00 00 14 00 00 40 00 40 01 00 00 0A 64 00 02 64 40 00 01"

// encodeDatagram re-encodes a parsed datagram with the Append* functions.
func encodeDatagram(d Datagram) ([]byte, error) {
	switch d.Type {
	case TypeQAD:
		b, ok := AppendQAD(nil, d.Addr)
		if !ok {
			return nil, errors.New("QAD not encodable")
		}
		return b, nil
	case TypeAgentRegistration, TypeGatewayRegistration:
		return AppendRegistration(nil, d.Type, string(d.Service))
	case TypeAck:
		return AppendAck(nil, string(d.Service))
	case TypeNack:
		return AppendNack(nil, d.Status, string(d.Service))
	case TypeRouted:
		return AppendRouted(nil, string(d.Service), d.Packet)
	case TypeTagged:
		return AppendTagged(nil, d.Tag, string(d.Service), d.Packet)
	case TypeTagReturn:
		return AppendTagReturn(nil, d.Tag, d.Packet), nil
	case TypeIP:
		return bytes.Clone(d.Packet), nil
	}
	return nil, fmt.Errorf("type %v not encodable", d.Type)
}

// sameDatagram compares two datagrams, treating nil and empty slices alike.
func sameDatagram(a, b Datagram) bool {
	return a.Type == b.Type && a.Status == b.Status && a.Tag == b.Tag && a.Addr == b.Addr &&
		bytes.Equal(a.Service, b.Service) && bytes.Equal(a.Packet, b.Packet)
}

func TestGoldenVectors(t *testing.T) {
	pkt := unhex(t, testPacket)
	tests := []struct {
		name string
		v2   bool // only valid in ztna-v2
		want string
		d    Datagram
	}{
		{name: "qad from the original tests", want: "01 CB 00 71 05 D4 31",
			d: Datagram{Type: TypeQAD, Addr: netip.MustParseAddrPort("203.0.113.5:54321")}},
		{name: "qad port 0", want: "01 C0 00 02 01 00 00",
			d: Datagram{Type: TypeQAD, Addr: netip.MustParseAddrPort("192.0.2.1:0")}},
		{name: "agent registration", want: "10 0C 65 63 68 6F 2D 73 65 72 76 69 63 65",
			d: Datagram{Type: TypeAgentRegistration, Service: []byte("echo-service")}},
		{name: "gateway registration", want: "11 07 77 65 62 2D 61 70 70",
			d: Datagram{Type: TypeGatewayRegistration, Service: []byte("web-app")}},
		{name: "ack", want: "12 00 03 77 65 62",
			d: Datagram{Type: TypeAck, Service: []byte("web")}},
		{name: "nack denied", want: "13 02 03 77 65 62",
			d: Datagram{Type: TypeNack, Status: StatusDenied, Service: []byte("web")}},
		{name: "nack invalid with empty id", want: "13 01 00",
			d: Datagram{Type: TypeNack, Status: StatusInvalid}},
		{name: "routed from the original tests", want: "2F 0C 65 63 68 6F 2D 73 65 72 76 69 63 65 " + testPacket,
			d: Datagram{Type: TypeRouted, Service: []byte("echo-service"), Packet: pkt}},
		{name: "routed utf-8 id", want: "2F 05 63 61 66 C3 A9 " + testPacket,
			d: Datagram{Type: TypeRouted, Service: []byte("café"), Packet: pkt}},
		{name: "tagged", v2: true, want: "30 DE AD BE EF 03 77 65 62 " + testPacket,
			d: Datagram{Type: TypeTagged, Tag: 0xDEADBEEF, Service: []byte("web"), Packet: pkt}},
		{name: "tag return", v2: true, want: "31 00 00 00 01 " + testPacket,
			d: Datagram{Type: TypeTagReturn, Tag: 1, Packet: pkt}},
		{name: "raw ipv4", want: testPacket, d: Datagram{Type: TypeIP, Packet: pkt}},
		{name: "raw ipv6 first byte", want: "60 00 00 00",
			d: Datagram{Type: TypeIP, Packet: []byte{0x60, 0, 0, 0}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := unhex(t, tc.want)
			got, err := encodeDatagram(tc.d)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("encode = % X, %v; want % X", got, err, want)
			}
			d, err := Parse(V2, want)
			if err != nil || !sameDatagram(d, tc.d) {
				t.Fatalf("Parse(V2) = %+v, %v; want %+v", d, err, tc.d)
			}
			if Kind(want) != tc.d.Type {
				t.Errorf("Kind = %v, want %v", Kind(want), tc.d.Type)
			}
			d, err = Parse(V1, want)
			switch {
			case tc.v2 && !errors.Is(err, ErrUnknownType):
				t.Errorf("Parse(V1) of a v2 type: err = %v, want ErrUnknownType", err)
			case !tc.v2 && (err != nil || !sameDatagram(d, tc.d)):
				t.Errorf("Parse(V1) = %+v, %v; want %+v", d, err, tc.d)
			}
		})
	}
}

func TestAppendQAD(t *testing.T) {
	tests := []struct {
		name string
		addr netip.AddrPort
		want string // empty: not encodable
	}{
		{name: "ipv4", addr: netip.MustParseAddrPort("203.0.113.5:54321"), want: "01 CB 00 71 05 D4 31"},
		{name: "v4-mapped ipv6 is unmapped", addr: netip.MustParseAddrPort("[::ffff:203.0.113.5]:54321"),
			want: "01 CB 00 71 05 D4 31"},
		{name: "ipv6", addr: netip.MustParseAddrPort("[2001:db8::1]:443")},
		{name: "ipv6 with zone", addr: netip.MustParseAddrPort("[fe80::1%eth0]:443")},
		{name: "zero value", addr: netip.AddrPort{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte{0xAA}
			got, ok := AppendQAD(prefix, tc.addr)
			if tc.want == "" {
				if ok || !bytes.Equal(got, prefix) {
					t.Fatalf("AppendQAD = % X, %v; want dst unchanged, false", got, ok)
				}
				return
			}
			want := append([]byte{0xAA}, unhex(t, tc.want)...)
			if !ok || !bytes.Equal(got, want) {
				t.Fatalf("AppendQAD = % X, %v; want % X", got, ok, want)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	tests := []struct {
		name string
		v    Version
		in   string
		want error
	}{
		{"empty", V2, "", ErrTruncated},
		{"qad type only", V1, "01", ErrTruncated},
		{"qad short", V1, "01 CB 00 71 05 D4", ErrTruncated},
		{"qad trailing byte", V1, "01 CB 00 71 05 D4 31 00", ErrTooLong},
		{"registration type only", V1, "10", ErrTruncated},
		{"registration id truncated", V1, "10 05 61 62", ErrTruncated},
		{"registration zero-length id", V1, "10 00", ErrInvalidServiceID},
		{"registration invalid utf-8", V1, "11 02 FF FE", ErrInvalidServiceID},
		{"registration lone continuation byte", V1, "10 01 80", ErrInvalidServiceID},
		{"registration truncated utf-8 sequence", V1, "10 01 C3", ErrInvalidServiceID},
		{"registration trailing bytes", V1, "10 01 61 62", ErrTooLong},
		{"ack type only", V1, "12", ErrTruncated},
		{"ack without id length", V1, "12 00", ErrTruncated},
		{"ack non-zero status", V1, "12 01 01 61", ErrBadStatus},
		{"ack empty id", V1, "12 00 00", ErrInvalidServiceID},
		{"ack trailing bytes", V1, "12 00 01 61 62", ErrTooLong},
		{"nack zero status", V1, "13 00 01 61", ErrBadStatus},
		{"nack without id length", V1, "13 02", ErrTruncated},
		{"nack invalid utf-8", V1, "13 01 01 C3", ErrInvalidServiceID},
		{"routed type only", V1, "2F", ErrTruncated},
		{"routed zero-length id", V1, "2F 00 45", ErrInvalidServiceID},
		{"routed id truncated", V1, "2F 05 61", ErrTruncated},
		{"routed invalid utf-8", V1, "2F 02 C3 28 45", ErrInvalidServiceID},
		{"tagged short tag", V2, "30 00 00 00", ErrTruncated},
		{"tagged no id length", V2, "30 00 00 00 01", ErrTruncated},
		{"tagged zero-length id", V2, "30 00 00 00 01 00 45", ErrInvalidServiceID},
		{"tagged id truncated", V2, "30 00 00 00 01 09 61", ErrTruncated},
		{"tagged in v1", V1, "30 00 00 00 01 01 61 45", ErrUnknownType},
		{"tag return short", V2, "31 00 00 00", ErrTruncated},
		{"tag return in v1", V1, "31 00 00 00 01 45", ErrUnknownType},
		{"unassigned 0x00", V2, "00 01 02", ErrUnknownType},
		{"unassigned 0x02", V2, "02", ErrUnknownType},
		{"unassigned 0x14", V2, "14 00", ErrUnknownType},
		{"unassigned 0x3F", V2, "3F", ErrUnknownType},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := unhex(t, tc.in)
			d, err := Parse(tc.v, in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Parse(%v, % X) = %+v, %v; want %v", tc.v, in, d, err, tc.want)
			}
			if d.Service != nil || d.Packet != nil || d.Addr.IsValid() {
				t.Errorf("failed Parse returned data: %+v", d)
			}
		})
	}
}

func TestParseWrongType(t *testing.T) {
	qad := unhex(t, "01 CB 00 71 05 D4 31")
	tests := []struct {
		name  string
		parse func([]byte) error
	}{
		{"ParseRegistration", func(b []byte) error { _, _, err := ParseRegistration(b); return err }},
		{"ParseAck", func(b []byte) error { _, err := ParseAck(b); return err }},
		{"ParseNack", func(b []byte) error { _, _, err := ParseNack(b); return err }},
		{"ParseRouted", func(b []byte) error { _, _, err := ParseRouted(b); return err }},
		{"ParseTagged", func(b []byte) error { _, _, _, err := ParseTagged(b); return err }},
		{"ParseTagReturn", func(b []byte) error { _, _, err := ParseTagReturn(b); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, in := range [][]byte{qad, nil} {
				if err := tc.parse(in); !errors.Is(err, ErrUnknownType) {
					t.Errorf("%s(% X) = %v, want ErrUnknownType", tc.name, in, err)
				}
			}
		})
	}
	if _, err := ParseQAD(unhex(t, "2F 01 61")); !errors.Is(err, ErrUnknownType) {
		t.Errorf("ParseQAD(routed) = %v, want ErrUnknownType", err)
	}
}

func TestAppendRefuses(t *testing.T) {
	long := strings.Repeat("a", MaxServiceIDLen+1)
	pkt := []byte{0x45}
	tests := []struct {
		name   string
		append func(dst []byte) ([]byte, error)
		want   error
	}{
		{"registration empty id", func(d []byte) ([]byte, error) { return AppendRegistration(d, TypeAgentRegistration, "") }, ErrInvalidServiceID},
		{"registration 256-byte id", func(d []byte) ([]byte, error) { return AppendRegistration(d, TypeGatewayRegistration, long) }, ErrTooLong},
		{"registration invalid utf-8", func(d []byte) ([]byte, error) { return AppendRegistration(d, TypeAgentRegistration, "\xff") }, ErrInvalidServiceID},
		{"registration with a non-registration type", func(d []byte) ([]byte, error) { return AppendRegistration(d, TypeAck, "web") }, ErrUnknownType},
		{"ack empty id", func(d []byte) ([]byte, error) { return AppendAck(d, "") }, ErrInvalidServiceID},
		{"ack 256-byte id", func(d []byte) ([]byte, error) { return AppendAck(d, long) }, ErrTooLong},
		{"nack status ok", func(d []byte) ([]byte, error) { return AppendNack(d, StatusOK, "web") }, ErrBadStatus},
		{"nack 256-byte id", func(d []byte) ([]byte, error) { return AppendNack(d, StatusDenied, long) }, ErrTooLong},
		{"nack invalid utf-8", func(d []byte) ([]byte, error) { return AppendNack(d, StatusDenied, "a\xc3") }, ErrInvalidServiceID},
		{"routed empty id", func(d []byte) ([]byte, error) { return AppendRouted(d, "", pkt) }, ErrInvalidServiceID},
		{"routed 256-byte id", func(d []byte) ([]byte, error) { return AppendRouted(d, long, pkt) }, ErrTooLong},
		{"tagged empty id", func(d []byte) ([]byte, error) { return AppendTagged(d, 1, "", pkt) }, ErrInvalidServiceID},
		{"tagged 256-byte id", func(d []byte) ([]byte, error) { return AppendTagged(d, 1, long, pkt) }, ErrTooLong},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := []byte{0xAA, 0xBB}
			got, err := tc.append(dst)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !bytes.Equal(got, dst) {
				t.Errorf("dst changed on error: % X", got)
			}
		})
	}
}

func TestServiceIDBoundaries(t *testing.T) {
	tests := []struct {
		name string
		id   string
	}{
		{"one byte", "a"},
		{"255 bytes", strings.Repeat("s", MaxServiceIDLen)},
		{"multi-byte utf-8", "服务"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := AppendRouted(nil, tc.id, []byte{0x45})
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != RoutedOverhead(tc.id)+1 {
				t.Errorf("len = %d, want RoutedOverhead+1 = %d", len(b), RoutedOverhead(tc.id)+1)
			}
			svc, pkt, err := ParseRouted(b)
			if err != nil || string(svc) != tc.id || !bytes.Equal(pkt, []byte{0x45}) {
				t.Fatalf("ParseRouted = %q, % X, %v", svc, pkt, err)
			}
			b, err = AppendTagged(nil, 7, tc.id, nil)
			if err != nil || len(b) != TaggedOverhead(tc.id) {
				t.Fatalf("AppendTagged len = %d, %v; want %d", len(b), err, TaggedOverhead(tc.id))
			}
		})
	}
}

// TestMaxOverheads checks the framing bounds against the encoders for the
// longest service name.
func TestMaxOverheads(t *testing.T) {
	name := strings.Repeat("s", MaxServiceName)
	b, err := AppendRouted(nil, name, nil)
	if err != nil || len(b) != MaxRoutedOverhead {
		t.Errorf("AppendRouted len = %d, %v; want MaxRoutedOverhead = %d", len(b), err, MaxRoutedOverhead)
	}
	b, err = AppendTagged(nil, 7, name, nil)
	if err != nil || len(b) != MaxTaggedOverhead {
		t.Errorf("AppendTagged len = %d, %v; want MaxTaggedOverhead = %d", len(b), err, MaxTaggedOverhead)
	}
}

// TestParseAliasesInput proves the zero-copy contract and that appending to
// a returned service id cannot overwrite the packet after it.
func TestParseAliasesInput(t *testing.T) {
	b := unhex(t, "30 00 00 00 09 03 77 65 62 "+testPacket)
	_, svc, pkt, err := ParseTagged(b)
	if err != nil {
		t.Fatal(err)
	}
	if &pkt[0] != &b[9] || &svc[0] != &b[6] {
		t.Fatal("ParseTagged copied its input")
	}
	if cap(svc) != len(svc) {
		t.Fatalf("service id capacity %d exceeds its length %d", cap(svc), len(svc))
	}
	_ = append(svc, 'X')
	if pkt[0] != 0x45 {
		t.Fatal("appending to the service id overwrote the packet")
	}
}

func TestKind(t *testing.T) {
	tests := []struct {
		in   []byte
		want DatagramType
	}{
		{nil, TypeUnknown},
		{[]byte{0x00}, TypeUnknown},
		{[]byte{0x01}, TypeQAD},
		{[]byte{0x0F}, TypeUnknown},
		{[]byte{0x10}, TypeAgentRegistration},
		{[]byte{0x11}, TypeGatewayRegistration},
		{[]byte{0x12}, TypeAck},
		{[]byte{0x13}, TypeNack},
		{[]byte{0x14}, TypeUnknown},
		{[]byte{0x2F}, TypeRouted},
		{[]byte{0x30}, TypeTagged},
		{[]byte{0x31}, TypeTagReturn},
		{[]byte{0x3F}, TypeUnknown},
		{[]byte{0x40}, TypeIP},
		{[]byte{0x45}, TypeIP},
		{[]byte{0x60}, TypeIP},
		{[]byte{0xFF}, TypeIP},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("% X", tc.in), func(t *testing.T) {
			if got := Kind(tc.in); got != tc.want {
				t.Errorf("Kind = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDatagramTypeString(t *testing.T) {
	seen := map[string]bool{}
	for _, typ := range []DatagramType{TypeQAD, TypeAgentRegistration, TypeGatewayRegistration,
		TypeAck, TypeNack, TypeRouted, TypeTagged, TypeTagReturn, TypeIP} {
		s := typ.String()
		if s == "unknown" || seen[s] {
			t.Errorf("%#x: name %q missing or duplicated", uint8(typ), s)
		}
		seen[s] = true
	}
	if TypeUnknown.String() != "unknown" {
		t.Errorf("TypeUnknown.String() = %q", TypeUnknown.String())
	}
}

func TestVersion(t *testing.T) {
	tests := []struct {
		alpn string
		v    Version
		ok   bool
	}{
		{ALPNV1, V1, true},
		{ALPNV2, V2, true},
		{"h3", 0, false},
		{"", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.alpn, func(t *testing.T) {
			v, ok := VersionFromALPN(tc.alpn)
			if v != tc.v || ok != tc.ok {
				t.Fatalf("VersionFromALPN = %v, %v", v, ok)
			}
			if ok && (v.ALPN() != tc.alpn || v.String() != tc.alpn) {
				t.Errorf("ALPN() = %q, String() = %q", v.ALPN(), v.String())
			}
		})
	}
	if Version(9).String() != "unknown" || Version(9).ALPN() != "" {
		t.Error("unknown version has a name")
	}
}

// TestCodecAllocatesNothing guards the zero-allocation contract of the
// packet path, including its error returns.
func TestCodecAllocatesNothing(t *testing.T) {
	pkt := unhex(t, testPacket)
	routed := unhex(t, "2F 0C 65 63 68 6F 2D 73 65 72 76 69 63 65 "+testPacket)
	tagged := unhex(t, "30 DE AD BE EF 03 77 65 62 "+testPacket)
	bad := unhex(t, "2F 02 C3 28 45")
	addr := netip.MustParseAddrPort("203.0.113.5:54321")
	buf := make([]byte, 0, 2048)
	tests := []struct {
		name string
		fn   func()
	}{
		{"Parse routed", func() { _, _ = Parse(V1, routed) }},
		{"Parse tagged", func() { _, _ = Parse(V2, tagged) }},
		{"Parse raw ip", func() { _, _ = Parse(V2, pkt) }},
		{"Parse invalid", func() { _, _ = Parse(V1, bad) }},
		{"AppendRouted", func() { _, _ = AppendRouted(buf[:0], "echo-service", pkt) }},
		{"AppendTagged", func() { _, _ = AppendTagged(buf[:0], 9, "echo-service", pkt) }},
		{"AppendTagReturn", func() { _ = AppendTagReturn(buf[:0], 9, pkt) }},
		{"AppendQAD", func() { _, _ = AppendQAD(buf[:0], addr) }},
		{"AppendRouted refused", func() { _, _ = AppendRouted(buf[:0], "", pkt) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(100, tc.fn); n != 0 {
				t.Errorf("%v allocations per call, want 0", n)
			}
		})
	}
}
