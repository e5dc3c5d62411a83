package netstack

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// tunHeadroom leaves room for the virtio-net header that the TUN device
// writes in front of each packet when offloads are on (10 bytes).
const tunHeadroom = 16

// TUN is a Linux TUN device opened with offloads (IFF_VNET_HDR with
// TSO/USO): reads take the kernel's TCP super-packets whole and cut UDP
// ones into datagrams (receiveVirtio); writes coalesce consecutive segments
// of a flow (GRO) in batches, or hand the kernel gVisor's TCP super-packets
// (WriteGSO).
type TUN struct {
	dev   tun.Device
	name  string
	mtu   int
	batch int

	readErrors atomic.Uint64

	mu     sync.Mutex
	routes []netip.Prefix
	closed bool
	events sync.WaitGroup

	overlapMu sync.Mutex
	overlaps  map[string]bool // warned of by WarnOverlapping, while they last
}

var _ Device = (*TUN)(nil)

// OpenTUN creates the TUN device name with the given MTU. The device is
// removed by the kernel when it is closed.
func OpenTUN(name string, mtu int) (*TUN, error) {
	if testing.Testing() && inInitialNetns() {
		// A test that forgot its fake device would route the VIP pool
		// of the machine it runs on into a TUN device.
		return nil, errors.New("netstack: a test may not open a TUN device in the initial network namespace; give the role a Device, or run it in a namespace of the test's own")
	}
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("netstack: create TUN %q: %w%s", name, err, tunHint(err))
	}
	real, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("netstack: TUN name: %w", err)
	}
	t := &TUN{dev: dev, name: real, mtu: mtu, batch: dev.BatchSize()}
	t.events.Add(1)
	go func() { // the device's event channel must be drained; it closes with the device
		defer t.events.Done()
		for range dev.Events() {
		}
	}()
	return t, nil
}

// Name returns the interface name.
func (t *TUN) Name() string { return t.name }

// MTU implements Device.
func (t *TUN) MTU() int { return t.mtu }

// Headroom implements Device.
func (t *TUN) Headroom() int { return tunHeadroom }

// WriteCap implements Device: room for a coalesced 64 KiB packet.
func (t *TUN) WriteCap() int { return tunHeadroom + 65535 }

// BatchSize implements Device.
func (t *TUN) BatchSize() int { return t.batch }

// WritePackets implements Output.
func (t *TUN) WritePackets(pkts [][]byte) error {
	_, err := t.dev.Write(pkts, tunHeadroom)
	return err
}

var _ GSOOutput = (*TUN)(nil)

// GSO implements GSOOutput: a device opened with offloads (virtio-net
// headers) takes TCP super-packets, and the kernel cuts them.
func (t *TUN) GSO() bool { return t.batch > 1 && t.dev.File() != nil }

// WriteGSO implements GSOOutput: the packet goes to the device behind a
// virtio-net header that asks the kernel to segment it and complete its
// checksums.
func (t *TUN) WriteGSO(b []byte, g GSO) error {
	h := b[tunHeadroom-virtioNetHdrLen:]
	putVirtioGSO(h, g)
	_, err := t.dev.File().Write(h)
	return err
}

