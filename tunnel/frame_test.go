package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// helloMsg is a sample message as the session layer will define them.
type helloMsg struct {
	Type  string   `json:"type"`
	Name  string   `json:"name"`
	Ports []uint16 `json:"ports,omitempty"`
}

// rawFrame builds one frame around body, whatever body is.
func rawFrame(body string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

func TestFrameRoundTrip(t *testing.T) {
	msgs := []helloMsg{
		{Type: "hello", Name: "gw1", Ports: []uint16{80, 443}},
		{Type: "directory", Name: strings.Repeat("n", 1000)},
		{Type: "tag_closed"},
	}
	var stream bytes.Buffer
	for _, m := range msgs {
		if err := WriteMessage(&stream, m); err != nil {
			t.Fatal(err)
		}
	}
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"whole", func(r io.Reader) io.Reader { return r }},
		{"one byte at a time", iotest.OneByteReader},
		{"half reads", iotest.HalfReader},
		{"data with EOF", iotest.DataErrReader},
	}
	for _, rc := range readers {
		t.Run(rc.name, func(t *testing.T) {
			r := NewReader(rc.wrap(bytes.NewReader(stream.Bytes())))
			for i, want := range msgs {
				typ, raw, err := r.Next()
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				var got helloMsg
				if err := Decode(raw, &got); err != nil {
					t.Fatal(err)
				}
				if typ != want.Type || got.Type != want.Type || got.Name != want.Name || len(got.Ports) != len(want.Ports) {
					t.Fatalf("message %d: %q %+v, want %+v", i, typ, got, want)
				}
			}
			if _, _, err := r.Next(); err != io.EOF {
				t.Fatalf("after the last message: %v, want io.EOF", err)
			}
		})
	}
}

func TestFrameReaderErrors(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		want   error
		usable bool // the next frame is still read
	}{
		{"exactly MaxMessageSize", rawFrame(bodyOfSize(MaxMessageSize)), nil, true},
		{"MaxMessageSize + 1", rawFrame(bodyOfSize(MaxMessageSize + 1)), ErrMessageTooLarge, false},
		{"length 0xFFFFFFFF", []byte{0xFF, 0xFF, 0xFF, 0xFF}, ErrMessageTooLarge, false},
		{"missing type", rawFrame(`{"name":"gw1"}`), ErrMissingType, true},
		{"type of another case", rawFrame(`{"Type":"hello"}`), ErrMissingType, true},
		{"empty type", rawFrame(`{"type":""}`), ErrMissingType, true},
		{"null type", rawFrame(`{"type":null}`), ErrMissingType, true},
		{"numeric type", rawFrame(`{"type":5}`), ErrMissingType, true},
		{"null body", rawFrame(`null`), ErrMissingType, true},
		{"array body", rawFrame(`[{"type":"x"}]`), ErrMalformedMessage, true},
		{"garbage", rawFrame("\x00\x01garbage"), ErrMalformedMessage, true},
		{"empty body", rawFrame(""), ErrMalformedMessage, true},
		{"two objects", rawFrame(`{"type":"a"}{"type":"b"}`), ErrMalformedMessage, true},
		{"short header", []byte{0, 0}, io.ErrUnexpectedEOF, false},
		{"short body", rawFrame(`{"type":"hello"}`)[:10], io.ErrUnexpectedEOF, false},
		{"header only", []byte{0, 0, 0, 5}, io.ErrUnexpectedEOF, false},
	}
	next := rawFrame(`{"type":"after"}`)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stream := append(bytes.Clone(tc.stream), next...)
			if !tc.usable {
				stream = tc.stream // a broken frame swallows what follows
			}
			r := NewReader(iotest.OneByteReader(bytes.NewReader(stream)))
			_, _, err := r.Next()
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Next = %v, want %v", err, tc.want)
			}
			typ, _, err2 := r.Next()
			switch {
			case tc.usable && (err2 != nil || typ != "after"):
				t.Fatalf("next frame: %q, %v; want \"after\"", typ, err2)
			case !tc.usable && !errors.Is(err2, tc.want):
				t.Fatalf("the Reader went on after a broken frame: %q, %v", typ, err2)
			}
		})
	}
}

// bodyOfSize returns a message body of exactly n bytes.
func bodyOfSize(n int) string {
	const head, tail = `{"type":"x","pad":"`, `"}`
	return head + strings.Repeat("a", n-len(head)-len(tail)) + tail
}

// errWriter fails every write.
type errWriter struct{}

func (errWriter) Write([]byte) (int, error) { return 0, errors.New("boom") }

// countingWriter counts Write calls.
type countingWriter struct {
	bytes.Buffer
	calls int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.calls++
	return w.Buffer.Write(p)
}

