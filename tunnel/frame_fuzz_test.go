package tunnel

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

func FuzzFrameReader(f *testing.F) {
	f.Add(rawFrame(`{"type":"hello","name":"gw1"}`))
	f.Add(append(rawFrame(`{"type":"a"}`), rawFrame(`{"type":"b","x":[1,{"y":null}]}`)...))
	f.Add(rawFrame(`{"name":"no type"}`))
	f.Add(rawFrame(`{"type":5}`))
	f.Add(rawFrame(`[1,2]`))
	f.Add(rawFrame("\xff\xfe"))
	f.Add([]byte{0, 1, 0, 1})
	f.Add([]byte{0xFF, 0xFF, 0xFF, 0xFF, '{'})
	f.Add(rawFrame(`{"type":"a"}`)[:7])
	f.Fuzz(func(t *testing.T, stream []byte) {
		r := NewReader(bytes.NewReader(stream))
		// Every frame consumes at least its 4-byte header.
		for range len(stream)/frameHeaderLen + 2 {
			typ, raw, err := r.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				checkFrameError(t, r, err)
				if errors.Is(err, ErrMissingType) || errors.Is(err, ErrMalformedMessage) {
					continue
				}
				return
			}
			checkFrame(t, typ, raw)
		}
		t.Fatal("the Reader returned more frames than the stream can hold")
	})
}

// checkFrameError checks that a stream-breaking error is sticky.
func checkFrameError(t *testing.T, r *Reader, err error) {
	t.Helper()
	if errors.Is(err, ErrMissingType) || errors.Is(err, ErrMalformedMessage) {
		return
	}
	if _, _, again := r.Next(); again != err {
		t.Fatalf("error not sticky: %v then %v", err, again)
	}
}

// checkFrame checks a frame the Reader accepted, and that writing it again
// reads back the same type.
func checkFrame(t *testing.T, typ string, raw json.RawMessage) {
	t.Helper()
	if typ == "" || len(raw) > MaxMessageSize || !json.Valid(raw) {
		t.Fatalf("accepted type %q with body %q", typ, raw)
	}
	var buf bytes.Buffer
	if err := WriteMessage(&buf, raw); err != nil {
		t.Fatalf("re-writing an accepted message: %v", err)
	}
	again, _, err := NewReader(&buf).Next()
	if err != nil || again != typ {
		t.Fatalf("re-read type %q, %v; want %q", again, err, typ)
	}
}
