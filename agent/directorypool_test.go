package agent

import (
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/resolver/resolvertest"
	"github.com/ztgate/ztgate/tunnel"
)

// TestDirectoryWithoutPoolKeepsPool: a directory that names no pool keeps
// the pool in force (poolProblem: "none pushed: the pool in force stays"),
// so the agent still takes its services' replies and answers their names.
func TestDirectoryWithoutPoolKeepsPool(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) {
		d := directoryOf(true)
		d.Pool = netip.Prefix{}
		s.Send(d)
	})
	a, _ := startAgent(t, p, relay.addr())
	d := a.dir.Load()
	if want := netip.MustParsePrefix("10.100.0.0/24"); d.pool != want {
		t.Errorf("pool %v after a directory without one, want %v kept", d.pool, want)
	}
	reply := udpReply(netip.AddrPortFrom(webVIP, 7), netip.AddrPortFrom(innerAddr, 40000), "pong")
	if !a.acceptDown(reply, nil) {
		t.Error("a reply from the web service's VIP is dropped as foreign")
	}
}

// TestDirectoryServiceOutsidePool: a service whose VIP lies outside the
// directory's own (accepted) pool is not answered: the agent routes only
// the pool into its TUN, so the name would send the service's traffic out
// by the host's own routes, as keepPool says of a refused pool.
func TestDirectoryServiceOutsidePool(t *testing.T) {
	p := newPKI(t)
	outside := netip.MustParseAddr("192.0.2.7")
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) {
		d := directoryOf(true)
		d.Services = append(d.Services, tunnel.DirectoryService{Name: "far", VIP: outside, Healthy: true})
		s.Send(d)
	})
	a, _ := startAgent(t, p, relay.addr())
	d := a.dir.Load()
	if e, ok := d.Lookup("far"); ok {
		t.Errorf("far is answered with %v, outside the pool %v the agent routes", e.VIP, d.pool)
	}
}

// TestDirectoryPoolMovesReverseZone: the agent's DNS answers the PTR of
// VIPs in the pool its server pushes, not only in the one it started with
// (whose reverse zone it was built for), IPv6 as well.
func TestDirectoryPoolMovesReverseZone(t *testing.T) {
	p := newPKI(t)
	vip, vip6 := netip.MustParseAddr("10.200.0.5"), netip.MustParseAddr("fd00:cd::5")
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) {
		d := directoryOf(true)
		d.Pool, d.Pool6 = netip.MustParsePrefix("10.200.0.0/16"), netip.MustParsePrefix("fd00:cd::/64")
		d.Services = []tunnel.DirectoryService{{Name: "web", VIP: vip, VIP6: vip6, Healthy: true,
			Ports: []tunnel.PortInfo{{Protocol: "tcp", Port: 80}}}}
		s.Send(d)
	})
	a, client := startAgent(t, p, relay.addr())
	c := agentDNS(t, a, client)
	for _, addr := range []netip.Addr{vip, vip6} {
		rcode, answers, err := resolvertest.Ask(c, addr.String(), "PTR")
		if err != nil {
			t.Fatalf("PTR of %v: %v", addr, err)
		}
		if len(answers) != 1 || answers[0] != "web.ztna.internal." {
			t.Errorf("PTR of %v in the pushed pool: %s %v, want web.ztna.internal.", addr, rcode, answers)
		}
	}
}

