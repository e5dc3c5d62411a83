package tunnel

import "encoding/json"

// DecodeControl decodes a control message body by its type into a pointer
// to the message struct: *Hello, *Welcome, *Register, *Assign, *Health,
// *TagOpen, *TagClose, *Directory, *Offer, *Answer, *Result, *Ping, *Pong
// or *ErrorMessage. An unknown type is an
// *UnknownTypeError (answer it with ReplyFor); an undecodable body wraps
// ErrMalformedMessage. Receivers switch on the result's type:
//
//	msg, err := tunnel.DecodeControl(s.Next())
//	switch m := msg.(type) { case *tunnel.Register: ... }
func DecodeControl(typ string, raw json.RawMessage, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	var msg any
	switch typ {
	case MessageHello:
		msg = new(Hello)
	case MessageWelcome:
		msg = new(Welcome)
	case MessageRegister:
		msg = new(Register)
	case MessageAssign:
		msg = new(Assign)
	case MessageHealth:
		msg = new(Health)
	case MessageTagOpen:
		msg = new(TagOpen)
	case MessageTagClose:
		msg = new(TagClose)
	case MessageDirectory:
		msg = new(Directory)
	case MessageOffer:
		msg = new(Offer)
	case MessageAnswer:
		msg = new(Answer)
	case MessageResult:
		msg = new(Result)
	case MessagePing:
		msg = new(Ping)
	case MessagePong:
		msg = new(Pong)
	case MessageTypeError:
		msg = new(ErrorMessage)
	default:
		return nil, &UnknownTypeError{Type: typ}
	}
	if err := Decode(raw, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

// MessageTypes returns every control message type DecodeControl knows.
func MessageTypes() []string {
	return []string{
		MessageHello, MessageWelcome, MessageRegister, MessageAssign, MessageHealth,
		MessageTagOpen, MessageTagClose, MessageDirectory, MessageOffer, MessageAnswer,
		MessageResult, MessagePing, MessagePong, MessageTypeError,
	}
}
