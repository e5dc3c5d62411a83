package gateway

import (
	"net"
	"testing"
	"time"
)

// TestAttachAfterClose: a connection attached to a flow that was closed
// meanwhile (a shutdown or DELETE /v1/flows while the backend was dialled)
// is closed at once, not leaked with a copy loop waiting on it.
func TestAttachAfterClose(t *testing.T) {
	cases := []struct {
		name        string
		closeBefore bool
	}{
		{"attached, then closed", false},
		{"closed, then attached", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &flow{done: make(chan struct{})}
			a, b := net.Pipe()
			defer b.Close()
			if tc.closeBefore {
				f.close("shutdown")
				f.attach(a)
			} else {
				f.attach(a)
				f.close("shutdown")
			}
			b.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := b.Read(make([]byte, 1)); err == nil || err.Error() != "EOF" {
				t.Fatalf("peer of the attached connection reads %v, want EOF", err)
			}
		})
	}
}
