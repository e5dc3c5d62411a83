package gateway

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// This file holds TestRelayReloadRandom's LAN side: clients on the
// gateway's own TUN (a client stack as its device) that reach the services
// at the VIPs the relay assigned, IPv4 and IPv6 (the relay's pool and
// pool6: configuration.md, relay.pool6), and ask the gateway's DNS at
// 10.100.0.1. Each LAN client has an address in one of the tenants'
// source prefixes (rrPrefixes) and its IPv6 twin (rrPrefixes6), or in no
// tenant's. Checked after each step against the model:
//   - DNS from each source: its tenant's view (configuration.md, dns.listen
//     and [[tenant]]): A and AAAA of its tenant's services with the VIPs
//     the relay assigned (none for a service it rejected, no AAAA without
//     a pool6), the PTR of any assigned VIP to its service when the tenant
//     may reach it; nothing at all for a source in no tenant (dropped,
//     `unknown_source`);
//   - new UDP and TCP flows to either VIP: a backend of the service when
//     the tenant is admitted, the port mapped and the service healthy; else
//     refused for the first reason of classify (counted by reason; a TCP
//     one gets RST); a source in no tenant, or a VIP outside the relay's
//     pools now (it moved them), dropped and counted;
//   - flows kept from earlier steps (UDP, and TCP connections) keep their
//     backend across reloads, reassignments (a VIP that moved inside the
//     pool too) and relay session drops, while their service, backend and
//     source's tenant stay (configuration.md, [[service]] and [[tenant]]);
//     a source that falls out of every tenant has its flows ended (a TCP
//     one reset) and its packets dropped; so has a flow to a VIP the
//     relay's pools no longer hold (vip_unrouted; its packets are dropped
//     as `not_routed`);
//   - ztgate_packets_dropped_total{unknown_source,not_routed} and
//     ztgate_flows_refused_total{tcp,udp} grow by what the step's LAN
//     probes make, exactly.

// rlLANSources are the LAN clients' IPv4 addresses: one in each prefix of
// rrPrefixes (index i) and one in none (the last).
var rlLANSources = []netip.Addr{
	netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("198.51.100.140"),
	netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("203.0.113.140"),
	netip.MustParseAddr("192.0.2.10"),
}

// rlLANSources6 are their IPv6 twins, in rrPrefixes6 (and one in none).
var rlLANSources6 = []netip.Addr{
	netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:2::10"),
	netip.MustParseAddr("2001:db8:3::10"), netip.MustParseAddr("2001:db8:4::10"),
	netip.MustParseAddr("2001:db8:99::10"),
}

// newRLLAN is the LAN's client stack: the gateway's TUN device.
func newRLLAN(t *testing.T) *rlLANTap {
	c, err := netstacktest.NewClient(1420, append(slices.Clone(rlLANSources), rlLANSources6...)...)
	if err != nil {
		t.Fatal(err)
	}
	return &rlLANTap{Client: c}
}

// rlLANFlow is a flow a LAN client keeps open across steps.
type rlLANFlow struct {
	proto    string
	src, dst netip.AddrPort
	service  string
	backend  string // addr:port of the backend that answered
	conn     net.Conn
}

// lanTenant is the tenant of a LAN source under the running
// configuration, "" for none.
func (r *rlRun) lanTenant(src netip.Addr) string {
	i := slices.Index(rlLANSources, src)
	if i < 0 {
		i = slices.Index(rlLANSources6, src)
	}
	if i < 0 || i >= len(rrPrefixes) {
		return ""
	}
	return r.cur.tenantOf(i)
}

// inPools reports whether addr is in the relay's pool or pool6 now.
func (r *rlRun) inPools(addr netip.Addr) bool {
	return r.pool.Contains(addr) || r.pool6.IsValid() && r.pool6.Contains(addr)
}

// serviceAt is the service the relay assigned addr to now (a VIP or a
// VIP6), "" for none.
func (r *rlRun) serviceAt(addr netip.Addr) string {
	if !addr.IsValid() {
		return ""
	}
	for _, si := range r.view {
		if r.vipOf(si.Name) == addr || r.vip6Of(si.Name) == addr {
			return si.Name
		}
	}
	return ""
}

