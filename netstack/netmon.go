package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

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
// to a full socket buffer count as a network that came. WatchNetwork
// returns when ctx is done, or at once when the host's routing messages
// cannot be subscribed to.
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

// watchNetwork is WatchNetwork in the network namespace ns (nil: the
// caller's).
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
	for addrs != nil || links != nil {
		select {
		case <-ctx.Done():
			close(done)
			// The subscriptions' goroutines close their channels once
			// their sockets are closed; until then they may be sending.
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
			return nil
		case u, ok := <-addrs:
			switch {
			case !ok:
				addrs = nil
			case u.LinkIndex != skip:
				changed(u.NewAddr)
			}
		case u, ok := <-links:
			switch {
			case !ok:
				links = nil
			case int(u.Index) != skip:
				changed(u.Header.Type == unix.RTM_NEWLINK && u.Flags&unix.IFF_UP != 0 && u.Flags&unix.IFF_RUNNING != 0)
			}
		}
	}
	close(done)
	return errors.New("netstack: watch the network: the kernel ended the subscriptions")
}

// handleAt is a netlink handle in ns (nil: the caller's namespace).
func handleAt(ns *netns.NsHandle) (*netlink.Handle, error) {
	if ns == nil {
		return netlink.NewHandle()
	}
	return netlink.NewHandleAt(*ns)
}
