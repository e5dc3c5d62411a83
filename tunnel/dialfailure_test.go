package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
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
		{"the server's alert: no certificate", &quic.TransportError{Remote: true, ErrorCode: quic.TransportErrorCode(0x174), ErrorMessage: "tls: certificate required"}, resultRefused, reasonServerError, true},
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
			// The alert is about the client's certificate: say so, as
			// the alert names no reason.
			if ok && !strings.Contains(re.Error(), "refused this side's certificate") {
				t.Errorf("no hint in %q", re.Error())
			}
		})
	}
}

// TestCertAlert: the alerts that are about the certificate a client
// presented get the hint, others (a protocol version, an ALPN) do not.
func TestCertAlert(t *testing.T) {
	for _, tc := range []struct {
		alert uint8
		cert  bool
	}{
		{42, true}, {45, true}, {48, true}, {116, true},
		{40, false},  // handshake_failure
		{70, false},  // protocol_version
		{120, false}, // no_application_protocol
	} {
		if got := certAlert(tc.alert); got != tc.cert {
			t.Errorf("certAlert(%d) = %v, want %v", tc.alert, got, tc.cert)
		}
		re := serverAlert(&quic.TransportError{Remote: true, ErrorCode: quic.TransportErrorCode(0x100 + uint64(tc.alert))})
		if hinted := strings.Contains(re.Message, certAlertHint); hinted != tc.cert {
			t.Errorf("alert %d: message %q", tc.alert, re.Message)
		}
	}
}

// TestNoAnswer: a handshake that timed out names the address dialled and
// what to check; other errors pass as they are.
func TestNoAnswer(t *testing.T) {
	raddr := &net.UDPAddr{IP: net.IPv4(203, 0, 113, 1), Port: 4443}
	for _, tc := range []struct {
		name string
		err  error
		want string // a part of the message; "" for err unchanged
	}{
		{"idle", fmt.Errorf("dial: %w", &quic.IdleTimeoutError{}), "no answer from 203.0.113.1:4443 within 10s: is the server running there, and UDP port 4443 open"},
		{"handshake", &quic.HandshakeTimeoutError{}, "UDP port 4443 open to this host?"},
		{"refused", &quic.TransportError{Remote: true, ErrorCode: 0x12a}, ""},
		{"context", context.Canceled, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := noAnswer(tc.err, raddr)
			if tc.want == "" {
				if got != tc.err {
					t.Errorf("got %v, want %v unchanged", got, tc.err)
				}
				return
			}
			if !strings.Contains(got.Error(), tc.want) || !errors.Is(got, tc.err) {
				t.Errorf("got %q, want one with %q, wrapping %v", got, tc.want, tc.err)
			}
			if result, reason, _ := dialFailure(got); result != resultFailed || reason != reasonDial {
				t.Errorf("counted %s/%s, want a failed dial", result, reason)
			}
		})
	}
}