// Run implements Device: it reads packets into buffers it reuses and
// delivers them to sink. With offloads on and a sink that takes TCP
// super-packets whole (a WholeSink: a netstack link), each read is one
// packet or one super-packet behind its virtio-net header
// (receiveVirtio); any other sink (the agent's router, which sends each
// packet on as one datagram) gets MTU-sized packets, the super-packets cut
// by wireguard-go's read.
func (t *TUN) Run(sink PacketSink) error {
	if w, ok := sink.(WholeSink); ok && t.batch > 1 && t.dev.File() != nil {
		return t.runVirtio(t.dev.File(), w)
	}
	bufs := make([][]byte, t.batch)
	sizes := make([]int, t.batch)
	for i := range bufs {
		bufs[i] = make([]byte, max(t.mtu, 1500)+tunHeadroom)
	}
	flusher, _ := sink.(Flusher)
	for {
		n, err := t.dev.Read(bufs, sizes, 0)
		for i := range n {
			sink.Deliver(bufs[i][:sizes[i]])
		}
		if flusher != nil && n > 0 {
			flusher.Flush()
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrClosed) || t.isClosed() {
			return nil
		}
		// A malformed or oversized super-packet from the kernel
		// (tun.ErrTooManySegments and the like): count it and go on, but
		// never spin on a device that keeps failing.
		if t.readErrors.Add(1)%1000 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// runVirtio is Run for a device with virtio-net headers: it reads the
// device itself, so that a TCP super-packet reaches the stack whole
// (wireguard-go's Read would cut it into segments).
func (t *TUN) runVirtio(f *os.File, sink WholeSink) error {
	buf := make([]byte, virtioNetHdrLen+65535)
	scratch := make([]byte, 65535)
	deliver := sink.DeliverWhole // nothing is held back: no Flush needed
	for {
		n, err := f.Read(buf)
		if err == nil {
			if err = receiveVirtio(buf[:n], scratch, deliver); err == nil {
				continue
			}
		}
		if errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADFD) || t.isClosed() {
			return nil
		}
		// A read the kernel should not produce (errVirtio), or a failing
		// device: count it and go on, but never spin on a device that
		// keeps failing.
		if t.readErrors.Add(1)%1000 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// tunHint says what a failure to create a TUN device for lack of rights
// needs: write access to /dev/net/tun (EACCES: udev makes it 0666, but a
// host without udev may leave it 0600, root's alone), or CAP_NET_ADMIN
// (EPERM).
func tunHint(err error) string {
	switch {
	case errors.Is(err, unix.EACCES):
		return " (/dev/net/tun is not writable by this user: run as root, or make it mode 0666 as udev does, e.g. chmod 0666 /dev/net/tun)"
	case errors.Is(err, unix.EPERM):
		return " (creating a TUN device needs CAP_NET_ADMIN: run as root, or grant it, as the systemd units in dist/systemd do)"
	case errors.Is(err, unix.EBUSY):
		return " (another process holds a TUN device of this name: is a ztgate gateway or agent already running here? stop it, or give this one another [tun] name)"
	}
	return ""
}

func (t *TUN) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// ReadErrors returns how many reads from the device failed.
func (t *TUN) ReadErrors() uint64 { return t.readErrors.Load() }

// AddAddress assigns an address to the interface (the agent's inner
// address, so that its own traffic to the pool leaves from it).
func (t *TUN) AddAddress(p netip.Prefix) error {
	l, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("netstack: find %s: %w", t.name, err)
	}
	if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil {
		return fmt.Errorf("netstack: address %s on %s: %w", p, t.name, err)
	}
	return nil
}

// SetMTU changes the interface's MTU (never above the one it was opened
// with: its buffers are sized for that).
func (t *TUN) SetMTU(mtu int) error {
	mtu = min(mtu, t.mtu)
	l, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("netstack: find %s: %w", t.name, err)
	}
	if err := netlink.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("netstack: MTU %d on %s: %w", mtu, t.name, err)
	}
	return nil
}

// tunTxQueueLen is the device's queue of packets waiting for our reader
// (the kernel's default for a TUN device is 500, for Ethernet 1000). A
// burst that arrives while the reader is not running waits there; what
// does not fit is dropped and counted in the device's TX dropped. 2000
// absorbs 10 ms of 64-byte UDP at 200 k packets/s: on a 2-core machine
// whose sender and receiver share the cores with the gateway, 1000 lost
// 2-11 % of that rate and 500 more (docs/performance.md). A full queue
// holds 2-5 MB of small packets; TCP rarely fills it (the kernel's TCP
// small queues bound what each socket keeps queued).
const tunTxQueueLen = 2000

