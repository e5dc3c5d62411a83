package tunnel

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxMessageSize bounds the JSON body of one control-stream message. A
// peer that announces more is cut off: the stream cannot be resynchronised.
// The largest messages are the relay's directories: about 150 bytes per
// service, so a directory of thousands of services fits. A body is read
// into memory as its bytes arrive, never allocated from the announced
// length.
const MaxMessageSize = 1 << 20

// frameHeaderLen is the size of the big-endian length before each body.
const frameHeaderLen = 4

// frameChunk is the most readFrame allocates before a body's bytes
// arrive: a peer that announces a large message and sends nothing holds no
// more than this.
const frameChunk = 64 << 10

// Errors of the control-stream framing.
var (
	// ErrMessageTooLarge: a body over MaxMessageSize. The Reader stops; the
	// caller closes the stream.
	ErrMessageTooLarge = errors.New("tunnel: control message too large")
	// ErrMissingType: a JSON object without a non-empty "type" string. The
	// frame was consumed; the caller may answer it and read on.
	ErrMissingType = errors.New("tunnel: control message without type")
	// ErrMalformedMessage: a body that is not a JSON object, or that does
	// not decode into the expected message. The frame was consumed.
	ErrMalformedMessage = errors.New("tunnel: malformed control message")
)

// WriteMessage encodes msg as JSON and writes it as one frame with a
// single Write call. msg must encode to an object with a non-empty "type"
// string, usually from a struct field tagged `json:"type"`. WriteMessage is
// not safe for concurrent use on the same writer: the caller serialises.
func WriteMessage(w io.Writer, msg any) error {
	frame, err := encodeFrame(msg)
	if err != nil {
		return err
	}
	if _, err := w.Write(frame); err != nil {
		return fmt.Errorf("tunnel: write control message: %w", err)
	}
	return nil
}

// encodeFrame encodes msg as JSON behind its length: one whole frame, or
// an error when msg does not make a valid message.
func encodeFrame(msg any) ([]byte, error) {
	body, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("tunnel: encode control message: %w", err)
	}
	if len(body) > MaxMessageSize {
		return nil, fmt.Errorf("tunnel: control message of %d bytes: %w", len(body), ErrMessageTooLarge)
	}
	if _, err := messageType(body); err != nil {
		return nil, err
	}
	frame := make([]byte, frameHeaderLen, frameHeaderLen+len(body))
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	return append(frame, body...), nil
}

// Reader reads control-stream frames. It is not safe for concurrent use.
type Reader struct {
	br  *bufio.Reader
	hdr [frameHeaderLen]byte
	err error // sticky: once the stream is broken, every Next returns it
}

// NewReader returns a Reader on r, which it wraps in a bufio.Reader unless
// r already is one.
func NewReader(r io.Reader) *Reader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	return &Reader{br: br}
}

// Next reads one message and returns its type and whole JSON body, which
// the caller decodes with Decode according to the type. It returns io.EOF
// when the stream ends between two messages. A frame whose body is not an
// object with a type yields ErrMalformedMessage or ErrMissingType and the
// Reader stays usable; a truncated frame (io.ErrUnexpectedEOF), an
// oversized one (ErrMessageTooLarge) or a read error ends it for good.
func (r *Reader) Next() (typ string, raw json.RawMessage, err error) {
	if r.err != nil {
		return "", nil, r.err
	}
	body, err := r.readFrame()
	if err != nil {
		r.err = err
		return "", nil, err
	}
	typ, err = messageType(body)
	if err != nil {
		return "", nil, err
	}
	return typ, body, nil
}

// readFrame reads one length-prefixed body.
func (r *Reader) readFrame() ([]byte, error) {
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("tunnel: read control frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(r.hdr[:])
	if n > MaxMessageSize {
		return nil, fmt.Errorf("tunnel: control message of %d bytes: %w", n, ErrMessageTooLarge)
	}
	body := bytes.NewBuffer(make([]byte, 0, min(n, frameChunk)))
	if m, err := io.CopyN(body, r.br, int64(n)); err != nil {
		if err == io.EOF { // the stream ended inside the frame
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("tunnel: read control message (%d of %d bytes): %w", m, n, err)
	}
	return body.Bytes(), nil
}

// messageType returns the "type" member of a JSON object. The key is
// matched exactly (encoding/json would also accept "Type" for a struct).
func messageType(body []byte) (string, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return "", fmt.Errorf("%w: %w", ErrMalformedMessage, err)
	}
	raw, ok := fields["type"]
	if !ok {
		return "", ErrMissingType
	}
	var typ string
	if err := json.Unmarshal(raw, &typ); err != nil || typ == "" {
		return "", ErrMissingType
	}
	return typ, nil
}

// Decode unmarshals a message body returned by Reader.Next into v.
// Unknown fields are ignored so that peers can add fields.
func Decode(raw json.RawMessage, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformedMessage, err)
	}
	return nil
}
