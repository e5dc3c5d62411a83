package gateway

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// assignGateway is a gateway attached to a test relay, with its log.
type assignGateway struct {
	gw   *Gateway
	s    *tunnel.Session // the relay's side of the gateway's session
	logs *syncLog
	tags uint32 // the last tag opened by processed
}

// relayWebGateway starts a test relay and returns it with the
// configuration of a gateway named name, attached to it, publishing web
// (UDP 53) to acme; extra goes after its [api] section.
func relayWebGateway(t *testing.T, name, stateDir, extra string) (*rlRelay, string) {
	t.Helper()
	pki := t.TempDir()
	_, ca := writePKI(t, pki)
	rl := startRLRelay(t, pki, ca)
	t.Cleanup(rl.stop)
	return rl, `[gateway]
name = "` + name + `"
state_dir = "` + stateDir + `"
[api]
listen = "off"
` + extra + `
[[service]]
name = "web"
tenants = ["acme"]
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "udp"
  port = 53
  target = 9
  [service.health]
  type = "none"
` + rl.tunnelSection(pki)
}

// startAssignGateway starts a gateway publishing web (udp 53) behind a
// test relay, logging into logs.
func startAssignGateway(t *testing.T, extra string) *assignGateway {
	t.Helper()
	rl, toml := relayWebGateway(t, "gw-assign", t.TempDir(), extra)
	cfg, err := conf.ParseGateway("test.toml", []byte(toml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	client, err := netstacktest.NewClient(1420, acmeClient)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncLog{}
	gw, err := New(cfg, Options{Device: client, Pinger: fakePinger{}}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	s, err := rl.await("gw-assign", 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close("test over") })
	return &assignGateway{gw: gw, s: s, logs: logs, tags: 100}
}

// send sends m to the gateway and returns once the gateway has handled it:
// the control loop handles messages in order, so a tag_open sent after it
// is seen open only then.
func (a *assignGateway) send(t *testing.T, m any) {
	t.Helper()
	if err := a.s.Send(m); err != nil {
		t.Fatal(err)
	}
	a.tags++
	tag := a.tags
	if err := a.s.Send(tunnel.TagOpen{Type: tunnel.MessageTagOpen, Tag: tag, Service: "web", Tenant: "acme",
		Identity: "ztna://acme/agent/a1", InnerAddr: netip.MustParseAddr("100.64.0.9")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the tag opened after the message", func() bool {
		return (&trModel{g: a.gw}).tagIngress(tag) != nil
	})
}

// TestRelayBadAssignIgnored: an assign that does not fit what protocol.md
// says a relay sends (no pool: the netstack would then route nothing and
// drop every packet; a pool or pool6 of the wrong family or size; a VIP
// outside its pool or of the wrong family; one VIP for two services) is
// ignored: the VIPs and pools in force stay, it is counted in
// ztgate_tunnel_control_rejected_total{reason="bad_assign"} and logged.
// Before, every one was applied as it came.
func TestRelayBadAssignIgnored(t *testing.T) {
	a := startAssignGateway(t, "")
	pool, pool6 := netip.MustParsePrefix("10.200.0.0/24"), netip.MustParsePrefix("fd00:99::/120")
	vip, vip6 := netip.MustParseAddr("10.200.0.10"), netip.MustParseAddr("fd00:99::a")
	good := tunnel.Assign{Type: tunnel.MessageAssign, Zone: "ztna.internal", TTL: 30, Pool: pool, Pool6: pool6,
		VIPs: []tunnel.VIPAssignment{{Service: "web", VIP: vip, VIP6: vip6}}}
	a.send(t, good)
	inForce := func(what string) {
		t.Helper()
		if svc := a.gw.tbl.Load().byName["web"]; svc == nil || svc.vip != vip || svc.vip6 != vip6 {
			t.Fatalf("%s: web's VIPs are not %v and %v any more", what, vip, vip6)
		}
		if p, p6, ok := a.gw.relayPools(); !ok || p != pool || p6 != pool6 {
			t.Fatalf("%s: the relay's pools are %v %v (%v), want %v %v kept", what, p, p6, ok, pool, pool6)
		}
	}
	inForce("the good assign")
	with := func(f func(m *tunnel.Assign)) tunnel.Assign {
		m := good
		m.VIPs = []tunnel.VIPAssignment{good.VIPs[0]}
		f(&m)
		return m
	}
	cases := []struct {
		name string
		m    tunnel.Assign
		why  string
	}{
		{"no pool", with(func(m *tunnel.Assign) { m.Pool = netip.Prefix{}; m.VIPs = nil }), "the assign has no pool"},
		{"pool IPv6", with(func(m *tunnel.Assign) { m.Pool = netip.MustParsePrefix("fd00:1::/64") }), "pool fd00:1::/64 is not an IPv4 prefix"},
		{"pool everything", with(func(m *tunnel.Assign) { m.Pool = netip.MustParsePrefix("0.0.0.0/0") }), "pool 0.0.0.0/0 is not an IPv4 prefix of /8 to /29"},
		{"pool6 IPv4", with(func(m *tunnel.Assign) { m.Pool6 = netip.MustParsePrefix("10.201.0.0/24") }), "pool6 10.201.0.0/24 is not an IPv6 prefix"},
		{"vip outside the pool", with(func(m *tunnel.Assign) { m.VIPs[0].VIP = netip.MustParseAddr("10.9.9.9") }), `service "web": vip 10.9.9.9 is outside the pool 10.200.0.0/24`},
		{"vip IPv6", with(func(m *tunnel.Assign) { m.VIPs[0].VIP = netip.MustParseAddr("fd00:99::b") }), `vip fd00:99::b is outside the pool`},
		{"vip6 outside pool6", with(func(m *tunnel.Assign) { m.VIPs[0].VIP6 = netip.MustParseAddr("fd00:1::b") }), `vip6 fd00:1::b is outside the pool fd00:99::/120`},
		{"vip6 without pool6", with(func(m *tunnel.Assign) { m.Pool6 = netip.Prefix{} }), `vip6 fd00:99::a without a pool6`},
		{"one VIP for two services", with(func(m *tunnel.Assign) {
			m.VIPs = append(m.VIPs, tunnel.VIPAssignment{Service: "db", VIP: vip})
		}), `10.200.0.10 is assigned to both service "web" and service "db"`},
		// Routed into the TUN, such a pool would take the gateway's own
		// session to the relay (the test's relay is at 127.0.0.1).
		{"pool holding the relay", with(func(m *tunnel.Assign) {
			m.Pool, m.VIPs[0].VIP = netip.MustParsePrefix("127.0.0.0/8"), netip.MustParseAddr("127.0.0.10")
		}), `pool 127.0.0.0/8 holds the relay's address 127.0.0.1`},
	}
	rejected := func() float64 {
		return testutil.ToFloat64(a.gw.m.controlRejects.WithLabelValues("bad_assign"))
	}
	for i, tc := range cases {
		a.send(t, tc.m)
		inForce(tc.name)
		if n := rejected(); n != float64(i+1) {
			t.Errorf("%s: bad_assign counted %v times, want %d", tc.name, n, i+1)
		}
		logs := a.logs.String()
		if !strings.Contains(logs, `level=ERROR msg="ignoring the relay's VIP assignment; keeping the one in force"`) || !strings.Contains(logs, strings.ReplaceAll(tc.why, `"`, `\"`)) {
			t.Errorf("%s: the log does not say %q:\n%s", tc.name, tc.why, logs)
		}
	}
	// The next good assign is applied.
	vip = netip.MustParseAddr("10.200.0.11")
	a.send(t, with(func(m *tunnel.Assign) { m.VIPs[0].VIP = vip }))
	inForce("a good assign after the bad ones")
}

// TestRelayZoneMismatchWarned: the gateway answers in its own dns.zone
// whatever zone the relay's assign names (its agents resolve in the
// relay's): a relay zone that differs is warned about once per change of
// the relay's zone, naming both, not at every assign, and not for an
// assign that is ignored or whose zone is dns.zone in another spelling.
// Before, the relay's zone was ignored without a word.
func TestRelayZoneMismatchWarned(t *testing.T) {
	a := startAssignGateway(t, "[dns]\nzone = \"ztna.internal\"\n")
	assign := func(zone string, pool netip.Prefix) tunnel.Assign {
		return tunnel.Assign{Type: tunnel.MessageAssign, Zone: zone, TTL: 30, Pool: pool,
			VIPs: []tunnel.VIPAssignment{{Service: "web", VIP: netip.MustParseAddr("10.200.0.10")}}}
	}
	pool := netip.MustParsePrefix("10.200.0.0/24")
	const msg = `level=WARN msg="the relay's DNS zone differs from dns.zone: agents resolve the services in the relay's zone, this gateway's DNS answers in its own"`
	for _, step := range []struct {
		zone string
		pool netip.Prefix
		want []string // the warnings' relay zones so far
	}{
		{"ztna.internal.", pool, nil},
		{"ZTNA.internal", pool, nil},
		{"corp.example.", pool, []string{"corp.example."}},
		{"corp.example.", pool, []string{"corp.example."}},
		{"Corp.Example", pool, []string{"corp.example."}},
		{"bad.example.", netip.Prefix{}, []string{"corp.example."}}, // ignored: no pool
		{"other.example.", pool, []string{"corp.example.", "other.example."}},
		{"ztna.internal.", pool, []string{"corp.example.", "other.example."}},
		{"corp.example.", pool, []string{"corp.example.", "other.example.", "corp.example."}},
	} {
		a.send(t, assign(step.zone, step.pool))
		var got []string
		for _, line := range strings.Split(a.logs.String(), "\n") {
			if strings.Contains(line, msg) {
				if !strings.Contains(line, "zone=ztna.internal.") {
					t.Errorf("the warning does not name the gateway's zone: %s", line)
				}
				_, z, _ := strings.Cut(line, "relay_zone=")
				z, _, _ = strings.Cut(z, " ")
				got = append(got, z)
			}
		}
		if !slices.Equal(got, step.want) {
			t.Fatalf("after an assign in %q: warnings for %q, want %q:\n%s", step.zone, got, step.want, a.logs.String())
		}
	}
}