// Up sets the interface's queue length, sets it up and routes each prefix
// into it.
func (t *TUN) Up(routes []netip.Prefix) error {
	l, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("netstack: find %s: %w", t.name, err)
	}
	if l.Attrs().TxQLen < tunTxQueueLen {
		if err := netlink.LinkSetTxQLen(l, tunTxQueueLen); err != nil {
			return fmt.Errorf("netstack: queue length of %s: %w", t.name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("netstack: set %s up: %w", t.name, err)
	}
	return t.SetRoutes(routes)
}

// SetRoutes makes routes the prefixes routed into the device: it adds the
// new ones and removes those it added before that are not in routes. A
// prefix the host already routes elsewhere, at any metric (another device,
// a blackhole), is not taken over: that is an error naming the route,
// which stays. Replacing it, or adding ours at metric 0 beside one at a
// higher metric, would cut whatever the host reached through it, and
// Close, removing ours, would leave no route at all.
func (t *TUN) SetRoutes(routes []netip.Prefix) error {
	l, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("netstack: find %s: %w", t.name, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, p := range t.routes {
		if !slices.Contains(routes, p) {
			if err := netlink.RouteDel(linkRoute(l, p)); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("netstack: remove route %s: %w", p, err))
			}
		}
	}
	t.routes = t.routes[:0]
	for _, p := range routes {
		// A host route of p, at any metric, is in the way: ours, at
		// metric 0, would win over one at a higher metric as surely as
		// a replace would take one at the same.
		err := routedElsewhere(l, p)
		if err == nil {
			if err = netlink.RouteAdd(linkRoute(l, p)); errors.Is(err, unix.EEXIST) {
				err = nil // ours, added before: routedElsewhere found no other
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("netstack: route %s via %s: %w", p, t.name, err))
			continue
		}
		t.routes = append(t.routes, p)
	}
	return errors.Join(errs...)
}

// routedElsewhere says which route of the main table holds p, at any
// metric, when it is not l's (one SetRoutes added before is); nil when
// none does.
func routedElsewhere(l netlink.Link, p netip.Prefix) error {
	family := unix.AF_INET
	if p.Addr().Is6() {
		family = unix.AF_INET6
	}
	rs, err := netlink.RouteListFiltered(family, &netlink.Route{Dst: prefixToIPNet(p), Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list the routes of %s: %w", p, err)
	}
	for _, r := range rs {
		if r.LinkIndex == l.Attrs().Index {
			return nil
		}
	}
	if len(rs) > 0 {
		r := rs[0]
		if r.LinkIndex == 0 {
			kind := map[int]string{unix.RTN_BLACKHOLE: "blackhole", unix.RTN_UNREACHABLE: "unreachable", unix.RTN_PROHIBIT: "prohibit"}[r.Type]
			if kind == "" {
				kind = fmt.Sprintf("type %d", r.Type)
			}
			return fmt.Errorf("the host has a %s route for it already; not taking it over", kind)
		}
		dev := fmt.Sprintf("#%d", r.LinkIndex)
		if o, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			dev = o.Attrs().Name
		}
		return fmt.Errorf("the host routes it via %s already; not taking it over", dev)
	}
	return nil
}

// Shadowed says, for each of routes whose packets the host sends
// elsewhere than into the device from another table than the main one,
// where they go instead and why: a policy rule that looks up another table
// first (Tailscale's table 52, wg-quick's 51820 for a peer's 10.0.0.0/8),
// or an address of the host (the local table). Each route is probed at its
// first host address. A route of the main table that leads elsewhere is
// SetRoutes's to refuse, with its own error. Nil when every route leads
// into the device.
func (t *TUN) Shadowed(routes []netip.Prefix) ([]string, error) {
	l, err := netlink.LinkByName(t.name)
	if err != nil {
		return nil, fmt.Errorf("netstack: find %s: %w", t.name, err)
	}
	var out []string
	for _, p := range routes {
		probe := p.Masked().Addr()
		if p.Bits() < probe.BitLen()-1 {
			probe = probe.Next()
		}
		rs, err := netlink.RouteGet(probe.AsSlice())
		if err != nil {
			return out, fmt.Errorf("netstack: route of %s: %w", probe, err)
		}
		if len(rs) == 0 || rs[0].LinkIndex == l.Attrs().Index || rs[0].Table == unix.RT_TABLE_MAIN {
			continue
		}
		r := rs[0]
		if r.Type == unix.RTN_LOCAL {
			out = append(out, fmt.Sprintf("%s (%s) is an address of this host: give the pool addresses the host does not have", p, probe))
			continue
		}
		dev := fmt.Sprintf("#%d", r.LinkIndex)
		if o, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			dev = o.Attrs().Name
		}
		out = append(out, fmt.Sprintf("%s (%s) goes via %s (table %d): an ip rule sends them to that table before the main one "+
			"(Tailscale, wg-quick): keep the pool out of it, or use another pool", p, probe, dev, r.Table))
	}
	return out, nil
}

