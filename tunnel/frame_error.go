package tunnel

import (
	"errors"
	"fmt"
)

// MessageTypeError is the type of the control message that answers a
// message its receiver could not handle.
const MessageTypeError = "error"

// Codes of an ErrorMessage sent for a message that could not be handled.
const (
	CodeUnknownType = "unknown_type" // the receiver knows no such message type
	CodeBadMessage  = "bad_message"  // no type, not a JSON object, or undecodable fields
)

// ErrorMessage answers a control message its receiver could not handle:
// {"type":"error","code":"unknown_type","message":"..."}.
type ErrorMessage struct {
	Type    string `json:"type"` // always MessageTypeError
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
	Ref     string `json:"ref,omitempty"` // what the error is about, e.g. a service or session
	// SessionID names the signaling session the error ends (direct path);
	// 0 for an error about anything else.
	SessionID uint64 `json:"session_id,omitempty"`
}

// UnknownTypeError is returned by a control-stream dispatcher for a message
// type it does not know. The stream goes on; the peer gets Reply().
type UnknownTypeError struct {
	Type string
}

// maxQuotedType bounds how much of an unknown type an error quotes: the
// type may be as long as a whole message, and the reply that quotes it
// must fit in one (a reply that cannot be sent ends the receiver's read
// loop, and with it the sender's session).
const maxQuotedType = 64

// Error implements error.
func (e *UnknownTypeError) Error() string {
	typ := e.Type
	if len(typ) > maxQuotedType {
		typ = typ[:maxQuotedType] + "…"
	}
	return fmt.Sprintf("tunnel: unknown control message type %q", typ)
}

// Reply returns the error message that answers the unknown type.
func (e *UnknownTypeError) Reply() ErrorMessage {
	return ErrorMessage{Type: MessageTypeError, Code: CodeUnknownType, Message: e.Error()}
}

// ReplyFor returns the error message that answers a message which failed
// with err, and false when err is not about one message (a broken or
// oversized frame, an I/O error): the stream must then be closed.
func ReplyFor(err error) (ErrorMessage, bool) {
	if ute, ok := errors.AsType[*UnknownTypeError](err); ok {
		return ute.Reply(), true
	}
	if errors.Is(err, ErrMissingType) || errors.Is(err, ErrMalformedMessage) {
		return ErrorMessage{Type: MessageTypeError, Code: CodeBadMessage, Message: err.Error()}, true
	}
	return ErrorMessage{}, false
}