// lanDecide is what becomes of a new flow of proto from a LAN source to
// dst: "" and the backends that may answer it, or "drop <reason>" (the
// link drops it), or the reason it is refused (classify).
func (r *rlRun) lanDecide(proto string, src netip.Addr, dst netip.AddrPort) (string, []string) {
	tenant := r.lanTenant(src)
	switch {
	case tenant == "":
		return "drop unknown_source", nil
	case !r.inPools(dst.Addr()):
		return "drop not_routed", nil
	}
	name := r.serviceAt(dst.Addr())
	if name == "" {
		return refuseNoService, nil
	}
	s := r.cur.service(name)
	if !s.allows(tenant) {
		return refuseTenant, nil
	}
	sp := s.port(proto, dst.Port())
	if sp == nil {
		return refusePort, nil
	}
	if !s.passes() {
		return refuseNoBackend, nil
	}
	var backends []string
	for _, i := range s.backends {
		backends = append(backends, netip.AddrPortFrom(r.w.addrs[i], r.w.port(proto, sp.target)).String())
	}
	return "", backends
}

// lanCounters are the counters the LAN probes move.
func (r *rlRun) lanCounters() map[string]float64 {
	m := r.gw.m
	out := map[string]float64{
		"drop unknown_source": testutil.ToFloat64(m.droppedBy[netstack.DropUnknownSource]),
		"drop not_routed":     testutil.ToFloat64(m.droppedBy[netstack.DropNotRouted]),
	}
	for _, p := range []string{"tcp", "udp"} {
		for _, reason := range refusalReasons {
			out[p+" "+reason] = testutil.ToFloat64(m.refusedBy[refusal{p, reason}])
		}
	}
	return out
}

// rlLANProbe is one LAN probe: a datagram, a DNS query, a TCP connection
// or a line on a kept one, and what must come of it.
type rlLANProbe struct {
	what  string
	proto string // "udp", "tcp", "dns"
	src   netip.AddrPort
	dst   netip.AddrPort
	tok   string
	// backends: those that may answer (nil: none may); dns: the answer a
	// DNS query must get ("": none, "silence": no reply at all); refused:
	// a TCP connection must get RST; fails: a line on a kept TCP
	// connection must fail (it was reset).
	backends []string
	dns      string
	refused  bool
	fails    bool
	unrouted bool // a kept flow whose VIP the relay's pools no longer hold
	kept     *rlLANFlow
	conn     net.Conn
	got      string
	done     chan struct{}
	answered bool
}