// TestDirectoryNoAAAA: a relay with an IPv6 pool pushes IPv6 VIPs too, but
// the agent routes only the IPv4 pool into its TUN and the gateways take
// only IPv4 from a tunnel: an AAAA answer would send a client that prefers
// IPv6 (happy eyeballs) out by the host's own IPv6 routes, off the tunnel.
// The agent answers the A record only.
func TestDirectoryNoAAAA(t *testing.T) {
	p := newPKI(t)
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) {
		d := directoryOf(true)
		d.Pool6 = netip.MustParsePrefix("fd00:cd::/64")
		for i := range d.Services {
			d.Services[i].VIP6 = netip.MustParseAddr("fd00:cd::5")
		}
		s.Send(d)
	})
	a, client := startAgent(t, p, relay.addr())
	c := agentDNS(t, a, client)
	if rcode, answers, err := resolvertest.Ask(c, "web.ztna.internal", "AAAA"); err != nil || len(answers) != 0 {
		t.Errorf("AAAA web: %s %v (%v), want no answer", rcode, answers, err)
	}
	if rcode, answers, err := resolvertest.Ask(c, "web.ztna.internal", "A"); err != nil || len(answers) != 1 {
		t.Errorf("A web: %s %v (%v), want its VIP", rcode, answers, err)
	}
}

