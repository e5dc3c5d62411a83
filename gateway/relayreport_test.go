package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

func TestRelayReportNext(t *testing.T) {
	web := func(healthy bool) tunnel.ServiceInfo {
		return tunnel.ServiceInfo{Name: "web", Tenants: []string{"acme"}, Healthy: healthy,
			Ports: []tunnel.PortInfo{{Name: "http", Protocol: "tcp", Port: 80}}}
	}
	db := tunnel.ServiceInfo{Name: "db", Tenants: []string{"acme"}, Healthy: true,
		Ports: []tunnel.PortInfo{{Protocol: "tcp", Port: 5432}}}
	with := func(f func(*tunnel.ServiceInfo)) tunnel.ServiceInfo {
		si := web(true)
		f(&si)
		return si
	}
	tests := []struct {
		name         string
		last, now    []tunnel.ServiceInfo
		wantRegister bool
		wantHealth   map[string]bool
	}{
		{"nothing changed", []tunnel.ServiceInfo{db, web(true)}, []tunnel.ServiceInfo{db, web(true)}, false, nil},
		{"health changed", []tunnel.ServiceInfo{db, web(true)}, []tunnel.ServiceInfo{db, web(false)},
			false, map[string]bool{"web": false}},
		{"service added", []tunnel.ServiceInfo{web(true)}, []tunnel.ServiceInfo{db, web(true)}, true, nil},
		{"service removed", []tunnel.ServiceInfo{db, web(true)}, []tunnel.ServiceInfo{web(true)}, true, nil},
		{"service renamed", []tunnel.ServiceInfo{web(true)},
			[]tunnel.ServiceInfo{with(func(s *tunnel.ServiceInfo) { s.Name = "www" })}, true, nil},
		{"tenant added", []tunnel.ServiceInfo{web(true)},
			[]tunnel.ServiceInfo{with(func(s *tunnel.ServiceInfo) { s.Tenants = []string{"acme", "globex"} })}, true, nil},
		{"tenant replaced", []tunnel.ServiceInfo{web(true)},
			[]tunnel.ServiceInfo{with(func(s *tunnel.ServiceInfo) { s.Tenants = []string{"globex"} })}, true, nil},
		{"port changed", []tunnel.ServiceInfo{web(true)},
			[]tunnel.ServiceInfo{with(func(s *tunnel.ServiceInfo) { s.Ports[0].Port = 8080 })}, true, nil},
		{"port renamed", []tunnel.ServiceInfo{web(true)},
			[]tunnel.ServiceInfo{with(func(s *tunnel.ServiceInfo) { s.Ports[0].Name = "web" })}, true, nil},
		{"port added", []tunnel.ServiceInfo{web(true)}, []tunnel.ServiceInfo{with(func(s *tunnel.ServiceInfo) {
			s.Ports = append(s.Ports, tunnel.PortInfo{Protocol: "udp", Port: 53})
		})}, true, nil},
		{"icmp allowed", []tunnel.ServiceInfo{web(true)},
			[]tunnel.ServiceInfo{with(func(s *tunnel.ServiceInfo) { s.ICMP = true })}, true, nil},
		{"vip pin changed", []tunnel.ServiceInfo{web(true)},
			[]tunnel.ServiceInfo{with(func(s *tunnel.ServiceInfo) { s.VIP = netip.MustParseAddr("10.100.0.9") })}, true, nil},
		{"definition and health changed: one register", []tunnel.ServiceInfo{web(true)},
			[]tunnel.ServiceInfo{with(func(s *tunnel.ServiceInfo) { s.ICMP, s.Healthy = true, false })}, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Fresh copies: the cases share slices.
			last := cloneInfos(tc.last)
			r := relayReport{last: last}
			now := cloneInfos(tc.now)
			register, health := r.next(now)
			if register != tc.wantRegister || fmt.Sprint(health) != fmt.Sprint(tc.wantHealth) {
				t.Errorf("next = %v %v, want %v %v", register, health, tc.wantRegister, tc.wantHealth)
			}
			if register, health := r.next(cloneInfos(tc.now)); register || health != nil {
				t.Errorf("again with nothing changed: %v %v", register, health)
			}
		})
	}
}

