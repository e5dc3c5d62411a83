package netstack

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestWatchNetwork, in a network namespace of its own: an address that
// comes, or a link that comes up, is a change; one of the ignored link is
// not, nor is an address or a link that goes; the watch ends with its
// context.
func TestWatchNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes a network namespace")
	}
	ns := newTestNetns(t)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// The two ends of a veth pair, both in the namespace.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "watched0"}, PeerName: "ignored0"}); err != nil {
		t.Fatal(err)
	}
	links := map[string]netlink.Link{}
	for _, name := range []string{"watched0", "ignored0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		links[name] = l
	}

	changes := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- watchNetwork(ctx, &ns, "ignored0", func() {
			select {
			case changes <- struct{}{}:
			default:
			}
		})
	}()
	seen := func(d time.Duration) bool {
		select {
		case <-changes:
			return true
		case <-time.After(d):
			return false
		}
	}
	addr := func(link, cidr string) *netlink.Addr {
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(links[link], a); err != nil {
			t.Fatalf("%s on %s: %v", cidr, link, err)
		}
		return a
	}

	// The watch is subscribed once it sees the first change: addresses
	// come until it does.
	var first *netlink.Addr
	for i := 1; first == nil; i++ {
		if i > 50 {
			t.Fatal("no change seen for 50 addresses")
		}
		a := addr("watched0", "192.0.2."+strconv.Itoa(i)+"/32")
		if seen(100 * time.Millisecond) {
			first = a
		}
	}
	// The kernel's own follow-ups (the address's local routes, the
	// routes' linkdown flag cleared as the peer's carrier comes) settle.
	for quiet := 0; seen(200 * time.Millisecond); quiet++ {
		if quiet > 50 {
			t.Fatal("changes for 10 s without a pause")
		}
	}

	addr("ignored0", "198.51.100.1/24") // its address, and the route with it
	if seen(300 * time.Millisecond) {
		t.Error("a change on the ignored link")
	}
	if err := h.LinkSetDown(links["watched0"]); err != nil {
		t.Fatal(err)
	}
	if seen(300 * time.Millisecond) {
		t.Error("a link that went down was a change")
	}
	if err := h.LinkSetUp(links["watched0"]); err != nil {
		t.Fatal(err)
	}
	if !seen(5 * time.Second) {
		t.Error("a link that came up was not a change")
	}
	for quiet := 0; seen(200 * time.Millisecond); quiet++ {
		if quiet > 50 {
			t.Fatal("changes for 10 s without a pause")
		}
	}
	if err := h.AddrDel(links["watched0"], first); err != nil {
		t.Fatal(err)
	}
	if seen(300 * time.Millisecond) {
		t.Error("an address that went was a change")
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watch ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not end with its context")
	}
}

// TestWatchNetworkNoIgnoredLink: a link to ignore that does not exist is
// an error at once.
func TestWatchNetworkNoIgnoredLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes a network namespace")
	}
	ns := newTestNetns(t)
	err := watchNetwork(context.Background(), &ns, "nonesuch0", func() {})
	if err == nil {
		t.Fatal("no error")
	}
}

// newTestNetns makes a network namespace without IPv6 (whose link-local
// addresses would come on their own) and returns its handle; the test's
// end closes it, which removes it.
func newTestNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	// The thread goes into the new namespace and back; until it is back
	// it stays locked, and a thread that cannot come back ends with its
	// goroutine (locked at exit).
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // this thread is in it now
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"all", "default"} {
		os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0o644)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close() })
	return ns
}
