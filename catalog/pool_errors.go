package catalog

import (
	"errors"
	"fmt"
)

// Errors of the VIP pool. Every error the pool returns wraps one of them
// (match with errors.Is) and carries the details in its text. A change that
// finds several problems returns them joined (errors.Join): errors.Is
// matches any of them and the text has one problem per line.
var (
	// ErrInvalidPool: the pool prefix is not usable (wrong family, or too
	// small to leave two addresses after the reserved ones).
	ErrInvalidPool = errors.New("invalid VIP pool")
	// ErrInvalidRequest: a request without a service name, or a service
	// requested twice.
	ErrInvalidRequest = errors.New("invalid VIP request")
	// ErrPoolExhausted: the pool has no room for every service that needs a VIP.
	ErrPoolExhausted = errors.New("VIP pool exhausted")
	// ErrPinConflict: two services pin one VIP, or a pin names an address
	// allocated to or held for another service.
	ErrPinConflict = errors.New("VIP pin conflict")
	// ErrPinOutsidePool: a pinned VIP is not inside the pool (or there is no
	// IPv6 pool for an IPv6 pin).
	ErrPinOutsidePool = errors.New("VIP pin outside the pool")
	// ErrReserved: a pinned VIP is the network, gateway or broadcast address
	// of the pool.
	ErrReserved = errors.New("VIP pin on a reserved address")
	// ErrCorruptState: the state file cannot be trusted; see StateRecovery.
	ErrCorruptState = errors.New("corrupt VIP state")
)

// poolError is one problem: a sentinel to match and a complete message.
type poolError struct {
	kind error
	msg  string
}

func (e *poolError) Error() string { return e.msg }
func (e *poolError) Unwrap() error { return e.kind }

// problem builds an error of the given kind whose text is "catalog: " and
// the formatted message (the sentinel's own text is not repeated).
func problem(kind error, format string, args ...any) error {
	return &poolError{kind: kind, msg: "catalog: " + fmt.Sprintf(format, args...)}
}
