package netstack

import (
	"context"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestWatchNetwork, in a network namespace of its own: an address that
// comes, or a link that comes up, is a network that came; one of the
// ignored link is nothing; an address or a link that goes is a change of
// the other kind; the watch ends with its context.
func TestWatchNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes a network namespace")
	}
	ns, h, links := newVethNetns(t, false, "watched0", "ignored0")
	for _, l := range links {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}

	changes, gone := make(chan struct{}, 1), make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- watchNetwork(ctx, &ns, "ignored0", func(came bool) {
			c := gone
			if came {
				c = changes
			}
			select {
			case c <- struct{}{}:
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
		t.Error("a link that went down was a network that came")
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
	for len(gone) > 0 {
		<-gone
	}
	if err := h.AddrDel(links["watched0"], first); err != nil {
		t.Fatal(err)
	}
	if seen(300 * time.Millisecond) {
		t.Error("an address that went was a network that came")
	}
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Error("an address that went was not a change")
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
	ns := newTestNetns(t, false)
	err := watchNetwork(context.Background(), &ns, "nonesuch0", func(bool) {})
	if err == nil {
		t.Fatal("no error")
	}
}

// newVethNetns makes a namespace (newTestNetns) with a veth pair of the
// two names in it, and returns it, a handle in it and the pair's links.
func newVethNetns(t *testing.T, ipv6 bool, a, b string) (netns.NsHandle, *netlink.Handle, map[string]netlink.Link) {
	t.Helper()
	ns := newTestNetns(t, ipv6)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}); err != nil {
		t.Fatal(err)
	}
	links := map[string]netlink.Link{}
	for _, name := range []string{a, b} {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		links[name] = l
	}
	return ns, h, links
}

// newTestNetns makes a network namespace, without IPv6 unless ipv6 (its
// link-local addresses would come on their own), and returns its handle;
// the test's end closes it, which removes it.
func newTestNetns(t *testing.T, ipv6 bool) netns.NsHandle {
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
		if !ipv6 {
			os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0o644)
		}
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close() })
	return ns
}

// TestOverlapping: the host's networks that share addresses with a pool
// are found, on any link but the skipped one, IPv4 and IPv6; single host
// addresses and networks beside the pool are not.
func TestOverlapping(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes a network namespace")
	}
	_, h, links := newVethNetns(t, true, "lan0", "own0")
	for _, cidr := range [][2]string{
		{"lan0", "10.100.0.130/25"}, // overlaps the pool
		{"lan0", "192.0.2.1/24"},    // beside it
		{"lan0", "10.100.0.99/32"},  // a host address: Shadowed's
		{"lan0", "10.0.0.1/8"},      // holds the pool
		{"own0", "10.100.0.5/24"},   // the skipped link
		{"lan0", "fd00:ab::5/48"},   // holds the pool6
		{"lan0", "fd00:cd::5/64"},   // beside it
	} {
		a, err := netlink.ParseAddr(cidr[1])
		if err != nil {
			t.Fatal(err)
		}
		if a.IP.To4() == nil {
			a.Flags |= unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(links[cidr[0]], a); err != nil {
			t.Fatalf("%s: %v", cidr[1], err)
		}
	}
	got, err := overlapping(h, links["own0"].Attrs().Index, []netip.Prefix{
		netip.MustParsePrefix("10.100.0.0/24"), netip.MustParsePrefix("fd00:ab::/64")})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"the host's network 10.100.0.128/25 on lan0 (its address 10.100.0.130) overlaps the VIP pool 10.100.0.0/24",
		"the host's network 10.0.0.0/8 on lan0 (its address 10.0.0.1) overlaps the VIP pool 10.100.0.0/24",
		"the host's network fd00:ab::/48 on lan0 (its address fd00:ab::5) overlaps the VIP pool fd00:ab::/64",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d overlaps, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || strings.HasPrefix(g, w+": ")
		}
		if !found {
			t.Errorf("no %q in\n%s", w, strings.Join(got, "\n"))
		}
	}
}

// TestWatchNetworkResubscribes: a burst of changes while the watch is busy
// overflows its subscriptions' socket buffer, and the kernel ends them;
// the watch subscribes again (after 1 s) and sees the next network that
// comes. Before, it had ended for good.
func TestWatchNetworkResubscribes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes a network namespace")
	}
	ns, h, links := newVethNetns(t, false, "watched0", "peer0")
	for _, l := range links {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	busy := make(chan struct{}) // the first change waits until it is closed
	var once atomic.Bool        // the first change came
	changes := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var watchErr error
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		watchErr = watchNetwork(ctx, &ns, "", func(came bool) {
			if once.CompareAndSwap(false, true) {
				<-busy
			}
			if came {
				select {
				case changes <- struct{}{}:
				default:
				}
			}
		})
	}()
	defer func() {
		cancel()
		<-ended
		if watchErr != nil {
			t.Errorf("the watch ended with %v", watchErr)
		}
	}()
	addrs := func(add bool, prefixes ...string) {
		for _, p := range prefixes {
			for i := range 256 {
				a, err := netlink.ParseAddr(strings.Replace(p, "X", strconv.Itoa(i), 1))
				if err != nil {
					t.Fatal(err)
				}
				if add {
					err = h.AddrAdd(links["watched0"], a)
				} else {
					err = h.AddrDel(links["watched0"], a)
				}
				if err != nil {
					t.Fatalf("%v %s: %v", add, a, err)
				}
			}
		}
	}
	// Addresses come until the watch, subscribed, takes the first: then it
	// is busy, and a burst of 1,536 changes fills its socket's buffer.
	deadline := time.Now().Add(10 * time.Second)
	for i := 1; !once.Load(); i++ {
		if time.Now().After(deadline) {
			t.Fatal("the watch saw no address in 10 s")
		}
		a, _ := netlink.ParseAddr("192.0.2." + strconv.Itoa(i%250+1) + "/32")
		h.AddrAdd(links["peer0"], a)
		time.Sleep(50 * time.Millisecond)
	}
	burst := []string{"192.0.2.X/32", "198.51.100.X/32", "203.0.113.X/32"}
	addrs(true, burst...)
	addrs(false, burst...)
	close(busy)
	// What was read before the overflow drains; then a quiet second or
	// more, the resubscription's wait.
	for quiet := time.Now(); time.Since(quiet) < 1500*time.Millisecond; {
		select {
		case <-changes:
			quiet = time.Now()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(deadline) > 30*time.Second {
			t.Fatal("changes for 30 s without a pause")
		}
	}
	select {
	case <-ended:
		t.Fatalf("the watch ended: %v", watchErr)
	default:
	}
	a, _ := netlink.ParseAddr("203.0.113.77/32")
	if err := h.AddrAdd(links["watched0"], a); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
	case <-time.After(5 * time.Second):
		t.Fatal("an address that came after the burst was not seen: the watch has not subscribed again")
	}
}
