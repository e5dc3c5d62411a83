package relay

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// routeFixture is a running relay with one gateway serving "echo" and a
// ztna-v1 and a ztna-v2 agent, whose relay-side states the fuzz target
// drives directly.
type routeFixture struct {
	r      *Relay
	gw     *gateway
	v1, v2 *agent
}

// setupRoute starts the relay and its peers; they live until t's cleanup.
func setupRoute(t testing.TB) *routeFixture {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gwc := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gwc.register(svc("echo", "default"))
	mustDial(t, addr, p.identity("default", tunnel.RoleAgent, "v2"), agentHello("v2"))
	mustDial(t, addr, p.identity("default", tunnel.RoleAgent, "v1"), tunnel.Hello{}, tunnel.ALPNV1)
	f := &routeFixture{r: r}
	waitFor(t, "sessions", func() bool {
		r.mu.RLock()
		defer r.mu.RUnlock()
		for a := range r.agents {
			if a.s.Version() == tunnel.V1 {
				f.v1 = a
			} else {
				f.v2 = a
			}
		}
		for g := range r.gateways {
			f.gw = g
		}
		return f.v1 != nil && f.v2 != nil && f.gw != nil
	})
	return f
}

// accounted is the number of datagrams the relay counted, forwarded,
// dropped or answered as a registration.
func (f *routeFixture) accounted() float64 {
	m := f.r.m
	n := testutil.ToFloat64(m.toGateway) + testutil.ToFloat64(m.toAgent) +
		testutil.ToFloat64(m.fromAgentX) + testutil.ToFloat64(m.fromGateX)
	for _, result := range []string{regOK, regDenied, regBadID} {
		n += testutil.ToFloat64(m.registrations.WithLabelValues(roleAgent, result))
	}
	return n
}

// FuzzRelayDatagrams feeds arbitrary datagrams to the relay as if they came
// from a v1 agent, a v2 agent and a gateway: nothing panics, and each
// datagram is counted exactly once (forwarded, dropped by reason, or
// answered as a registration).
func FuzzRelayDatagrams(f *testing.F) {
	seeds := [][]byte{
		{}, {0x00}, {0x01, 1, 2, 3, 4, 5, 6},
		[]byte("\x10\x04echo"), []byte("\x11\x04echo"), []byte("\x10\x02\xff\xfe"),
		append([]byte("\x2f\x04echo"), udpPacket(netip.MustParseAddrPort("100.64.0.1:1"), netip.MustParseAddrPort("10.100.0.2:7"), "x")...),
		append([]byte("\x2f\x04echo"), 0x60, 0, 0, 0),
		tunnel.AppendTagReturn(nil, 7, udpPacket(netip.MustParseAddrPort("10.100.0.2:7"), netip.MustParseAddrPort("100.64.0.1:1"), "x")),
		{0x31, 0, 0, 0}, {0x30, 0, 0, 0, 1, 1, 'e', 0x45},
		udpPacket(netip.MustParseAddrPort("100.64.0.1:1"), netip.MustParseAddrPort("10.100.0.2:7"), "raw"),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	fx := setupRoute(f) // one relay for every input
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, handle := range []func([]byte){
			func(b []byte) { fx.r.fromAgent(fx.v1, b) },
			func(b []byte) { fx.r.fromAgent(fx.v2, b) },
			func(b []byte) { fx.r.fromGateway(fx.gw, b, false) },
		} {
			before := fx.accounted()
			handle(append([]byte(nil), b...))
			if after := fx.accounted(); after != before+1 {
				t.Fatalf("datagram % x counted %v times", b, after-before)
			}
		}
	})
}

func TestIPAddrs(t *testing.T) {
	v4 := udpPacket(netip.MustParseAddrPort("100.64.0.1:1"), netip.MustParseAddrPort("10.100.0.2:7"), "")
	v6 := make([]byte, 40)
	v6[0] = 0x60
	v6[23], v6[39] = 1, 2
	tests := []struct {
		name     string
		packet   []byte
		src, dst string
	}{
		{"ipv4", v4, "100.64.0.1", "10.100.0.2"},
		{"ipv6", v6, "::1", "::2"},
		{"empty", nil, "", ""},
		{"short ipv4", v4[:19], "", ""},
		{"short ipv6", v6[:39], "", ""},
		{"version 5", append([]byte{0x55}, v4[1:]...), "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, dst, ok := ipAddrs(tc.packet)
			if ok != (tc.src != "") || (ok && (src.String() != tc.src || dst.String() != tc.dst)) {
				t.Errorf("got %v %v %v", src, dst, ok)
			}
		})
	}
}
