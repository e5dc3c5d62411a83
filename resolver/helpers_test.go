package resolver

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ztgate/ztgate/catalog"
)

// testView is a View backed by maps; a pointer, so it is a valid cache key.
type testView struct {
	byName map[string]Entry
	byAddr map[netip.Addr]Entry
}

func newTestView(entries ...Entry) *testView {
	v := &testView{byName: map[string]Entry{}, byAddr: map[netip.Addr]Entry{}}
	for _, e := range entries {
		v.byName[e.Name] = e
		v.byAddr[e.VIP] = e
		if e.VIP6.IsValid() {
			v.byAddr[e.VIP6] = e
		}
	}
	return v
}

func (v *testView) Lookup(label string) (Entry, bool) { e, ok := v.byName[label]; return e, ok }

func (v *testView) Reverse(a netip.Addr) (Entry, bool) { e, ok := v.byAddr[a]; return e, ok }

// testDir maps client addresses to views; unknown clients get def.
type testDir struct {
	views map[netip.Addr]View
	def   View
}

func (d *testDir) View(c netip.Addr) View {
	if v, ok := d.views[c]; ok {
		return v
	}
	return d.def
}

// Test clients: tenant A, tenant B, and one without a view.
var (
	clientA    = netip.MustParseAddr("198.51.100.7")
	clientB    = netip.MustParseAddr("198.51.100.8")
	clientNone = netip.MustParseAddr("203.0.113.9")
)

func testEntries() (web, dnsSvc, big, db Entry) {
	web = Entry{
		Name: "web", VIP: netip.MustParseAddr("10.100.0.10"), VIP6: netip.MustParseAddr("fd00:ab::a"),
		Ports: []catalog.Port{{Name: "http", Protocol: catalog.TCP, Port: 80}, {Protocol: catalog.TCP, Port: 443}},
	}
	dnsSvc = Entry{
		Name: "dns", VIP: netip.MustParseAddr("10.100.0.11"),
		Ports: []catalog.Port{{Protocol: catalog.UDP, Port: 53}, {Protocol: catalog.TCP, Port: 53}},
	}
	big = Entry{Name: "big", VIP: netip.MustParseAddr("10.100.0.12")}
	for p := range uint16(60) {
		big.Ports = append(big.Ports, catalog.Port{Name: "svc", Protocol: catalog.TCP, Port: 1000 + p})
	}
	db = Entry{Name: "db", VIP: netip.MustParseAddr("10.100.0.13"), Ports: []catalog.Port{{Protocol: catalog.TCP, Port: 5432}}}
	return web, dnsSvc, big, db
}

// testDirectory: tenant A sees web, dns and big; tenant B sees db only.
func testDirectory() *testDir {
	web, dnsSvc, big, db := testEntries()
	return &testDir{views: map[netip.Addr]View{
		clientA: newTestView(web, dnsSvc, big),
		clientB: newTestView(db),
	}}
}

func testConfig() Config {
	return Config{
		Zone:  "ztna.internal.",
		Pool:  netip.MustParsePrefix("10.100.0.0/24"),
		Pool6: netip.MustParsePrefix("fd00:ab::/64"),
	}
}

// newTestServer returns a Server whose metrics go to a registry of its own
// (unless cfg names one), read back with counter.
func newTestServer(t testing.TB, cfg Config, dir Directory) *Server {
	t.Helper()
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	s, err := New(cfg, dir, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// fakeWriter is a dns.ResponseWriter that records what is written.
type fakeWriter struct {
	mu      sync.Mutex
	remote  net.Addr
	written [][]byte
}

func newFakeWriter(client netip.Addr, tcp bool) *fakeWriter {
	ap := netip.AddrPortFrom(client, 40000)
	if tcp {
		return &fakeWriter{remote: net.TCPAddrFromAddrPort(ap)}
	}
	return &fakeWriter{remote: net.UDPAddrFromAddrPort(ap)}
}

func (w *fakeWriter) LocalAddr() net.Addr  { return &net.UDPAddr{IP: net.IPv4(10, 100, 0, 1), Port: 53} }
func (w *fakeWriter) RemoteAddr() net.Addr { return w.remote }
func (w *fakeWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (w *fakeWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.written = append(w.written, append([]byte(nil), b...))
	return len(b), nil
}
func (w *fakeWriter) Close() error        { return nil }
func (w *fakeWriter) TsigStatus() error   { return nil }
func (w *fakeWriter) TsigTimersOnly(bool) {}
func (w *fakeWriter) Hijack()             {}

// replies returns what was written.
func (w *fakeWriter) replies() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.written
}

// newQuery builds a query; size > 0 adds an OPT record with that UDP size.
func newQuery(name string, qtype uint16, size uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 4242
	if size > 0 {
		m.SetEdns0(size, false)
	}
	return m
}

func mustPack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("pack: %v", err)
	}
	return b
}

func mustUnpack(t testing.TB, b []byte) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpack reply %x: %v", b, err)
	}
	return m
}

// rrStrings renders records with single spaces, leaving out OPT.
func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, strings.Join(strings.Fields(rr.String()), " "))
		}
	}
	return out
}

// soaString is the SOA record the test server puts at owner.
func soaString(s *Server, owner string) string {
	return owner + " 30 IN SOA ns.ztna.internal. hostmaster.ztna.internal. " +
		strconv.FormatUint(uint64(s.zone.Load().serial), 10) + " 3600 600 86400 30"
}

// counter returns the value of the counter (or gauge) name{labels}
// (label, value pairs) that s registered, 0 when it has not counted yet
// (or has no such series). It reads the
// registry (prometheus/testutil would need a module that go.mod lacks).
func counter(t testing.TB, s *Server, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := s.cfg.Registerer.(prometheus.Gatherer).Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if got[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
