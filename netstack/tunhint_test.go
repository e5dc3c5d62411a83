package netstack

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestTUNHint(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string // a part of the hint; "" for none
	}{
		{"device not writable", &wrapped{unix.EACCES}, "mode 0666"},
		{"no capability", fmt.Errorf("TUNSETIFF: %w", unix.EPERM), "CAP_NET_ADMIN"},
		{"held by another process", unix.EBUSY, "another [tun] name"},
		{"other", errors.New("no such device"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tunHint(tc.err)
			if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
				t.Errorf("tunHint(%v) = %q, want one with %q", tc.err, got, tc.want)
			}
		})
	}
}

// wrapped is an error that wraps another without fmt, as a library's own
// error types do.
type wrapped struct{ err error }

func (w *wrapped) Error() string { return "open /dev/net/tun: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }
