package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// WatchNetwork calls changed(true) each time the host gains an address, or
// a link comes up with its carrier, other than ignore (a TUN device whose
// owner sets it up itself; "" ignores none), until ctx is done: a network
// came (a laptop's Wi-Fi back, a DHCP lease, a cable), so what could not
// be reached may be reachable now. An address or a link that goes is
// changed(false). Routes are not watched: a router's routing daemon may
// install hundreds of thousands of them, each a message to parse. A burst
// of changes makes a burst of calls: changed must be cheap, and safe from
// another goroutine (a non-blocking send on a channel of one). Events lost
// to a full socket buffer count as a network that came; the kernel then
// ends the subscriptions, which are made again after 1 s (then 2 s, 4 s …
// up to 30 s while they keep ending). WatchNetwork returns when ctx is
// done, or at once when the host's routing messages cannot be subscribed
// to.
func WatchNetwork(ctx context.Context, ignore string, changed func(came bool)) error {
	return watchNetwork(ctx, nil, ignore, changed)
}

// NetworkWake returns a channel of one that each network that comes
// (WatchNetwork, ignoring the link ignore) wakes, for a tunnel.Redialer's
// Wake, and calls each of also at every change, one that goes too (cheap,
// as WatchNetwork's changed). The watch runs, until ctx is done, in the
// goroutine that start starts (a WaitGroup's Go, which the caller waits
// for); when it cannot run, it logs why at info level and the channel
// stays quiet.
func NetworkWake(ctx context.Context, ignore string, log *slog.Logger, start func(func()), also ...func()) <-chan struct{} {
	wake := make(chan struct{}, 1)
	start(func() {
		err := WatchNetwork(ctx, ignore, func(came bool) {
			if came {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
			for _, f := range also {
				f()
			}
		})
		if err != nil {
			log.Info("not watching the host's network: after a failed dial, the next waits its backoff out", "err", err)
		}
	})
	return wake
}

// Resubscription after the kernel ended a watch's subscriptions: the
// first after resubscribeMin, each next one that also fails or ends within
// resubscribeMax after twice as long, up to resubscribeMax.
const (
	resubscribeMin = time.Second
	resubscribeMax = 30 * time.Second
)

// errSubscriptionsEnded is watchOnce's when the kernel ended its
// subscriptions: their socket failed, most often because the messages of
// a burst of changes filled its buffer (ENOBUFS).
var errSubscriptionsEnded = errors.New("netstack: watch the network: the kernel ended the subscriptions")

// watchNetwork is WatchNetwork in the network namespace ns (nil: the
// caller's). Subscriptions the kernel ends are made again: the library
// ends them at the first failed receive, and a burst of changes (a router
// whose interfaces come up together) overflows their socket's buffer.
// Before, that ended the watch for good.
func watchNetwork(ctx context.Context, ns *netns.NsHandle, ignore string, changed func(came bool)) error {
	skip := -1
	if ignore != "" {
		h, err := handleAt(ns)
		if err != nil {
			return fmt.Errorf("netstack: watch the network: %w", err)
		}
		l, err := h.LinkByName(ignore)
		h.Close()
		if err != nil {
			return fmt.Errorf("netstack: watch the network: find %s: %w", ignore, err)
		}
		skip = l.Attrs().Index
	}
	wait := resubscribeMin
	for first := true; ; first = false {
		began := time.Now()
		err := watchOnce(ctx, ns, skip, changed)
		switch {
		case ctx.Err() != nil:
			return nil
		case first && !errors.Is(err, errSubscriptionsEnded):
			return err // the host's routing messages cannot be subscribed to
		}
		changed(true) // messages were lost: maybe a network came
		if time.Since(began) > resubscribeMax {
			wait = resubscribeMin
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, resubscribeMax)
	}
}

// watchOnce watches through one pair of subscriptions: until ctx is done
// (nil) or the kernel ends them (errSubscriptionsEnded).
func watchOnce(ctx context.Context, ns *netns.NsHandle, skip int, changed func(came bool)) error {
	done := make(chan struct{})
	// A receive error after done is the subscription's socket closing;
	// before, messages were lost (a full socket buffer): maybe a change.
	onErr := func(error) {
		select {
		case <-done:
		default:
			changed(true)
		}
	}
	addrs := make(chan netlink.AddrUpdate, 16)
	links := make(chan netlink.LinkUpdate, 16)
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: ns, ErrorCallback: onErr}); err != nil {
		close(done)
		return fmt.Errorf("netstack: watch the network's addresses: %w", err)
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: ns, ErrorCallback: onErr}); err != nil {
		close(done)
		for range addrs {
		}
		return fmt.Errorf("netstack: watch the network's links: %w", err)
	}
	// Until ctx is done or the kernel ends either subscription: the other
	// is ended too, and both are made again.
	for ended := false; !ended; {
		select {
		case <-ctx.Done():
			ended = true
		case u, ok := <-addrs:
			switch {
			case !ok:
				addrs, ended = nil, true
			case u.LinkIndex != skip:
				changed(u.NewAddr)
			}
		case u, ok := <-links:
			switch {
			case !ok:
				links, ended = nil, true
			case int(u.Index) != skip:
				changed(u.Header.Type == unix.RTM_NEWLINK && u.Flags&unix.IFF_UP != 0 && u.Flags&unix.IFF_RUNNING != 0)
			}
		}
	}
	close(done)
	// The subscriptions' goroutines close their channels once their
	// sockets are closed; until then they may be sending.
	for addrs != nil || links != nil {
		select {
		case _, ok := <-addrs:
			if !ok {
				addrs = nil
			}
		case _, ok := <-links:
			if !ok {
				links = nil
			}
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return errSubscriptionsEnded
}

// handleAt is a netlink handle in ns (nil: the caller's namespace).
func handleAt(ns *netns.NsHandle) (*netlink.Handle, error) {
	if ns == nil {
		return netlink.NewHandle()
	}
	return netlink.NewHandleAt(*ns)
}