// WarnShadowed logs a warning for each of routes the host sends elsewhere
// (Shadowed): the device is up and routed, and yet no packet to those
// VIPs reaches it.
func (t *TUN) WarnShadowed(log *slog.Logger, routes []netip.Prefix) {
	shadowed, err := t.Shadowed(routes)
	if err != nil {
		log.Warn("cannot check where the host sends packets to the VIP pool", "err", err)
	}
	for _, s := range shadowed {
		log.Warn("packets to the VIP pool do not reach the TUN device: "+s, "device", t.name)
	}
}

// Overlapping says, for each network of the host (an address and its
// prefix on a link other than the device) that shares addresses with one
// of pools, which and where: a laptop that joins a network numbered like
// the VIP pool cannot reach both that network's hosts and the VIPs of the
// same addresses. Single host addresses are Shadowed's to report.
func (t *TUN) Overlapping(pools []netip.Prefix) ([]string, error) {
	l, err := netlink.LinkByName(t.name)
	if err != nil {
		return nil, fmt.Errorf("netstack: find %s: %w", t.name, err)
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netstack: %w", err)
	}
	defer h.Close()
	return overlapping(h, l.Attrs().Index, pools)
}

// overlapping is Overlapping through h, skipping the link of index skip.
func overlapping(h *netlink.Handle, skip int, pools []netip.Prefix) ([]string, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("netstack: list the host's addresses: %w", err)
	}
	var out []string
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.LinkIndex == skip {
			continue
		}
		ones, _ := a.Mask.Size()
		network := netip.PrefixFrom(ip.Unmap(), ones)
		if network.Bits() == network.Addr().BitLen() {
			continue
		}
		for _, p := range pools {
			if !p.Overlaps(network) {
				continue
			}
			dev := fmt.Sprintf("#%d", a.LinkIndex)
			if o, err := h.LinkByIndex(a.LinkIndex); err == nil {
				dev = o.Attrs().Name
			}
			out = append(out, fmt.Sprintf("the host's network %s on %s (its address %s) overlaps the VIP pool %s: "+
				"the addresses they share reach either that network's hosts or the VIPs, not both; "+
				"use a pool no network of the host holds", network.Masked(), dev, ip.Unmap(), p))
		}
	}
	return out, nil
}

// WarnOverlapping logs a warning for each overlap of a network of the
// host with pools (Overlapping) that was not there when it last looked:
// called at start and whenever the host's network or the pools change, it
// says so once, when a laptop joins such a network, and again if it comes
// back after it went.
func (t *TUN) WarnOverlapping(log *slog.Logger, pools []netip.Prefix) {
	found, err := t.Overlapping(pools)
	if err != nil {
		log.Warn("cannot check the host's networks against the VIP pool", "err", err)
		return
	}
	t.overlapMu.Lock()
	defer t.overlapMu.Unlock()
	now := make(map[string]bool, len(found))
	for _, o := range found {
		now[o] = true
		if !t.overlaps[o] {
			log.Warn(o, "device", t.name)
		}
	}
	t.overlaps = now
}

func linkRoute(l netlink.Link, p netip.Prefix) *netlink.Route {
	return &netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixToIPNet(p), Scope: netlink.SCOPE_LINK}
}

// Close removes the routes it added and the device.
func (t *TUN) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	routes := t.routes
	t.mu.Unlock()
	var errs []error
	if l, err := netlink.LinkByName(t.name); err == nil {
		for _, p := range routes {
			if err := netlink.RouteDel(linkRoute(l, p)); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("netstack: remove route %s: %w", p, err))
			}
		}
	}
	if err := t.dev.Close(); err != nil {
		errs = append(errs, fmt.Errorf("netstack: close %s: %w", t.name, err))
	}
	t.events.Wait()
	return errors.Join(errs...)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// inInitialNetns reports whether the process is in the network namespace
// of PID 1 (when that cannot be read, it assumes so).
func inInitialNetns() bool {
	self, err1 := os.Readlink("/proc/self/ns/net")
	init, err2 := os.Readlink("/proc/1/ns/net")
	return err1 != nil || err2 != nil || self == init
}