// agentDNS returns a UDP socket of the agent's client to its DNS server,
// closed when the test ends.
func agentDNS(t *testing.T, a *Agent, client *netstacktest.Client) net.Conn {
	t.Helper()
	c, err := client.DialUDP(innerAddr, netip.AddrPortFrom(a.gatewayAddr(), 53))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDirectoryOutsidePoolLeavesNoReverse: a service keepPool takes out
// for its IPv4 VIP outside the pool leaves no PTR behind, of its IPv6 VIP
// either: the agent does not answer its name, so it must not name it for
// an address.
func TestDirectoryOutsidePoolLeavesNoReverse(t *testing.T) {
	outside, outside6 := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("fd00:cd::7")
	m := directoryOf(true)
	m.Pool6 = netip.MustParsePrefix("fd00:cd::/64")
	m.Services = append(m.Services, tunnel.DirectoryService{Name: "far", VIP: outside, VIP6: outside6, Healthy: true})
	d := newDirectory(m)
	d.keepPool(m.Pool)
	for _, addr := range []netip.Addr{outside, outside6} {
		if e, ok := d.Reverse(addr); ok {
			t.Errorf("PTR of %v answers %q, a service taken out for a VIP outside the pool", addr, e.Name)
		}
	}
}

// TestDirectoryServiceAtGatewayAddress: a server's pool that holds the
// agent's gateway address 10.100.0.1 other than as its first host (a
// relay's 10.0.0.0/8 reserves 10.0.0.1) may hand it to a service. The
// agent answers that address itself (DNS, ping), so it leaves the service
// out of its directory (no A, no PTR, no route), logs an error naming it
// once, not at every directory, and counts it in a gauge that falls when
// the service moves. Before, its name resolved to the agent's own DNS
// address and its traffic never left the agent.
func TestDirectoryServiceAtGatewayAddress(t *testing.T) {
	p := newPKI(t)
	gw := netip.MustParseAddr("10.100.0.1")
	push := func(clashVIP netip.Addr) *tunnel.Directory {
		d := directoryOf(true)
		d.Pool = netip.MustParsePrefix("10.0.0.0/8")
		d.Services = append(d.Services, tunnel.DirectoryService{Name: "clash", VIP: clashVIP, Healthy: true,
			Ports: []tunnel.PortInfo{{Protocol: "tcp", Port: 80}}})
		return d
	}
	relay := startServer(t, p, relayReq, func(s *tunnel.Session) { s.Send(push(gw)) })
	logs := &logBuffer{}
	a, client := runAgent(t, agentConfig(p, relay.addr()), slog.New(slog.NewTextHandler(logs, nil)))
	// runAgent saw the directory in force; the session goes on applying it
	// (its log lines, the "directory" line last), and this test applies
	// directories itself below: not while the session's is half done.
	waitFor(t, "the directory applied", func() bool { return strings.Contains(logs.String(), "msg=directory ") })
	if a.gatewayAddr() != gw {
		t.Fatalf("gateway address %v, want %v", a.gatewayAddr(), gw)
	}
	d := a.dir.Load()
	if d.pool != netip.MustParsePrefix("10.0.0.0/8") {
		t.Fatalf("pool %v, want the pushed 10.0.0.0/8", d.pool)
	}
	if e, ok := d.Lookup("clash"); ok {
		t.Errorf("clash is answered with %v, the agent's own gateway address", e.VIP)
	}
	if e, ok := d.Reverse(gw); ok {
		t.Errorf("PTR of the gateway address %v answers %q", gw, e.Name)
	}
	if _, ok := d.Lookup("web"); !ok {
		t.Error("web is left out with clash")
	}
	c := agentDNS(t, a, client)
	if rcode, answers, err := resolvertest.Ask(c, "clash.ztna.internal", "A"); err != nil || len(answers) != 0 {
		t.Errorf("A clash: %s %v (%v), want no answer", rcode, answers, err)
	}
	if n := testutil.ToFloat64(a.m.localVIPs); n != 1 {
		t.Errorf("ztgate_agent_services_excluded{reason=local_address} %v, want 1", n)
	}
	wantExcluded := []ExcludedService{{Name: "clash", VIP: gw, Reason: "local_address"}}
	if got := a.Status().Excluded; !slices.Equal(got, wantExcluded) {
		t.Errorf("Status().Excluded %+v, want %+v", got, wantExcluded)
	}
	const msg = "leaving out a service whose VIP is the agent's gateway address"
	if got := logs.String(); !strings.Contains(got, msg) || !strings.Contains(got, "service=clash vip=10.100.0.1") {
		t.Errorf("no error naming clash and its VIP in the log:\n%s", got)
	}

	server := netip.MustParseAddr("127.0.0.1")
	a.applyDirectory(push(gw), server) // the same again: no second error
	if n := strings.Count(logs.String(), msg); n != 1 {
		t.Errorf("the error is logged %d times after the same directory twice, want once", n)
	}
	moved := netip.MustParseAddr("10.100.0.2")
	a.applyDirectory(push(moved), server) // the service moved: in again, the gauge falls
	if e, ok := a.dir.Load().Lookup("clash"); !ok || e.VIP != moved {
		t.Errorf("clash at %v: answered %v (%v), want its VIP", moved, e.VIP, ok)
	}
	if n := testutil.ToFloat64(a.m.localVIPs); n != 0 {
		t.Errorf("ztgate_agent_services_excluded{reason=local_address} %v after clash moved, want 0", n)
	}
	if got := a.Status().Excluded; len(got) != 0 {
		t.Errorf("Status().Excluded %+v after clash moved, want none", got)
	}
}

// TestKeepPoolLeavesOutLocalAddresses: keepPool leaves out a service at
// any of the agent's own addresses it is given, the tun.address as well
// as the gateway address (a pool holding the tun.address is refused
// before, poolProblem; this holds if that ever changes), and lists them.
func TestKeepPoolLeavesOutLocalAddresses(t *testing.T) {
	gw, own := netip.MustParseAddr("10.100.0.1"), netip.MustParseAddr("10.100.0.9")
	m := directoryOf(true)
	m.Pool = netip.MustParsePrefix("10.0.0.0/8")
	m.Services = append(m.Services,
		tunnel.DirectoryService{Name: "a", VIP: gw, Healthy: true},
		tunnel.DirectoryService{Name: "b", VIP: own, Healthy: true})
	d := newDirectory(m)
	d.keepPool(m.Pool, gw, own)
	for name, vip := range map[string]netip.Addr{"a": gw, "b": own} {
		if _, ok := d.Lookup(name); ok {
			t.Errorf("%s at the agent's own %v is answered", name, vip)
		}
		if _, ok := d.Reverse(vip); ok {
			t.Errorf("PTR of the agent's own %v is answered", vip)
		}
		if d.atLocal[name] != vip {
			t.Errorf("atLocal[%s] = %v, want %v", name, d.atLocal[name], vip)
		}
	}
	if len(d.byName) != 2 {
		t.Errorf("%d services kept, want web and up", len(d.byName))
	}
}
