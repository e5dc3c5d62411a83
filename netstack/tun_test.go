package netstack

import "testing"

// TestNoTUNInTests: a test that would open a real TUN device in the
// initial network namespace (a role without its fake device) is refused.
func TestNoTUNInTests(t *testing.T) {
	if !inInitialNetns() {
		t.Skip("not in the initial network namespace")
	}
	if tun, err := OpenTUN("zttest0", 1280); err == nil {
		tun.Close()
		t.Fatal("a TUN device was opened in the initial network namespace")
	}
}
