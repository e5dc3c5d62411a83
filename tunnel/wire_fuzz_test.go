package tunnel

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// wireSeeds are the golden vectors and near misses every datagram fuzz
// target starts from.
var wireSeeds = []string{
	"01 CB 00 71 05 D4 31",
	"10 0C 65 63 68 6F 2D 73 65 72 76 69 63 65",
	"11 03 77 65 62",
	"12 00 03 77 65 62",
	"13 02 03 77 65 62",
	"13 01 00",
	"2F 0C 65 63 68 6F 2D 73 65 72 76 69 63 65 " + testPacket,
	"30 DE AD BE EF 03 77 65 62 " + testPacket,
	"31 00 00 00 01 " + testPacket,
	testPacket,
	"2F 02 C3 28 45",
	"10 05 61 62",
	"",
}

// fuzzDatagram checks the codec's contract on arbitrary input: no panic,
// Kind agrees with Parse, v1 knows no tagged types, and whatever parses
// re-encodes to exactly the same bytes.
func fuzzDatagram(f *testing.F, v Version) {
	for _, s := range wireSeeds {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Parse(v, b)
		if d.Type != Kind(b) {
			t.Fatalf("Parse type %v, Kind %v", d.Type, Kind(b))
		}
		if err != nil {
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrInvalidServiceID) &&
				!errors.Is(err, ErrUnknownType) && !errors.Is(err, ErrTooLong) && !errors.Is(err, ErrBadStatus) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if v == V1 && (d.Type == TypeTagged || d.Type == TypeTagReturn) {
			t.Fatalf("v1 accepted %v", d.Type)
		}
		out, err := encodeDatagram(d)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("re-encoding % X gave % X, %v", b, out, err)
		}
	})
}

func FuzzParseDatagramV1(f *testing.F) { fuzzDatagram(f, V1) }

func FuzzParseDatagramV2(f *testing.F) { fuzzDatagram(f, V2) }

// FuzzPadding checks padding's contract on arbitrary datagrams: trimming
// only ever shortens, a padded datagram is the original plus zeros up to
// the size asked for, and trimming it gives the original back.
func FuzzPadding(f *testing.F) {
	for _, s := range wireSeeds {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(len(b)+40))
	}
	f.Fuzz(func(t *testing.T, b []byte, size uint16) {
		trimmed := trimPadding(b)
		if !bytes.HasPrefix(b, trimmed) {
			t.Fatalf("trim gave % X, not a prefix of % X", trimmed, b)
		}
		var buf [maxPadded]byte
		padded := padTo(b, int(size), &buf)
		if len(padded) == len(b) {
			if !bytes.Equal(padded, b) {
				t.Fatal("an unpadded datagram changed")
			}
			return
		}
		if len(padded) != int(size) || len(padded)-len(b) > padSlack || !bytes.HasPrefix(padded, b) {
			t.Fatalf("padded %d bytes to %d (asked %d)", len(b), len(padded), size)
		}
		if !bytes.Equal(trimPadding(padded), b) {
			t.Fatalf("trimming the padded datagram did not give it back")
		}
	})
}
