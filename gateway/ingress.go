package gateway

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// Tunnel sessions reach the netstack through one link. Every ingress — a
// relay tag, or an agent connected directly — is its own link in all but
// name: its packets get a synthetic source address, unique to it, before
// they enter the netstack, and replies to that address go back to it and
// only it, with the agent's own address put back. Two agents using the same
// inner address and port never meet inside the stack.
//
// The synthetic addresses are link-local (169.254.0.0/16): they do not
// come from a LAN through a router, and when a LAN packet carries one
// anyway (spoofed, or a tenant whose sources cover 169.254.0.0/16) the LAN
// link drops it as an unknown source, so it cannot pose as an agent.
var synthPrefix = netip.MustParsePrefix("169.254.0.0/16")

// ingress is one tunnel ingress: a relay tag or a direct agent session.
type ingress struct {
	synth netip.Addr // its source address inside the netstack
	// inner is the agent's address; packets from any other are dropped.
	// Set before the ingress is added, except for a ztna-v1 direct
	// session's, which its first routed packet pins (pinInner) while the
	// tunnel link's writer may read it: hence atomic. nil: not pinned yet.
	inner   atomic.Pointer[netip.Addr]
	peer    peer
	service string // a relay tag's one service; "" for a direct session
	// services are the only services its DNS names (stackDirectory): a
	// relay tag's one, or those a direct session's identity has rights
	// for; nil: every service of its tenant.
	services []string
	// out sends its replies from a goroutine of its own (tunnel.Outbox),
	// so that the tunnel link's one writer never waits for a session's
	// QUIC send queue: a direct session's own outbox, or, for a relay tag
	// (tagged), the relay session's, which every tag of that session
	// shares, its replies framed with tag.
	out    *tunnel.Outbox
	tag    uint32
	tagged bool
	closed atomic.Bool
}

// innerAddr returns the agent's address; the zero Addr until a ztna-v1
// direct session's first packet pins it.
func (in *ingress) innerAddr() netip.Addr {
	if a := in.inner.Load(); a != nil {
		return *a
	}
	return netip.Addr{}
}

// pinInner sets the agent's address, once.
func (in *ingress) pinInner(a netip.Addr) { in.inner.CompareAndSwap(nil, &a) }

// ingressTable maps synthetic addresses to ingresses.
type ingressTable struct {
	mu      sync.RWMutex
	bySynth map[netip.Addr]*ingress
	next    uint32           // last allocated host number
	open    prometheus.Gauge // len(bySynth)
	// tenants is told of every ingress added and removed, by tenant (the
	// gateway's tenantPresence); nil: no one.
	tenants ingressTenants
}

// ingressTenants counts the ingresses of each tenant.
type ingressTenants interface {
	ingressOpened(tenant string)
	ingressClosed(tenant string)
}

// newIngressTable returns an empty table that keeps open at its size and
// tells tenants (nil: no one) of the ingresses added and removed.
func newIngressTable(open prometheus.Gauge, tenants ingressTenants) *ingressTable {
	return &ingressTable{bySynth: make(map[netip.Addr]*ingress), open: open, tenants: tenants}
}

var errIngressFull = errors.New("no synthetic address left for a new tunnel ingress")

// add gives in a synthetic address and registers it. Its tenant is
// counted before: a remove, which follows the add, is counted after.
func (t *ingressTable) add(in *ingress) error {
	if t.tenants != nil {
		t.tenants.ingressOpened(in.peer.tenant)
	}
	if t.insert(in) {
		return nil
	}
	if t.tenants != nil {
		t.tenants.ingressClosed(in.peer.tenant)
	}
	return errIngressFull
}

func (t *ingressTable) insert(in *ingress) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	const hosts = 1<<16 - 2
	for range hosts {
		t.next = t.next%hosts + 1 // 1 .. 65534
		a := netip.AddrFrom4([4]byte{169, 254, byte(t.next >> 8), byte(t.next)})
		if _, used := t.bySynth[a]; !used {
			in.synth = a
			t.bySynth[a] = in
			t.open.Inc()
			return true
		}
	}
	return false
}

// remove unregisters in; its synthetic address may be reused.
func (t *ingressTable) remove(in *ingress) {
	t.mu.Lock()
	removed := t.bySynth[in.synth] == in
	if removed {
		delete(t.bySynth, in.synth)
		t.open.Dec()
	}
	t.mu.Unlock()
	if removed && t.tenants != nil {
		t.tenants.ingressClosed(in.peer.tenant)
	}
}

func (t *ingressTable) lookup(synth netip.Addr) *ingress {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.bySynth[synth]
}

