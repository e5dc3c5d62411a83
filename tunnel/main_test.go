package tunnel

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them (the
// TLS tests run servers and clients over loopback).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