// lan runs the step's LAN probes and checks them against the model.
func (r *rlRun) lan() {
	t0 := time.Now()
	defer func() { r.lanTime += time.Since(t0) }()
	// The kept flows the model can no longer tell about (their service,
	// backend or port went, or their idle timeout may have ended them)
	// are given up, before the counters are read (a TCP one with a RST to
	// its VIP, in the pools: those of a VIP outside them, or of a source
	// in no tenant, are probed below, their flows ended).
	var keep []*rlLANFlow
	for _, f := range r.lanKept {
		if r.lanTenant(f.src.Addr()) == "" || !r.inPools(f.dst.Addr()) || r.lanKeepable(f) {
			keep = append(keep, f)
			continue
		}
		r.lanClose(f)
	}
	r.lanKept = keep
	before := r.lanCounters()
	want := map[string]float64{}
	var probes []*rlLANProbe
	start := func(p *rlLANProbe, run func(p *rlLANProbe)) {
		p.done = make(chan struct{})
		probes = append(probes, p)
		if p.conn == nil && p.proto != "tcp" {
			c, err := r.lanClient.DialUDPFrom(p.src, p.dst)
			if err != nil {
				r.fatalf("LAN %s: %v", p.what, err)
			}
			p.conn = c
		}
		go func() {
			defer close(p.done)
			run(p)
		}()
	}
	// The kept flows.
	for _, f := range slices.Clone(r.lanKept) {
		tenant := r.lanTenant(f.src.Addr())
		p := &rlLANProbe{what: fmt.Sprintf("%s flow kept from %v to %v (%s)", f.proto, f.src, f.dst, f.service), proto: f.proto,
			src: f.src, dst: f.dst, tok: r.token(), kept: f, conn: f.conn}
		switch {
		case tenant == "" && f.proto == "udp":
			want["drop unknown_source"]++ // its flow ended with the source
		case tenant == "":
			p.fails = true // reset when its source fell out (source_removed)
		case !r.inPools(f.dst.Addr()) && f.proto == "udp":
			// Its flow ended with the pool (vip_unrouted); the datagram
			// is dropped.
			want["drop not_routed"]++
			p.unrouted = true
		case !r.inPools(f.dst.Addr()):
			p.fails, p.unrouted = true, true // reset when the pool moved (vip_unrouted)
		default:
			p.backends = []string{f.backend}
		}
		if f.proto == "udp" {
			start(p, r.lanUDP)
		} else {
			start(p, r.lanTCPLine)
		}
	}
	// New flows and DNS queries from a few sources.
	for _, i := range r.rng.Perm(len(rlLANSources))[:2+r.rng.IntN(2)] {
		src4, src6 := rlLANSources[i], rlLANSources6[i]
		tenant := r.lanTenant(src4)
		// DNS over IPv4 (the gateway's address is 10.100.0.1).
		name := r.gen.pick(rrNames)
		p := &rlLANProbe{proto: "dns", src: netip.AddrPortFrom(src4, r.srcPort()), dst: netip.AddrPortFrom(r.gw.cfg.TUN.GatewayAddr(), 53)}
		sees := func(name string) bool {
			s := r.cur.service(name)
			return tenant != "" && s != nil && s.allows(tenant)
		}
		// A name the view lacks is NXDOMAIN (getting-started.md); a name
		// it has without a record of the type (no VIP6, or no VIP: the
		// relay rejected it) is NODATA; a PTR outside the reverse zones of
		// the relay's pools is REFUSED.
		nx, nodata, refused := "rcode 3, no answer", "rcode 0, no answer", "rcode 5, no answer"
		switch x := r.rng.IntN(3); x {
		case 0:
			p.what, p.tok, p.dns = "DNS A "+name, name+".ztna.internal/1", nx
			switch vip := r.vipOf(name); {
			case sees(name) && vip.IsValid():
				p.dns = vip.String()
			case sees(name):
				p.dns = nodata // rejected by the relay: a name without address
			}
		case 1:
			p.what, p.tok, p.dns = "DNS AAAA "+name, name+".ztna.internal/28", nx
			switch vip6 := r.vip6Of(name); {
			case sees(name) && vip6.IsValid():
				p.dns = vip6.String()
			case sees(name):
				p.dns = nodata
			}
		default:
			addr := r.lanTarget(r.rng.IntN(2) == 0)
			if !addr.IsValid() {
				addr = r.pool.Addr().Next().Next() // no VIP of that family: one no service has
			}
			p.what, p.tok, p.dns = "DNS PTR "+addr.String(), rlReverse(addr)+"/12", nx
			switch n := r.serviceAt(addr); {
			case !r.inPools(addr):
				p.dns = refused
			case n != "" && sees(n):
				p.dns = n + ".ztna.internal."
			}
		}
		if tenant == "" {
			p.dns = "silence"
			want["drop unknown_source"]++
		}
		start(p, r.lanDNS)
		// UDP and TCP to either VIP.
		for _, v6 := range []bool{false, true} {
			src := src4
			if v6 {
				src = src6
			}
			dst := r.lanTarget(v6)
			if !dst.IsValid() {
				continue
			}
			name := r.serviceAt(dst)
			s := r.cur.service(name)
			if name == "" {
				s = nil
			}
			for _, proto := range []string{"udp", "tcp"} {
				dport := r.pickPort(s, proto)
				to := netip.AddrPortFrom(dst, dport)
				reason, backends := r.lanDecide(proto, src, to)
				p := &rlLANProbe{what: fmt.Sprintf("%s from %v to %v (%s)", proto, src, to, name), proto: proto,
					src: netip.AddrPortFrom(src, r.srcPort()), dst: to, tok: r.token(), backends: backends}
				switch {
				case reason == "":
				case strings.HasPrefix(reason, "drop "):
					if proto == "tcp" {
						continue // a dropped SYN would cost the dial's timeout
					}
					want[reason]++
				default:
					want[proto+" "+reason]++
					p.refused = proto == "tcp"
				}
				if proto == "udp" {
					start(p, r.lanUDP)
				} else {
					start(p, r.lanTCP)
				}
			}
		}
	}
	// Wait for the probes that must be answered (or refused), and until
	// the counters are where the model puts them (the packets that must
	// get no answer have been seen), then a moment more for anything that
	// must not come; then stop the others' reads.
	for _, p := range probes {
		if p.answers() {
			<-p.done
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !r.lanCountersAt(before, want) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	for _, p := range probes {
		if !p.answers() {
			p.conn.SetReadDeadline(time.Now())
		}
	}
	for _, p := range probes {
		<-p.done
	}
	r.lanCheck(probes, before, want)
}

// lanCountersAt reports whether the LAN counters moved from before by
// want.
func (r *rlRun) lanCountersAt(before, want map[string]float64) bool {
	now := r.lanCounters()
	for k, v := range now {
		if v-before[k] != want[k] {
			return false
		}
	}
	return true
}

// lanTarget is a VIP (of the family v6 asks) to send to: mostly one the
// relay assigned a service now, at times one it assigned before (moved,
// rejected, or of a pool it left).
func (r *rlRun) lanTarget(v6 bool) netip.Addr {
	var now []netip.Addr
	for _, n := range rrNames {
		a := r.vipOf(n)
		if v6 {
			a = r.vip6Of(n)
		}
		if a.IsValid() {
			now = append(now, a)
		}
	}
	var old []netip.Addr
	for _, a := range r.lanOld {
		if a.Is6() == v6 && r.serviceAt(a) == "" {
			old = append(old, a)
		}
	}
	if len(now) > 0 && (len(old) == 0 || r.rng.IntN(4) != 0) {
		return now[r.rng.IntN(len(now))]
	}
	if len(old) > 0 {
		return old[r.rng.IntN(len(old))]
	}
	return netip.Addr{}
}

// lanKeepable reports whether the model can tell where a line on kept
// flow f goes: its service, its backend and the port's target are those
// of the running configuration.
func (r *rlRun) lanKeepable(f *rlLANFlow) bool {
	s := r.cur.service(f.service)
	if s == nil {
		return false
	}
	sp := s.port(f.proto, f.dst.Port())
	if sp == nil {
		return false
	}
	for _, i := range s.backends {
		if netip.AddrPortFrom(r.w.addrs[i], r.w.port(f.proto, sp.target)).String() == f.backend {
			return true
		}
	}
	return false
}

// lanForget closes a kept flow and forgets it.
func (r *rlRun) lanForget(f *rlLANFlow) {
	r.lanClose(f)
	r.lanKept = slices.DeleteFunc(r.lanKept, func(k *rlLANFlow) bool { return k == f })
}

// lanClose closes f's socket; a TCP one with a RST, so that no FIN is
// retransmitted into the next steps.
func (r *rlRun) lanClose(f *rlLANFlow) {
	rlReset(f.conn)
}

// lanUDP sends the probe's token on a new UDP flow, or its kept one, and
// reads what comes back.
func (r *rlRun) lanUDP(p *rlLANProbe) {
	p.conn.SetDeadline(time.Now().Add(5 * time.Second))
	defer p.conn.SetDeadline(time.Time{})
	if _, err := p.conn.Write([]byte(p.tok)); err != nil {
		p.got = "write: " + err.Error()
		return
	}
	buf := make([]byte, 2048)
	for {
		n, err := p.conn.Read(buf)
		if err != nil {
			return
		}
		if backend, tok, _ := strings.Cut(string(buf[:n]), "|"); tok == p.tok {
			p.got, p.answered = backend, true
			return
		}
	}
}

// answers reports whether something must come of p: an answer, a RST,
// a failure. Those that must get nothing are stopped by lan.
func (p *rlLANProbe) answers() bool {
	return p.backends != nil || p.proto == "dns" && p.dns != "silence" || p.fails || p.refused
}

// lanDNS asks the gateway's DNS the probe's question (tok: name/type).
func (r *rlRun) lanDNS(p *rlLANProbe) {
	c := p.conn
	defer c.Close()
	name, typ, _ := strings.Cut(p.tok, "/")
	var qtype uint16
	fmt.Sscan(typ, &qtype)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(dnsQueryFor(p.src.Port(), name, qtype)); err != nil {
		p.got = "write: " + err.Error()
		return
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	p.got, p.answered = rlDNSParse(buf[:n]), true
}

// lanTCP opens a new TCP connection and sends the token on it.
func (r *rlRun) lanTCP(p *rlLANProbe) {
	p.conn, p.got = rlDialLine(r.lanClient.Client, p.src, p.dst, p.tok)
	if p.conn == nil {
		return
	}
	p.answered = !strings.HasPrefix(p.got, "write: ") && !strings.HasPrefix(p.got, "read: ") && !strings.HasPrefix(p.got, "a stray")
}

// lanTCPLine sends the token on a kept TCP connection.
func (r *rlRun) lanTCPLine(p *rlLANProbe) {
	if p.fails {
		p.conn.SetDeadline(time.Now().Add(3 * time.Second))
		_, err := fmt.Fprintf(p.conn, "%s\n", p.tok)
		if err == nil {
			_, err = p.conn.Read(make([]byte, 1))
		}
		p.conn.SetDeadline(time.Time{})
		if err != nil {
			p.got = "failed: " + err.Error()
		} else {
			p.got, p.answered = "answered", true
		}
		return
	}
	p.got = rlTCPLine(p.conn, p.tok)
	p.answered = !strings.HasPrefix(p.got, "write: ") && !strings.HasPrefix(p.got, "read: ") && !strings.HasPrefix(p.got, "a stray")
}

// lanCheck checks the probes and the counters, and keeps some flows that
// reached a backend for the next steps.
func (r *rlRun) lanCheck(probes []*rlLANProbe, before, want map[string]float64) {
	for _, p := range probes {
		where := "LAN " + p.what
		switch {
		case p.proto == "dns":
			wantS := p.dns
			switch {
			case p.dns == "silence" && p.answered:
				r.fatalf("%s from %v, a source in no tenant: answered %q, want nothing", where, p.src, p.got)
			case p.dns == "silence":
			case !p.answered:
				r.fatalf("%s from %v (tenant %q): no answer, want %q", where, p.src, r.lanTenant(p.src.Addr()), wantS)
			case p.got != p.dns:
				r.fatalf("%s from %v (tenant %q): %q, want %q", where, p.src, r.lanTenant(p.src.Addr()), p.got, p.dns)
			}
		case p.kept != nil && (r.lanTenant(p.src.Addr()) == "" || p.unrouted) && p.proto == "udp":
			if p.answered {
				r.fatalf("%s: the source is in no tenant or the VIP in no pool now, yet its flow carried a datagram (%s)", where, p.got)
			}
			if n := len(r.gw.flows.list(func(f *flow) bool { return f.client == p.src })); n != 0 {
				r.fatalf("%s: the source is in no tenant now, yet the gateway holds %d flows of it", where, n)
			}
		case p.fails:
			if p.answered {
				r.fatalf("%s: the source is in no tenant or the VIP in no pool now, yet its connection carried a line", where)
			}
			if n := len(r.gw.flows.list(func(f *flow) bool { return f.client == p.src })); n != 0 {
				r.fatalf("%s: the source is in no tenant or the VIP in no pool now, yet the gateway holds %d flows of it", where, n)
			}
		case p.refused:
			if p.got != "refused" {
				r.fatalf("%s: %s, want it refused (RST)", where, p.got)
			}
		case p.backends == nil:
			if p.answered || p.proto == "tcp" && p.got != "refused" {
				r.fatalf("%s: %q, want no answer", where, p.got)
			}
		case !slices.Contains(p.backends, p.got):
			r.fatalf("%s: %q, want an answer from one of %v", where, p.got, p.backends)
		}
		key := "lan: " + p.proto
		if p.kept != nil {
			key += " kept"
		}
		if p.answered {
			r.stats[key+" answered"]++
		} else {
			r.stats[key+" not answered"]++
		}
	}
	now := r.lanCounters()
	var bad []string
	for _, k := range slices.Sorted(maps.Keys(now)) {
		if d := now[k] - before[k]; d != want[k] {
			bad = append(bad, fmt.Sprintf("%s: %v, want %v", k, d, want[k]))
		}
	}
	if len(bad) > 0 {
		var ps []string
		for _, p := range probes {
			ps = append(ps, fmt.Sprintf("\t%s: %q", p.what, p.got))
		}
		r.fatalf("the LAN probes moved the counters by\n\t%s\nprobes:\n%s\nthe LAN's last packets outside the pools:\n\t%s", strings.Join(bad, "\n\t"),
			strings.Join(ps, "\n"), strings.Join(r.lanClient.outside(r.inPools), "\n\t"))
	}
	// Kept flows that failed as they must are done; new ones that
	// reached a backend are kept (a few), unless an idle timeout may end
	// them before the next step, or closed.
	for _, p := range probes {
		switch {
		case p.kept != nil && (p.fails || p.backends == nil):
			r.lanForget(p.kept)
		case p.kept != nil:
		case p.proto == "dns":
		case p.conn == nil:
		case p.backends != nil && len(r.lanKept) < 6 && r.lanIdleOK(p):
			r.lanKept = append(r.lanKept, &rlLANFlow{proto: p.proto, src: p.src, dst: p.dst, service: r.serviceAt(p.dst.Addr()),
				backend: p.got, conn: p.conn})
			r.stats["lan: flows kept"]++
		default:
			r.lanClose(&rlLANFlow{conn: p.conn})
		}
	}
}

// lanIdleOK: the flow's idle timeout outlasts a step.
func (r *rlRun) lanIdleOK(p *rlLANProbe) bool {
	s := r.cur.service(r.serviceAt(p.dst.Addr()))
	return s != nil && (p.proto == "udp" && s.udpIdle != "300ms" || p.proto == "tcp" && s.tcpIdle != "300ms")
}

// lanNoteVIPs remembers the VIPs the relay assigned, to send to them once
// they moved.
func (r *rlRun) lanNoteVIPs() {
	for _, m := range []map[string]netip.Addr{r.vips, r.vips6} {
		for _, a := range m {
			if a.IsValid() && !slices.Contains(r.lanOld, a) {
				r.lanOld = append(r.lanOld, a)
			}
		}
	}
	slices.SortFunc(r.lanOld, netip.Addr.Compare)
}

// rlLANTap is the LAN device with a record of the last packets its
// clients sent, to name the one a counter did not expect.
type rlLANTap struct {
	*netstacktest.Client
	mu   sync.Mutex
	last []string
}

func (d *rlLANTap) Run(sink netstack.PacketSink) error {
	return d.Client.Run(&rlTapSink{d: d, sink: sink})
}

type rlTapSink struct {
	d    *rlLANTap
	sink netstack.PacketSink
}

func (s *rlTapSink) Deliver(pkt []byte) {
	s.d.note(pkt)
	s.sink.Deliver(pkt)
}

func (s *rlTapSink) Flush() {
	if f, ok := s.sink.(netstack.Flusher); ok {
		f.Flush()
	}
}

func (d *rlLANTap) note(pkt []byte) {
	var desc string
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		ihl := int(pkt[0]&0xf) * 4
		desc = fmt.Sprintf("%v → %v proto %d", netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20])), pkt[9])
		if pkt[9] == 6 && len(pkt) >= ihl+14 {
			desc += fmt.Sprintf(" ports %d→%d flags %#x", binary.BigEndian.Uint16(pkt[ihl:]), binary.BigEndian.Uint16(pkt[ihl+2:]), pkt[ihl+13])
		}
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		desc = fmt.Sprintf("%v → %v next %d", netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40])), pkt[6])
		if pkt[6] == 6 && len(pkt) >= 54 {
			desc += fmt.Sprintf(" ports %d→%d flags %#x", binary.BigEndian.Uint16(pkt[40:]), binary.BigEndian.Uint16(pkt[42:]), pkt[53])
		}
		if pkt[6] == 58 && len(pkt) >= 41 {
			desc += fmt.Sprintf(" icmpv6 type %d", pkt[40])
		}
	default:
		desc = fmt.Sprintf("%d bytes", len(pkt))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.last = append(d.last, time.Now().Format("15:04:05.000")+" "+desc)
	if len(d.last) > 400 {
		d.last = slices.Delete(d.last, 0, 100)
	}
}

// outside lists the recorded packets to addresses outside the pools.
func (d *rlLANTap) outside(in func(netip.Addr) bool) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, l := range d.last {
		f := strings.Fields(l)
		if len(f) > 3 {
			if a, err := netip.ParseAddr(f[3]); err == nil && !in(a) && a != netip.MustParseAddr("10.100.0.1") {
				out = append(out, l)
			}
		}
	}
	return out
}
