package tunnel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
)

// RefusedError is a server's refusal of a client: the error message it
// answered the hello with, or the reason of its CONNECTION_CLOSE.
type RefusedError struct {
	Code    string // e.g. "wrong_role"
	Message string
}

// Error implements error.
func (e *RefusedError) Error() string {
	return "tunnel: refused by server: " + e.Code + ": " + e.Message
}

// acceptHello accepts the client's control stream and reads its hello,
// within HandshakeTimeout. On failure the session is closed and reason is
// a metric label.
func (s *Session) acceptHello(ctx context.Context) (reason string, err error) {
	deadline := time.Now().Add(HandshakeTimeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	str, err := s.conn.AcceptStream(ctx)
	if err != nil {
		reason = classifyExchangeError(err)
		_ = s.Close("no control stream: " + reason)
		return reason, fmt.Errorf("tunnel: accept control stream: %w", err)
	}
	s.stream, s.reader = str, NewReader(str)
	_ = str.SetReadDeadline(deadline)
	msg, err := DecodeControl(s.reader.Next())
	_ = str.SetReadDeadline(time.Time{})
	if err != nil {
		reason = classifyExchangeError(err)
		if reason == reasonBadHello {
			_ = s.Refuse(CodeBadMessage, "expected hello: "+err.Error())
		} else {
			_ = s.Close("no hello: " + reason)
		}
		return reason, err
	}
	hello, ok := msg.(*Hello)
	if !ok {
		_ = s.Refuse(CodeBadMessage, "expected hello")
		return reasonBadHello, errors.New("tunnel: first control message is not hello")
	}
	s.hello = *hello
	s.pad.Store(hello.Padding)
	return "", nil
}

// classifyExchangeError names a failure of the hello/welcome exchange.
func classifyExchangeError(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return reasonHelloTimeout
	case errors.Is(err, ErrMissingType), errors.Is(err, ErrMalformedMessage), errors.Is(err, ErrMessageTooLarge):
		return reasonBadHello
	}
	if _, ok := errors.AsType[*UnknownTypeError](err); ok {
		return reasonBadHello
	}
	return reasonClosed
}

// SendWelcome answers the client's hello (server side, ztna-v2). It fills
// in the type, the session id and, unless set, the observed address, and
// records w for Welcome.
func (s *Session) SendWelcome(w Welcome) error {
	w.Type = MessageWelcome
	w.Session = s.id
	w.Padding = true
	if !w.Observed.IsValid() {
		w.Observed = s.RemoteAddr()
	}
	s.welcome = w
	return s.Send(w)
}

// dialHello opens the control stream, sends hello and waits for the
// welcome within HandshakeTimeout. It returns a metric reason with err.
func (s *Session) dialHello(ctx context.Context, hello Hello) (reason string, err error) {
	deadline := time.Now().Add(HandshakeTimeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	str, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return s.exchangeFailure(err)
	}
	s.stream, s.reader = str, NewReader(str)
	hello.Type = MessageHello
	hello.Padding = true
	s.hello = hello
	if err := s.Send(hello); err != nil {
		return s.exchangeFailure(err)
	}
	_ = str.SetReadDeadline(deadline)
	msg, err := DecodeControl(s.reader.Next())
	_ = str.SetReadDeadline(time.Time{})
	if err != nil {
		return s.exchangeFailure(err)
	}
	switch m := msg.(type) {
	case *Welcome:
		s.welcome = *m
		s.pad.Store(m.Padding)
		return "", nil
	case *ErrorMessage:
		return reasonServerError, &RefusedError{Code: m.Code, Message: m.Message}
	}
	return reasonBadHello, fmt.Errorf("tunnel: server answered hello with %T", msg)
}

// exchangeFailure classifies an error of the client's exchange; a server
// that closed the connection to refuse us becomes a *RefusedError.
func (s *Session) exchangeFailure(err error) (string, error) {
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && ae.Remote && ae.ErrorCode == closeRefused {
		code, msg, _ := strings.Cut(ae.ErrorMessage, ": ")
		return reasonServerError, &RefusedError{Code: code, Message: msg}
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && ae.Remote && ae.ErrorCode == closeBusy {
		return reasonServerError, &RefusedError{Code: "busy", Message: ae.ErrorMessage}
	}
	if re := serverAlert(err); re != nil {
		// A TLS alert after the client's handshake: the server refused our
		// certificate (TLS 1.3 clients finish before the server judges).
		return reasonServerError, re
	}
	return classifyExchangeError(err), err
}