// tunnelOutput is the Output of the netstack's tunnel link: it sends each
// packet to the ingress its destination names, with the agent's address
// put back. Every reply to a tunnel client leaves here — TCP, UDP, ICMP
// echo replies and errors, the DNS answers of the gateway's address — on
// the link's one writer goroutine, which must not wait for any one
// session: each reply is copied into its session's outbox.
//
// gVisor's TCP hands it super-packets of up to 64 KiB (WriteGSO), which it
// cuts into the segments gVisor would have sent one by one: gVisor's send
// path then runs once per super-packet instead of once per segment, which
// on a download was a quarter of the gateway's CPU.
type tunnelOutput struct {
	g   *Gateway
	seg netstack.Segmenter // WriteGSO's; only the link's writer calls it
}

// WritePackets implements netstack.Output.
func (o *tunnelOutput) WritePackets(pkts [][]byte) error {
	for _, p := range pkts {
		if in := o.ingressOf(p); in != nil {
			o.send(in, p)
		}
	}
	return nil
}

// GSO implements netstack.GSOOutput: super-packets are cut here.
func (o *tunnelOutput) GSO() bool { return true }

// WriteGSO implements netstack.GSOOutput: b (no headroom: the link has
// none) is cut into its segments, each sent as its own datagram.
func (o *tunnelOutput) WriteGSO(b []byte, g netstack.GSO) error {
	in := o.ingressOf(b)
	if in == nil {
		return nil
	}
	if !o.seg.Reset(b, g) {
		o.g.m.tunnelDrop("malformed_out")
		return nil
	}
	for p := o.seg.Next(); p != nil; p = o.seg.Next() {
		o.send(in, p)
	}
	return nil
}

// ingressOf returns the ingress that the packet p goes to, with the
// agent's address put back in p; nil, the drop counted, when there is
// none.
func (o *tunnelOutput) ingressOf(p []byte) *ingress {
	_, dst, ok := netstack.IPv4Addrs(p)
	if !ok {
		o.g.m.tunnelDrop("malformed_out")
		return nil
	}
	in := o.g.ingresses.lookup(dst)
	if in == nil || in.closed.Load() {
		o.g.m.tunnelDrop("no_ingress")
		return nil
	}
	inner := in.innerAddr()
	netstack.RewriteIPv4Destination(p, inner)
	if p[9] == 1 { // an ICMP error about the agent's packet quotes it as the agent sent it
		netstack.RewriteICMPv4QuotedSource(p, in.synth, inner)
	}
	return in
}

// send copies the packet p into in's outbox.
func (o *tunnelOutput) send(in *ingress, p []byte) {
	var err error
	if in.tagged {
		err = in.out.SendTagReturn(in.tag, p)
	} else {
		err = in.out.SendCopy(p)
	}
	if err != nil {
		o.g.m.tunnelDrop(outboxDrop(err))
	}
}

// outboxDrop is the drop reason of a reply a session's outbox refused.
func outboxDrop(err error) string {
	switch {
	case errors.Is(err, tunnel.ErrOutboxBudget):
		return "outbox_budget"
	case errors.Is(err, tunnel.ErrOutboxFull):
		return "outbox_full"
	case errors.Is(err, tunnel.ErrOutboxClosed): // the ingress closed since it was looked up
		return "no_ingress"
	default:
		return "send_error"
	}
}

// deliverTunnel takes a packet from an ingress into the netstack through
// sink (the tunnel link, or a session reader's batch of it): it must come
// from the agent's address and go to a VIP of service (any service the
// tenant may reach when service is empty).
func (g *Gateway) deliverTunnel(in *ingress, service string, pkt []byte, sink netstack.PacketSink) {
	src, dst, ok := netstack.IPv4Addrs(pkt)
	if !ok {
		if len(pkt) > 0 && pkt[0]>>4 != 4 { // IPv6 or another version: the tunnel carries IPv4 only
			g.m.tunnelDrop("not_ipv4")
		} else {
			g.m.tunnelDrop("malformed")
		}
		return
	}
	inner := in.innerAddr()
	if src != inner && inner.IsValid() {
		g.m.tunnelDrop("spoofed_source")
		return
	}
	if service != "" && dst != g.cfg.TUN.GatewayAddr() {
		if s := g.tbl.Load().lookupVIP(dst); s == nil || s.spec.Name != service {
			g.m.tunnelDrop("wrong_service")
			return
		}
	}
	if !inner.IsValid() {
		// A ztna-v1 direct session's first packet that is let in pins
		// its address, as the relay pins at the first packet it routes.
		// One receiver per session: the pin cannot lose a race.
		in.pinInner(src)
		inner = src
	}
	netstack.RewriteIPv4Source(pkt, in.synth)
	if pkt[9] == 1 { // an ICMP error about a packet to the agent: its quote too, or gVisor refuses it
		netstack.RewriteICMPv4QuotedDestination(pkt, inner, in.synth)
	}
	sink.Deliver(pkt)
}
