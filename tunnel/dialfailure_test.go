package tunnel

import (
	"errors"
	"fmt"
	"testing"

	"github.com/quic-go/quic-go"
)

// TestDialFailureClassified: the handshake counter's result and reason of
// a QUIC dial that failed. A TLS alert from the server (its refusal of
// the client's certificate) is a refusal, server_error, and Dial returns
// it as a *RefusedError "tls_alert", as when the alert comes after the
// client's handshake (exchangeFailure). TLS 1.3 clients finish before the
// server judges them, so the alert may reach a dial still waiting: it was
// counted as a failed dial then, and returned as a transport error (found
// by TestCredsRotationRandom, seed 2509301097913837298, which replays it
// only under load).
func TestDialFailureClassified(t *testing.T) {
	alert := &quic.TransportError{Remote: true, ErrorCode: quic.TransportErrorCode(0x12a), ErrorMessage: "tls: bad certificate"}
	for _, tc := range []struct {
		name           string
		err            error
		result, reason string
		refused        bool // a *RefusedError "tls_alert"
	}{
		{"the server's alert", fmt.Errorf("dial: %w", alert), resultRefused, reasonServerError, true},
		{"the client's refusal", &AuthError{Reason: ReasonUnknownAuthority, Err: errors.New("x509")}, resultRefused, ReasonUnknownAuthority, false},
		{"a local TLS error", &quic.TransportError{ErrorCode: quic.TransportErrorCode(0x12a)}, resultFailed, reasonDial, false},
		{"a remote transport error of another kind", &quic.TransportError{Remote: true, ErrorCode: quic.ProtocolViolation}, resultFailed, reasonDial, false},
		{"no answer", errors.New("timeout: no recent network activity"), resultFailed, reasonDial, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			result, reason, err := dialFailure(tc.err)
			if result != tc.result || reason != tc.reason {
				t.Errorf("counted %s/%s, want %s/%s", result, reason, tc.result, tc.reason)
			}
			re, ok := errors.AsType[*RefusedError](err)
			if ok != tc.refused || (ok && re.Code != "tls_alert") {
				t.Errorf("returned %v (%T), refused by the server: %v", err, err, tc.refused)
			}
		})
	}
}
