package agent

import (
	"net/netip"
	"testing"

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