func cloneInfos(in []tunnel.ServiceInfo) []tunnel.ServiceInfo {
	out := make([]tunnel.ServiceInfo, len(in))
	for i, si := range in {
		si.Tenants, si.Ports = slices.Clone(si.Tenants), slices.Clone(si.Ports)
		out[i] = si
	}
	return out
}

// relayListener listens on loopback as a relay, with a certificate of the
// CA in dir (see writePKI) that it writes there.
func relayListener(t *testing.T, dir string, ca *tunnel.CA) *tunnel.Listener {
	t.Helper()
	relayCrt, relayKey, err := ca.Issue(tunnel.IssueRequest{Tenant: "infra", Role: tunnel.RoleRelay, Name: "relay1",
		IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"relay.crt": relayCrt, "relay.key": relayKey} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	creds, err := tunnel.NewCredentials(tunnel.CredentialsConfig{CertFile: filepath.Join(dir, "relay.crt"),
		KeyFile: filepath.Join(dir, "relay.key"), CAFile: filepath.Join(dir, "ca.crt")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tunnel.Listen("127.0.0.1:0", tunnel.ListenConfig{Credentials: creds}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// fakeRelay listens as a relay on loopback with a certificate of the CA
// in dir (see writePKI) and hands over each session it accepts, welcomed.
func fakeRelay(t *testing.T, dir string, ca *tunnel.CA) (addr string, sessions <-chan *tunnel.Session) {
	t.Helper()
	ln := relayListener(t, dir, ca)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	ch := make(chan *tunnel.Session, 4)
	go func() {
		defer close(ch)
		for {
			s, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			s.SendWelcome(tunnel.Welcome{MaxPacket: 1200})
			t.Cleanup(func() { s.Close("test over") })
			ch <- s
		}
	}()
	return ln.Addr().String(), ch
}

// TestReloadReregistersChangedDefinition: a reload that changes what the
// relay holds of a service (its tenants, ports or ICMP) but not the
// service set makes the gateway register again with the new definition.
func TestReloadReregistersChangedDefinition(t *testing.T) {
	pki := t.TempDir()
	_, ca := writePKI(t, pki)
	addr, sessions := fakeRelay(t, pki, ca)
	tunnelSection := fmt.Sprintf(`
[tunnel]
relay = %q
cert = %q
key = %q
ca = %q
`, addr, filepath.Join(pki, "gw.crt"), filepath.Join(pki, "gw.key"), filepath.Join(pki, "ca.crt"))
	echo := startLineEcho(t, "a")
	// config defines echo (no VIP: the relay assigns it) for tenants, with
	// extra keys of the service and extra port tables.
	config := func(tenants, keys, ports string) string {
		return fmt.Sprintf(quietGateway+twoTenants+`[[service]]
name = "echo"
tenants = [%s]
backends = ["127.0.0.1"]
%s
  [[service.port]]
  protocol = "tcp"
  port = 7
  target = %d
%s
  [service.health]
  type = "none"
%s`, tenants, keys, echo, ports, tunnelSection)
	}
	h := newFileHarness(t, config(`"acme"`, "", ""))

	var s *tunnel.Session
	select {
	case s = <-sessions:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not connect to the relay")
	}
	registers := make(chan *tunnel.Register, 16)
	go func() {
		for {
			msg, err := tunnel.DecodeControl(s.Next())
			if err != nil {
				close(registers)
				return
			}
			if reg, ok := msg.(*tunnel.Register); ok {
				registers <- reg
			}
		}
	}()
	// awaitEcho waits for a register whose echo service matches want.
	awaitEcho := func(step string, want func(tunnel.ServiceInfo) bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case reg, ok := <-registers:
				if !ok {
					t.Fatalf("%s: the relay session ended", step)
				}
				for _, si := range reg.Services {
					if si.Name == "echo" && want(si) {
						return
					}
				}
			case <-deadline:
				t.Fatalf("%s: no register with the new definition within 10 s", step)
			}
		}
	}
	awaitEcho("first", func(si tunnel.ServiceInfo) bool { return slices.Equal(si.Tenants, []string{"acme"}) })

	steps := []struct {
		name, tenants, keys, ports string
		want                       func(tunnel.ServiceInfo) bool
	}{
		{"tenant added", `"acme", "globex"`, "", "", func(si tunnel.ServiceInfo) bool {
			return slices.Equal(si.Tenants, []string{"acme", "globex"})
		}},
		{"tenant removed", `"globex"`, "", "", func(si tunnel.ServiceInfo) bool {
			return slices.Equal(si.Tenants, []string{"globex"})
		}},
		{"port added", `"globex"`, "", fmt.Sprintf("  [[service.port]]\n  protocol = \"tcp\"\n  port = 8\n  target = %d\n", echo),
			func(si tunnel.ServiceInfo) bool { return len(si.Ports) == 2 && si.Ports[1].Port == 8 }},
		{"icmp allowed", `"globex"`, "icmp = true", "", func(si tunnel.ServiceInfo) bool {
			return si.ICMP && len(si.Ports) == 1
		}},
	}
	for _, st := range steps {
		h.write(t, config(st.tenants, st.keys, st.ports))
		// The file watcher may have applied it already: the diff may be
		// empty, the register is what counts.
		if _, err := h.gw.Reload(); err != nil {
			t.Fatalf("%s: reload: %v", st.name, err)
		}
		awaitEcho(st.name, st.want)
	}
}

// TestHoldPendingTags checks the packets held for tags not announced yet:
// expired tags are swept when the map is full or a timeout after the last
// sweep, not for every packet; the map stays bounded; a tag held too long
// starts again. Times are an hour off so that a slow machine cannot
// expire what the test holds fresh.
func TestHoldPendingTags(t *testing.T) {
	newRS := func() *relaySession {
		return newRelaySession(&Gateway{m: newMetrics(prometheus.NewRegistry())}, nil, nil)
	}
	fresh, stale := time.Now().Add(time.Hour), time.Now().Add(-time.Hour)
	pkt := []byte{0x45}

	t.Run("no sweep for every packet", func(t *testing.T) {
		rs := newRS()
		rs.swept = fresh
		rs.pending[1] = &pendingTag{since: stale}
		rs.holdLocked(2, pkt)
		if _, ok := rs.pending[1]; !ok {
			t.Fatal("swept again before a timeout passed")
		}
		rs.swept = stale
		rs.holdLocked(3, pkt)
		if _, ok := rs.pending[1]; ok || len(rs.pending) != 2 {
			t.Fatalf("a timeout after the last sweep: %d tags held, expired tag 1 kept: %v", len(rs.pending), ok)
		}
	})
	t.Run("full map is swept", func(t *testing.T) {
		rs := newRS()
		rs.swept = fresh
		for tag := range uint32(pendingTagsMax) {
			rs.pending[tag] = &pendingTag{since: stale}
		}
		rs.holdLocked(pendingTagsMax, pkt)
		if p := rs.pending[pendingTagsMax]; len(rs.pending) != 1 || p == nil || len(p.pkts) != 1 {
			t.Fatalf("%d tags held after sweeping a full map of expired ones; want the new one alone", len(rs.pending))
		}
	})
	t.Run("bounded", func(t *testing.T) {
		rs := newRS()
		for tag := range uint32(pendingTagsMax) {
			rs.pending[tag] = &pendingTag{since: fresh}
		}
		rs.holdLocked(pendingTagsMax, pkt)
		if len(rs.pending) != pendingTagsMax {
			t.Fatalf("%d tags held, want at most %d", len(rs.pending), pendingTagsMax)
		}
		if n := testutil.ToFloat64(rs.g.m.dropped.WithLabelValues("unknown_tag")); n != 1 {
			t.Fatalf("unknown_tag drops %v, want 1", n)
		}
	})
	t.Run("expired tag starts again", func(t *testing.T) {
		rs := newRS()
		rs.swept = fresh
		rs.pending[7] = &pendingTag{since: stale, pkts: make([][]byte, pendingTagLimit)}
		rs.holdLocked(7, pkt)
		if p := rs.pending[7]; p == nil || len(p.pkts) != 1 || !p.since.After(stale) {
			t.Fatalf("expired tag held again: %+v", p)
		}
	})
}

// TestOpenTagDuplicate: a tag_open for a tag already open is refused
// before it takes a synthetic address, and the open tag is kept.
func TestOpenTagDuplicate(t *testing.T) {
	g := &Gateway{m: newMetrics(prometheus.NewRegistry()), flows: newFlowTable()}
	g.ingresses = newIngressTable(prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_ingresses"}), nil)
	rs := newRelaySession(g, nil, nil)
	rs.openTag(&tunnel.TagOpen{Tag: 5, Service: "web"})
	first, next := rs.tags[5], g.ingresses.next
	if first == nil {
		t.Fatal("tag 5 not opened")
	}
	rs.openTag(&tunnel.TagOpen{Tag: 5, Service: "db"})
	if rs.tags[5] != first || first.closed.Load() || len(g.ingresses.bySynth) != 1 {
		t.Fatalf("duplicate tag_open replaced or closed the open tag: %+v", rs.tags[5])
	}
	if g.ingresses.next != next {
		t.Fatalf("duplicate tag_open took a synthetic address (next %d, was %d)", g.ingresses.next, next)
	}
}

// TestClosedTagPacketsDropped: a packet under a tag that a tag_close named
// less than pendingTagTimeout ago (one in flight when the tag closed) is
// dropped as unknown_tag, not held: were the relay to draw the same number
// for another agent within that time, it would reach that agent's ingress.
// A tag_open of the number takes it out of the closed tags; one closed
// longer ago is held as any unknown tag; the closed tags stay bounded.
func TestClosedTagPacketsDropped(t *testing.T) {
	pkt := []byte{0x45}
	newRS := func() *relaySession {
		g := &Gateway{m: newMetrics(prometheus.NewRegistry()), flows: newFlowTable()}
		g.ingresses = newIngressTable(prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_ingresses"}), nil)
		return newRelaySession(g, nil, nil)
	}
	drops := func(rs *relaySession) float64 {
		return testutil.ToFloat64(rs.g.m.dropped.WithLabelValues("unknown_tag"))
	}
	hold := func(rs *relaySession, tag uint32) {
		rs.mu.Lock()
		rs.holdLocked(tag, pkt)
		rs.mu.Unlock()
	}

	rs := newRS()
	rs.openTag(&tunnel.TagOpen{Tag: 7, Service: "echo", Tenant: "acme"})
	rs.closeTag(7, "tag_closed")
	hold(rs, 7)
	if rs.pending[7] != nil || drops(rs) != 1 {
		t.Fatalf("packet of a tag just closed: held %v, unknown_tag %v; want dropped and counted", rs.pending[7] != nil, drops(rs))
	}
	rs.openTag(&tunnel.TagOpen{Tag: 7, Service: "echo", Tenant: "globex"})
	if _, ok := rs.closed[7]; ok || rs.tags[7] == nil {
		t.Fatalf("tag 7 drawn again: still closed %v, open %v", ok, rs.tags[7] != nil)
	}
	rs.closeTag(7, "tag_closed")
	rs.closed[7] = time.Now().Add(-2 * pendingTagTimeout)
	hold(rs, 7)
	if rs.pending[7] == nil || drops(rs) != 1 {
		t.Fatalf("packet of a tag closed long ago: held %v, unknown_tag %v; want held", rs.pending[7] != nil, drops(rs))
	}

	rs = newRS()
	for tag := range uint32(closedTagsMax + 10) {
		rs.closeTag(tag+1, "tag_closed")
	}
	if n := len(rs.closed); n != closedTagsMax {
		t.Fatalf("%d closed tags remembered, want the bound %d", n, closedTagsMax)
	}
	for tag := range uint32(closedTagsMax) {
		rs.closed[tag+1] = time.Now().Add(-2 * pendingTagTimeout)
	}
	rs.closeTag(closedTagsMax+100, "tag_closed")
	if n := len(rs.closed); n != 1 {
		t.Fatalf("%d closed tags remembered after the old ones expired, want 1", n)
	}
}
