package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// agentInner is the inner address of the test ingress.
var agentInner = netip.MustParseAddr("100.64.0.1")

var (
	// udpEchoVIP is the UDP echo service of baseConfig.
	udpEchoVIP = netip.MustParseAddrPort("10.100.0.20:7")
	// agentSrc is the test ingress's address and port towards it.
	agentSrc = netip.AddrPortFrom(agentInner, 40000)
)

// newTunnelHarness runs the gateway of baseConfig (an HTTP backend, the
// UDP echo) with a direct tunnel listener, extra appended to its
// configuration.
func newTunnelHarness(t *testing.T, extra string) *harness {
	t.Helper()
	_, port := startHTTP(t, nil)
	return newHarness(t, withTunnel(t, baseConfig(port, startUDPEcho(t))+extra))
}

// writePKI writes a CA and the gateway's certificate into dir and returns
// the [tunnel] keys that name them, with a direct listener on loopback.
func writePKI(t testing.TB, dir string) (tunnelSection string, ca *tunnel.CA) {
	t.Helper()
	ca, err := tunnel.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := ca.Issue(tunnel.IssueRequest{Tenant: "infra", Role: tunnel.RoleGateway, Name: "gw1",
		IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"ca.crt": ca.CertPEM(), "gw.crt": crt, "gw.key": key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf(`
[tunnel]
listen = "127.0.0.1:0"
cert = %q
key = %q
ca = %q
`, filepath.Join(dir, "gw.crt"), filepath.Join(dir, "gw.key"), filepath.Join(dir, "ca.crt")), ca
}

// withTunnel adds a direct tunnel listener on loopback to a harness
// config (before its first [[tenant]]).
func withTunnel(t testing.TB, toml string) string {
	section, _ := writePKI(t, t.TempDir())
	i := strings.Index(toml, "[[tenant]]")
	return toml[:i] + section + toml[i:]
}

// testIngress registers an agent ingress of tenant whose replies are
// counted and dropped.
func (h *harness) testIngress(t testing.TB, tenant string) (*ingress, *atomic.Int64) {
	t.Helper()
	var sent atomic.Int64
	in := &ingress{
		peer: peer{tenant: tenant, identity: "ztna://" + tenant + "/agent/fuzz"},
		out: testOutbox(t, func([]byte) error {
			sent.Add(1)
			return nil
		}),
	}
	in.pinInner(agentInner)
	if err := h.gw.ingresses.add(in); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.gw.ingresses.remove(in) })
	return in, &sent
}

// tagReturns hands got each 0x31 the fake relay's session s receives: its
// tag and a copy of its packet, until the session or ctx ends or got
// returns false.
func tagReturns(ctx context.Context, s *tunnel.Session, got func(tag uint32, pkt []byte) bool) {
	for {
		b, err := s.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		if tunnel.Kind(b) != tunnel.TypeTagReturn {
			continue
		}
		tag, pkt, err := tunnel.ParseTagReturn(b)
		if err != nil {
			continue
		}
		if !got(tag, slices.Clone(pkt)) {
			return
		}
	}
}

// countsDiffer lists how g's ztgate_packets_dropped_total and
// ztgate_flows_refused_total differ from what a model of its tunnel side
// wants (drops by reason, refused by protocol and reason); nil when they
// agree.
func countsDiffer(g *Gateway, drops map[string]float64, refused map[[2]string]float64) []string {
	var diff []string
	for r, v := range drops {
		if got := testutil.ToFloat64(g.m.dropped.WithLabelValues(r)); got != v {
			diff = append(diff, fmt.Sprintf("ztgate_packets_dropped_total{reason=%q} = %v, want %v", r, got, v))
		}
	}
	for r, v := range refused {
		if got := testutil.ToFloat64(g.m.flowsRefused.WithLabelValues(r[0], r[1])); got != v {
			diff = append(diff, fmt.Sprintf("ztgate_flows_refused_total{protocol=%q,reason=%q} = %v, want %v", r[0], r[1], got, v))
		}
	}
	return diff
}

// drainNow hands f every value ch holds now, without waiting for more.
func drainNow[T any](ch <-chan T, f func(T)) {
	for {
		select {
		case v := <-ch:
			f(v)
		default:
			return
		}
	}
}