func TestWriteMessage(t *testing.T) {
	tests := []struct {
		name string
		msg  any
		w    io.Writer
		want error // nil: success
	}{
		{"struct", helloMsg{Type: "hello"}, &countingWriter{}, nil},
		{"map", map[string]any{"type": "x", "n": 1}, &countingWriter{}, nil},
		{"missing type", helloMsg{Name: "gw1"}, &countingWriter{}, ErrMissingType},
		{"not an object", []string{"type"}, &countingWriter{}, ErrMalformedMessage},
		// {"type":"x","name":"…"} has 22 bytes around the name.
		{"exactly MaxMessageSize", helloMsg{Type: "x", Name: strings.Repeat("a", MaxMessageSize-22)}, &countingWriter{}, nil},
		{"MaxMessageSize + 1", helloMsg{Type: "x", Name: strings.Repeat("a", MaxMessageSize-21)}, &countingWriter{}, ErrMessageTooLarge},
		{"unencodable", map[string]any{"type": "x", "f": func() {}}, &countingWriter{}, errAny},
		{"writer fails", helloMsg{Type: "hello"}, errWriter{}, errAny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteMessage(tc.w, tc.msg)
			switch {
			case tc.want == nil && err != nil:
				t.Fatal(err)
			case tc.want == errAny && err == nil:
				t.Fatal("no error")
			case tc.want != nil && tc.want != errAny && !errors.Is(err, tc.want):
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			cw, ok := tc.w.(*countingWriter)
			if !ok {
				return
			}
			if tc.want != nil && cw.calls != 0 {
				t.Fatalf("a refused message was written")
			}
			if tc.want == nil && cw.calls != 1 {
				t.Fatalf("%d Write calls, want one per frame", cw.calls)
			}
		})
	}
}

// errAny marks a test case that expects some error.
var errAny = errors.New("any error")

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	var m helloMsg
	if err := Decode([]byte(`{"type":"hello","name":"gw1","future":{"x":[1,2]}}`), &m); err != nil {
		t.Fatal(err)
	}
	if m.Name != "gw1" {
		t.Fatalf("name = %q", m.Name)
	}
	if err := Decode([]byte(`{"type":"hello","ports":"eighty"}`), &m); !errors.Is(err, ErrMalformedMessage) {
		t.Fatalf("wrong field type: %v, want ErrMalformedMessage", err)
	}
}

func TestReplyFor(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code string // empty: no reply, close the stream
	}{
		{"unknown type", &UnknownTypeError{Type: "teleport"}, CodeUnknownType},
		{"wrapped unknown type", errors.Join(errors.New("dispatch"), &UnknownTypeError{Type: "x"}), CodeUnknownType},
		// A type as long as a message may hold: quoted whole, the reply
		// did not fit in one, and the relay's control loop, whose reply
		// failed, ended the sender's session instead of answering it.
		{"unknown type of a whole message", &UnknownTypeError{Type: strings.Repeat("z", MaxMessageSize-len(`{"type":""}`))}, CodeUnknownType},
		{"unknown type of control bytes", &UnknownTypeError{Type: strings.Repeat("\x01", MaxMessageSize/4)}, CodeUnknownType},
		{"missing type", ErrMissingType, CodeBadMessage},
		{"malformed", Decode([]byte(`[`), &helloMsg{}), CodeBadMessage},
		{"too large", ErrMessageTooLarge, ""},
		{"broken stream", io.ErrUnexpectedEOF, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reply, ok := ReplyFor(tc.err)
			if ok != (tc.code != "") || reply.Code != tc.code {
				t.Fatalf("ReplyFor = %+v, %v; want code %q", reply, ok, tc.code)
			}
			if !ok {
				return
			}
			var buf bytes.Buffer
			if err := WriteMessage(&buf, reply); err != nil {
				t.Fatal(err)
			}
			typ, raw, err := NewReader(&buf).Next()
			if err != nil || typ != MessageTypeError || !strings.Contains(string(raw), `"code":"`+tc.code+`"`) {
				t.Fatalf("reply on the wire: %q %s %v", typ, raw, err)
			}
		})
	}
}

// TestFrameReaderAllocatesAsBytesArrive: a peer that announces the largest
// message and sends a few bytes of it makes the reader hold what arrived
// (at most frameChunk), not the announced size.
func TestFrameReaderAllocatesAsBytesArrive(t *testing.T) {
	stream := binary.BigEndian.AppendUint32(nil, MaxMessageSize)
	stream = append(stream, `{"type":"x","pad":"`...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, _, err := NewReader(bytes.NewReader(stream)).Next()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("next: %v, want io.ErrUnexpectedEOF", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 2*frameChunk {
		t.Errorf("%d bytes allocated for a frame of which %d bytes arrived", got, len(stream))
	}
}
