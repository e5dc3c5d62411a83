package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/resolver/resolvertest"
)

// What TestReloadRandom sees of a gateway: the backends, the gateways it
// starts, and one round of observations through what users see.

// rrWorld are the backends every configuration points at: each address
// of addrs listens on each of tcpPorts (a line echo that puts its own
// address and port before each line, and answers an HTTP GET: 503 for a
// path with /sick, else 200) and each of udpPorts (an echo that puts
// "address:port|" before each datagram). Nothing listens on the dead
// ports. pins are the VIPs the services may pin, one per name, none of
// them where an unpinned name's VIP would go.
type rrWorld struct {
	addrs            []netip.Addr
	tcpPorts         []uint16
	udpPorts         []uint16
	deadTCP, deadUDP uint16
	pins             []netip.Addr
	pins6            map[string][]netip.Addr        // by pool6 (rrPools6), alike
	homes6           map[string]map[netip.Addr]bool // by pool6: where the names go unpinned
}

func startRRWorld(t *testing.T) *rrWorld {
	t.Helper()
	w := &rrWorld{pins6: map[string][]netip.Addr{}, homes6: map[string]map[netip.Addr]bool{}}
	for i := 1; i <= 4; i++ {
		w.addrs = append(w.addrs, netip.AddrFrom4([4]byte{127, 0, 0, byte(i)}))
	}
	for range 3 {
		w.tcpPorts = append(w.tcpPorts, w.listenTCP(t))
		w.udpPorts = append(w.udpPorts, w.listenUDP(t))
	}
	w.deadTCP, w.deadUDP = rrFreePort(t, "tcp"), rrFreePort(t, "udp")
	// Where the names go unpinned: their home slots (or the nearest free).
	homes := rrHomes(t, netip.Prefix{})
	for a := netip.MustParseAddr("10.100.0.200"); len(w.pins) < len(rrNames); a = a.Next() {
		if !homes[a] {
			w.pins = append(w.pins, a)
		}
	}
	for _, p := range rrPools6 {
		pool6 := netip.MustParsePrefix(p)
		homes := rrHomes(t, pool6)
		w.homes6[p] = homes
		for a := pool6.Addr().Next().Next().Next().Next(); len(w.pins6[p]) < len(rrNames); a = a.Next() {
			if !homes[a] {
				w.pins6[p] = append(w.pins6[p], a)
			}
		}
	}
	return w
}

// rrHomes are the VIPs rrNames get unpinned, of pool6 when it is valid.
func rrHomes(t *testing.T, pool6 netip.Prefix) map[netip.Addr]bool {
	t.Helper()
	pool, _, err := catalog.OpenPool(catalog.PoolConfig{Prefix: netip.MustParsePrefix("10.100.0.0/24"), Prefix6: pool6, HoldDown: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var reqs []catalog.Request
	for _, n := range rrNames {
		reqs = append(reqs, catalog.Request{Service: n})
	}
	allocs, err := pool.Reconcile(reqs)
	if err != nil {
		t.Fatal(err)
	}
	homes := map[netip.Addr]bool{}
	for _, a := range allocs {
		homes[a.VIP] = true
		if a.VIP6.IsValid() {
			homes[a.VIP6] = true
		}
	}
	return homes
}

// listenTCP serves the line echo on one port of every address.
func (w *rrWorld) listenTCP(t *testing.T) uint16 {
	t.Helper()
	for range 20 {
		var ls []net.Listener
		for _, a := range w.addrs {
			port := 0
			if len(ls) > 0 {
				port = ls[0].Addr().(*net.TCPAddr).Port
			}
			l, err := net.Listen("tcp4", netip.AddrPortFrom(a, uint16(port)).String())
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
		if len(ls) == len(w.addrs) {
			for _, l := range ls {
				serveRRLines(t, l, l.Addr().String())
			}
			return uint16(ls[0].Addr().(*net.TCPAddr).Port)
		}
		for _, l := range ls {
			l.Close()
		}
	}
	t.Fatal("no TCP port free on 127.0.0.1-4")
	return 0
}

// listenUDP serves the UDP echo on one port of every address.
func (w *rrWorld) listenUDP(t *testing.T) uint16 {
	t.Helper()
	for range 20 {
		var cs []*net.UDPConn
		for _, a := range w.addrs {
			port := 0
			if len(cs) > 0 {
				port = cs[0].LocalAddr().(*net.UDPAddr).Port
			}
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, uint16(port))))
			if err != nil {
				break
			}
			cs = append(cs, c)
		}
		if len(cs) == len(w.addrs) {
			for _, c := range cs {
				serveUDPEcho(t, c, []byte(c.LocalAddr().String()+"|"))
			}
			return uint16(cs[0].LocalAddr().(*net.UDPAddr).Port)
		}
		for _, c := range cs {
			c.Close()
		}
	}
	t.Fatal("no UDP port free on 127.0.0.1-4")
	return 0
}

// rrFreePort returns a port nothing listens on (for a moment) on 127.0.0.1.
func rrFreePort(t *testing.T, network string) uint16 {
	t.Helper()
	if network == "tcp" {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return uint16(l.Addr().(*net.TCPAddr).Port)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// serveRRLines answers each line with "<id> <line>", or an HTTP GET.
func serveRRLines(t *testing.T, l net.Listener, id string) {
	serveOn(t, l, func(c net.Conn) {
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if strings.HasPrefix(line, "GET ") {
			for {
				h, err := r.ReadString('\n')
				if err != nil || strings.TrimSpace(h) == "" {
					break
				}
			}
			status := "200 OK"
			if strings.Contains(line, "/sick") {
				status = "503 Service Unavailable"
			}
			fmt.Fprintf(c, "HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status)
			return
		}
		for {
			if _, err := fmt.Fprintf(c, "%s %s", id, line); err != nil {
				return
			}
			if line, err = r.ReadString('\n'); err != nil {
				return
			}
		}
	})
}

func (w *rrWorld) port(proto string, i int) uint16 {
	if proto == "udp" {
		return w.udpPorts[i]
	}
	return w.tcpPorts[i]
}

// healthPort is the health.port of h as written.
func (w *rrWorld) healthPort(h rrHealth) uint16 {
	switch {
	case h.port == -2 && h.proto() == "udp":
		return w.deadUDP
	case h.port == -2:
		return w.deadTCP
	}
	return w.port(h.proto(), h.port)
}

// rrSource is the client address of round r in prefix q; rounds past
// rrRounds are the races' and the flows kept across reloads.
func rrSource(q, r int) netip.Addr {
	a := rrPrefixes[q].Addr().As4()
	a[3] += byte(1 + r)
	return netip.AddrFrom4(a)
}

// rrSource6 is rrSource's twin in the IPv6 twin of prefix q.
func rrSource6(q, r int) netip.Addr {
	a := rrPrefixes6[q].Addr().As16()
	a[15] += byte(1 + r)
	return netip.AddrFrom16(a)
}

// rrTwin6 is the IPv6 twin of a client address of rrSource.
func rrTwin6(a netip.Addr) netip.Addr {
	for q, p := range rrPrefixes {
		if p.Contains(a) {
			return rrSource6(q, int(a.As4()[3]-p.Addr().As4()[3])-1)
		}
	}
	panic(fmt.Sprintf("%s is in no prefix", a))
}

// rrGateway6 is the gateway's own address in pool6 (its DNS), or the zero
// Addr without one.
func rrGateway6(pool6 string) netip.Addr {
	if pool6 == "" {
		return netip.Addr{}
	}
	return netip.MustParsePrefix(pool6).Addr().Next()
}

const (
	rrRounds  = 100 // observation rounds: each has its own client addresses, so rate limits start afresh
	rrSources = 126 // client addresses per prefix: rounds, then the races' and the kept flows'
)

// rrGW is a gateway of the test with its client stack.
type rrGW struct {
	name   string // "running" or "fresh", for messages
	g      *Gateway
	client *netstacktest.Client
	path   string // its configuration file ("" for a fresh one)
	api    http.Handler
	ping   uint16 // the last echo request's sequence number
}

// startRRGateway starts a gateway from text, on the shared clock, with a
// client stack holding addrs. A running one reads text from a file that
// Reload reads again: it is not watched, so that only the test reloads it.
func startRRGateway(t *testing.T, name, text string, fromFile bool, addrs []netip.Addr, clk *fakeNow) (*rrGW, error) {
	dir, err := os.MkdirTemp(t.TempDir(), name)
	if err != nil {
		return nil, err
	}
	text = strings.ReplaceAll(text, "STATE", filepath.Join(dir, "state"))
	var cfg *conf.Gateway
	path := ""
	if fromFile {
		path = filepath.Join(dir, "gw.toml")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			return nil, err
		}
		cfg, err = conf.LoadGateway(path)
	} else {
		cfg, err = conf.ParseGateway("gw.toml", []byte(text))
	}
	if err != nil {
		return nil, err
	}
	return openRRGateway(name, path, cfg, addrs, clk)
}

// restart starts a gateway again on gw's file and state directory (gw
// closed first), as its process would be restarted.
func (gw *rrGW) restart(addrs []netip.Addr, clk *fakeNow) (*rrGW, error) {
	gw.g.Close()
	cfg, err := conf.LoadGateway(gw.path)
	if err != nil {
		return nil, err
	}
	return openRRGateway(gw.name, gw.path, cfg, addrs, clk)
}

func openRRGateway(name, path string, cfg *conf.Gateway, addrs []netip.Addr, clk *fakeNow) (*rrGW, error) {
	client, err := netstacktest.NewClient(1420, addrs...)
	if err != nil {
		return nil, err
	}
	up := map[netip.Addr]bool{}
	for i := 1; i <= 4; i++ {
		up[netip.AddrFrom4([4]byte{127, 0, 0, byte(i)})] = true
	}
	g, err := New(cfg, Options{Device: client, Pinger: fakePinger{up: up}, Now: clk.now}, nil)
	if err != nil {
		client.Close()
		return nil, err
	}
	g.noWatch = true // the test alone reloads
	if err := g.Start(); err != nil {
		return nil, err
	}
	return &rrGW{name: name, g: g, client: client, path: path, api: g.apiHandler("")}, nil
}

// write replaces the running gateway's file, as an editor does.
func (gw *rrGW) write(text string) error {
	text = strings.ReplaceAll(text, "STATE", filepath.Join(filepath.Dir(gw.path), "state"))
	tmp := gw.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, gw.path)
}

// call serves one API request.
func (gw *rrGW) call(method, path string) (int, string) {
	rec := httptest.NewRecorder()
	gw.api.ServeHTTP(rec, httptest.NewRequest(method, "http://127.0.0.1:7780"+path, nil))
	return rec.Code, rec.Body.String()
}

// services returns GET /v1/services.
func (gw *rrGW) services() ([]apiService, error) {
	code, body := gw.call("GET", "/v1/services")
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/services: %d %s", code, body)
	}
	var out struct{ Services []apiService }
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		return nil, err
	}
	return out.Services, nil
}

// vips returns the services' VIPs by name, as GET /v1/services shows them,
// IPv4 and IPv6.
func (gw *rrGW) vips() (v4, v6 map[string]netip.Addr, err error) {
	svcs, err := gw.services()
	if err != nil {
		return nil, nil, err
	}
	v4, v6 = map[string]netip.Addr{}, map[string]netip.Addr{}
	for _, s := range svcs {
		a, err := netip.ParseAddr(s.VIP)
		if err != nil {
			return nil, nil, fmt.Errorf("service %s: VIP %q: %w", s.Name, s.VIP, err)
		}
		v4[s.Name] = a
		if s.VIP6 == "" {
			continue
		}
		if a, err = netip.ParseAddr(s.VIP6); err != nil || !a.Is6() {
			return nil, nil, fmt.Errorf("service %s: VIP6 %q: %v", s.Name, s.VIP6, err)
		}
		v6[s.Name] = a
	}
	return v4, v6, nil
}

// rrObs is what one round saw of a gateway. VIPs are named by service
// (vip(web)), so that two gateways that gave a service different VIPs
// compare.
type rrObs struct {
	vips  map[string]netip.Addr
	vips6 map[string]netip.Addr // the IPv6 VIPs, of the services that have one
	facts map[string]string     // what a fresh gateway must see alike
	// subsets are series the fresh gateway must have and the running
	// one may have more of (made by earlier rounds, for services and
	// tenants still configured).
	subsets map[string][]string
	errs    []string // what this gateway alone did wrong
}

func (o *rrObs) errf(format string, args ...any) {
	o.errs = append(o.errs, fmt.Sprintf(format, args...))
}

// normalizer names VIPs by service in what the gateway said.
type normalizer struct{ r *strings.Replacer }

func newNormalizer(vips, vips6 map[string]netip.Addr, novips []netip.Addr) normalizer {
	var pairs []string
	add := func(a netip.Addr, name string) {
		v, ptr := "vip("+name+")", "ptr("+name+")"
		if a.Is6() {
			v, ptr = "vip6("+name+")", "ptr6("+name+")"
			pairs = append(pairs, "["+a.String()+"]:", "["+v+"]:")
		}
		rev := rrReverse(a)
		pairs = append(pairs, rev, ptr, a.String()+"\t", v+"\t", a.String()+"\"", v+"\"")
		pairs = append(pairs, a.String()+":", v+":", a.String()+"\n", v+"\n")
	}
	for n, a := range vips {
		add(a, n)
	}
	for n, a := range vips6 {
		add(a, n)
	}
	for _, a := range novips {
		add(a, "novip")
	}
	return normalizer{strings.NewReplacer(pairs...)}
}

func (n normalizer) of(s string) string { return strings.TrimSuffix(n.r.Replace(s+"\n"), "\n") }

func rrReverse(a netip.Addr) string {
	if a.Is6() {
		var b strings.Builder
		x := a.As16()
		for i := 15; i >= 0; i-- {
			fmt.Fprintf(&b, "%x.%x.", x[i]&0xf, x[i]>>4)
		}
		return b.String() + "ip6.arpa."
	}
	b := a.As4()
	return fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa.", b[3], b[2], b[1], b[0])
}

// observe runs one round against gw, configured with cfg (as the fresh
// gateway has it: its restart-only keys are those the running gateway
// started with). novips are VIPs no service has, asked about in DNS, the
// last one also probed with a flow and a ping. round
// picks the client addresses.
func (gw *rrGW) observe(t *testing.T, cfg *rrConfig, w *rrWorld, round int, novips []netip.Addr) *rrObs {
	o := &rrObs{facts: map[string]string{}, subsets: map[string][]string{}}
	gw.closeFlows(o) // of races and flows kept across the reload
	var err error
	if o.vips, o.vips6, err = gw.vips(); err != nil {
		o.errf("%v", err)
		return o
	}
	if got, want := slices.Sorted(slices.Values(mapKeys(o.vips))), cfg.serviceNames(); !slices.Equal(got, want) {
		o.errf("GET /v1/services lists %v, want %v", got, want)
	}
	gw6 := rrGateway6(cfg.restart.pool6) // where IPv6 clients ask, when there is a pool6
	if got, want := slices.Sorted(slices.Values(mapKeys(o.vips6))), cfg.serviceNames(); gw6.IsValid() && !slices.Equal(got, want) {
		o.errf("GET /v1/services lists IPv6 VIPs of %v, want %v", got, want)
	}
	gw.checkVIPsApart(o, cfg.restart.pool6)
	norm := newNormalizer(o.vips, o.vips6, novips)
	gw.waitUsable(o, cfg, 5*time.Second)

	var wg sync.WaitGroup
	var mu sync.Mutex
	unadmitted := map[string]string{}
	for q := range rrPrefixes {
		if cfg.tenantOf(q) != "" {
			continue
		}
		wg.Add(1)
		go func() { // a source in no tenant gets nothing, DNS included
			defer wg.Done()
			got := gw.dropped(rrSource(q, round), netip.AddrPortFrom(rrGatewayAddr, 53))
			if gw6.IsValid() && cfg.v6 {
				got += ", IPv6 " + gw.dropped(rrSource6(q, round), netip.AddrPortFrom(gw6, 53))
			}
			mu.Lock()
			unadmitted[fmt.Sprintf("dns/unadmitted/%d", q)] = got
			mu.Unlock()
		}()
	}
	zone := cfg.restart.zoneName()
	v6 := gw6.IsValid() && cfg.v6 // IPv6 clients have somewhere to go
	for _, tn := range cfg.tenants {
		q := slices.Min(tn.prefixes)
		gw.observeDNS(o, norm, cfg, tn.name, rrSource(q, round), netip.AddrPortFrom(rrGatewayAddr, 53), "dns", zone, novips)
		if v6 {
			gw.observeDNS(o, norm, cfg, tn.name, rrSource6(q, round), netip.AddrPortFrom(gw6, 53), "dns6", zone, novips)
		}
	}
	wg.Wait()
	maps.Copy(o.facts, unadmitted)
	var held []net.Conn
	for _, tn := range cfg.tenants {
		q := slices.Min(tn.prefixes)
		held = append(held, gw.observeFlows(o, cfg, tn.name, rrSource(q, round), o.vips, rrLast(novips, false), "flow")...)
		if v6 {
			held = append(held, gw.observeFlows(o, cfg, tn.name, rrSource6(q, round), o.vips6, rrLast(novips, true), "flow6")...)
		}
	}
	for _, tn := range cfg.tenants {
		gw.observePings(o, cfg, tn.name, rrSource(slices.Min(tn.prefixes), round), rrLast(novips, false))
	}
	gw.observeOpenFlows(o, norm)
	if v6 {
		checkV6(o, cfg, zone)
	}
	for _, c := range held {
		c.Close()
	}
	gw.closeFlows(o)
	gw.waitStates(o, cfg, 5*time.Second)
	gw.observeAPI(o, norm)
	gw.observeMetrics(o, cfg)
	return o
}

func mapKeys[K comparable, V any](m map[K]V) []K {
	var out []K
	for k := range m {
		out = append(out, k)
	}
	return out
}

// rrGatewayAddr is the gateway's own address in the IPv4 pool.
var rrGatewayAddr = netip.MustParseAddr("10.100.0.1")

// rrLast is the last of novips of a family: the VIP without a service
// that flows and pings try.
func rrLast(novips []netip.Addr, v6 bool) netip.Addr {
	for i := len(novips) - 1; i >= 0; i-- {
		if novips[i].Is6() == v6 {
			return novips[i]
		}
	}
	return netip.Addr{}
}

// checkVIPsApart: every service has its own VIP in the pool, none the
// gateway's or the pool's ends, and its own IPv6 VIP in pool6 (none
// without a pool6), none the pool's first two addresses.
func (gw *rrGW) checkVIPsApart(o *rrObs, pool6 string) {
	pool := netip.MustParsePrefix("10.100.0.0/24")
	owner := map[netip.Addr]string{}
	for n, a := range o.vips {
		if !pool.Contains(a) || a == pool.Addr() || a == pool.Addr().Next() || a == netip.MustParseAddr("10.100.0.255") {
			o.errf("service %s has VIP %s", n, a)
		}
		if other, ok := owner[a]; ok {
			o.errf("services %s and %s share VIP %s", n, other, a)
		}
		owner[a] = n
	}
	for n, a := range o.vips6 {
		if pool6 == "" {
			o.errf("service %s has IPv6 VIP %s without a pool6", n, a)
			continue
		}
		p := netip.MustParsePrefix(pool6)
		if !p.Contains(a) || a == p.Addr() || a == p.Addr().Next() {
			o.errf("service %s has IPv6 VIP %s (pool6 %s)", n, a, p)
		}
		if other, ok := owner[a]; ok {
			o.errf("services %s and %s share IPv6 VIP %s", n, other, a)
		}
		owner[a] = n
	}
}

// waitUsable waits until each backend takes new flows exactly when its
// service's checks pass: a fresh gateway's backends take flows before
// their first check, one whose checks failed until they pass again.
func (gw *rrGW) waitUsable(o *rrObs, cfg *rrConfig, d time.Duration) {
	gw.waitBackends(o, cfg, d, "take new flows as their checks say", func(s *rrService, b apiBackend) bool {
		return b.Healthy == s.passes()
	})
}

// waitStates waits until each backend's state is the one its checks
// lead to: up or down (by a check of the running kind: one down by the
// checks before a reload stays down, and tells their error until the new
// ones fail), or unknown without checks.
func (gw *rrGW) waitStates(o *rrObs, cfg *rrConfig, d time.Duration) {
	gw.waitBackends(o, cfg, d, "reach the state their checks lead to", func(s *rrService, b apiBackend) bool {
		switch {
		case !s.passes():
			return b.State == "down" && strings.HasPrefix(b.LastError, s.health.typ+" check: ")
		case s.checked():
			return b.State == "up"
		}
		return b.State == "unknown"
	})
}

func (gw *rrGW) waitBackends(o *rrObs, cfg *rrConfig, d time.Duration, what string, ok func(*rrService, apiBackend) bool) {
	deadline := time.Now().Add(d)
	for {
		svcs, err := gw.services()
		if err != nil {
			o.errf("%v", err)
			return
		}
		var bad []string
		for _, as := range svcs {
			s := cfg.service(as.Name)
			if s == nil {
				continue
			}
			for _, b := range as.Backends {
				if !ok(s, b) {
					bad = append(bad, fmt.Sprintf("%s/%s %s healthy=%v %q", as.Name, b.Address, b.State, b.Healthy, b.LastError))
				}
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			o.errf("backends did not %s within %v: %v", what, d, bad)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dropped sends a DNS query from src, in no tenant: it must get nothing.
func (gw *rrGW) dropped(src netip.Addr, server netip.AddrPort) string {
	c, err := gw.client.DialUDP(src, server)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	c.Write(dnsQueryFor(1, "web.ztna.internal", 1))
	c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	if _, err := c.Read(make([]byte, 512)); isTimeout(err) {
		return "dropped"
	}
	return "answered"
}

// observeDNS asks the gateway's DNS at server (10.100.0.1, or its address
// in pool6) from src, of tenant, for every name of the zone a service may
// have; the facts' keys start with prefix.
func (gw *rrGW) observeDNS(o *rrObs, norm normalizer, cfg *rrConfig, tenant string, src netip.Addr, server netip.AddrPort, prefix, zone string, novips []netip.Addr) {
	c, err := gw.client.DialUDP(src, server)
	if err != nil {
		o.errf("DNS from %s: %v", src, err)
		return
	}
	defer c.Close()
	ask := func(key, name, qtype string) {
		r, err := resolvertest.Exchange(c, name, qtype)
		if err != nil {
			o.facts[key] = "error"
			o.errf("DNS %s %s from %s: %v", name, qtype, tenant, err)
			return
		}
		var lines []string
		for _, rr := range r.Answer {
			lines = append(lines, rrSOASerial(norm.of(rr)))
		}
		for _, rr := range r.Authority {
			lines = append(lines, "authority: "+rrSOASerial(norm.of(rr)))
		}
		slices.Sort(lines)
		o.facts[key] = r.Rcode + " " + strings.Join(lines, " | ")
	}
	for _, n := range rrNames {
		fq := n + "." + zone
		ask(fmt.Sprintf(prefix+"/%s/%s/A", tenant, n), fq, "A")
		ask(fmt.Sprintf(prefix+"/%s/%s/AAAA", tenant, n), fq, "AAAA")
		ask(fmt.Sprintf(prefix+"/%s/%s/SRV _9._tcp", tenant, n), "_9._tcp."+fq, "SRV")
		if s := cfg.service(n); s != nil {
			for _, p := range s.ports {
				label := fmt.Sprint(p.port)
				if p.name != "" {
					label = p.name
				}
				srv := fmt.Sprintf("_%s._%s.%s", label, p.proto, fq)
				ask(fmt.Sprintf(prefix+"/%s/%s/SRV %s", tenant, n, srv), srv, "SRV")
			}
		}
	}
	ask(prefix+"/"+tenant+"/WEB/A", "WEB."+strings.ToUpper(zone), "A")
	for n, a := range o.vips {
		ask(fmt.Sprintf(prefix+"/%s/ptr(%s)", tenant, n), a.String(), "PTR")
	}
	for n, a := range o.vips6 {
		ask(fmt.Sprintf(prefix+"/%s/ptr6(%s)", tenant, n), a.String(), "PTR")
	}
	var none []string
	for _, a := range novips {
		r, err := resolvertest.Exchange(c, a.String(), "PTR")
		if err != nil {
			o.errf("DNS PTR %s: %v", a, err)
			continue
		}
		none = append(none, r.Rcode+" "+strings.Join(r.Answer, ","))
	}
	slices.Sort(none)
	o.facts[prefix+"/"+tenant+"/ptr(novip)"] = strings.Join(slices.Compact(none), " | ")
	ask(prefix+"/"+tenant+"/apex/SOA", zone, "SOA")
	ask(prefix+"/"+tenant+"/apex/NS", zone, "NS")
	ask(prefix+"/"+tenant+"/outside", "example.com.", "A")
	if zone != "ztna.internal." {
		ask(prefix+"/"+tenant+"/default zone", "web.ztna.internal.", "A")
	} else {
		ask(prefix+"/"+tenant+"/other zone", "web.corp.internal.", "A")
	}
}

// checkV6 holds what a gateway with a pool6 shows its IPv6 clients to
// what it shows its IPv4 ones, and its AAAA and IPv6 PTR answers to the
// configuration: an IPv6 client of a tenant gets the DNS answers an IPv4
// client of the tenant gets, and its new flows to the IPv6 VIPs go where
// the IPv4 client's went (where no limit counts them both, and the
// source decides no backend); a service the tenant may reach has an AAAA
// record of its IPv6 VIP and a PTR of it, others neither.
func checkV6(o *rrObs, cfg *rrConfig, zone string) {
	for k, got := range o.facts {
		rest, ok := strings.CutPrefix(k, "dns6/")
		if ok && got != o.facts["dns/"+rest] {
			o.errf("%s: %s; over IPv4: %s", k, got, o.facts["dns/"+rest])
		}
		rest, ok = strings.CutPrefix(k, "flow6/")
		if !ok {
			continue
		}
		f := strings.Split(rest, "/") // tenant, service, protocol, port; or tenant, novip
		if len(f) == 4 {
			s := cfg.service(f[1])
			if cfg.limited(f[0], s) || cfg.rated(f[0]) || s.balance == "source_hash" {
				continue
			}
		}
		if want := o.facts["flow/"+rest]; got != want {
			o.errf("%s: %s; over IPv4: %s", k, got, want)
		}
	}
	for _, t := range cfg.tenants {
		for _, n := range rrNames {
			s := cfg.service(n)
			visible := s != nil && s.allows(t.name)
			aaaa := o.facts[fmt.Sprintf("dns/%s/%s/AAAA", t.name, n)]
			if has := strings.Contains(aaaa, "AAAA vip6("+n+")"); has != visible {
				o.errf("%s sees %s: %v; AAAA %s", t.name, n, visible, aaaa)
			}
			if !visible {
				continue
			}
			if ptr := o.facts[fmt.Sprintf("dns/%s/ptr6(%s)", t.name, n)]; !strings.Contains(ptr, "PTR "+n+"."+zone) {
				o.errf("%s sees %s: PTR of its IPv6 VIP %s", t.name, n, ptr)
			}
		}
	}
}

// rrSOASerial blanks a SOA record's serial: it counts the zone's
// changes, which differ between a gateway reloaded and one started.
func rrSOASerial(rr string) string {
	f := strings.Fields(rr)
	if len(f) == 11 && f[3] == "SOA" {
		f[6] = "SERIAL"
		return strings.Join(f, " ")
	}
	return strings.Join(f, " ")
}

// probe opens one new flow from src to dst and reports where it went:
// the backend's address and port, or how it was refused and why (the
// reasons ztgate_flows_refused_total counted meanwhile). The flow is left
// open (its conn returned) so that limits and least_conn see it.
func (gw *rrGW) probe(proto string, src netip.Addr, dst netip.AddrPort) (string, net.Conn) {
	before := gw.refusals(proto)
	res, c := gw.open(proto, src, dst)
	if c == nil {
		var why []string
		for r, n := range gw.refusals(proto) {
			if n > before[r] {
				why = append(why, r)
			}
		}
		slices.Sort(why)
		res += " (" + strings.Join(why, ",") + ")"
	}
	return res, c
}

// refusals reads ztgate_flows_refused_total of proto by reason.
func (gw *rrGW) refusals(proto string) map[string]float64 {
	out := make(map[string]float64, len(refusalReasons))
	for _, r := range refusalReasons {
		out[r] = testutil.ToFloat64(gw.g.m.refusedBy[refusal{proto, r}])
	}
	return out
}

func (gw *rrGW) open(proto string, src netip.Addr, dst netip.AddrPort) (string, net.Conn) {
	if proto == "udp" {
		c, err := gw.client.DialUDP(src, dst)
		if err != nil {
			return "error: " + err.Error(), nil
		}
		c.Write([]byte("probe"))
		// An ICMP error wakes no reader (readAnswer): short reads find it.
		buf := make([]byte, 512)
		deadline := time.Now().Add(3 * time.Second)
		var n int
		for {
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			n, err = c.Read(buf)
			switch {
			case err == nil:
			case strings.Contains(err.Error(), "refused"):
				c.Close()
				return "refused", nil
			case !isTimeout(err):
				c.Close()
				return "error: " + err.Error(), nil
			case time.Now().Before(deadline):
				continue
			default:
				c.Close()
				return "silent", nil
			}
			break
		}
		c.SetReadDeadline(time.Time{})
		backend, _, _ := strings.Cut(string(buf[:n]), "|")
		return backend, c
	}
	rateDrops := func() float64 {
		n := 0.0
		for _, r := range []string{refuseRate, refuseTenantRate, refuseServiceRate} {
			n += testutil.ToFloat64(gw.g.m.refusedBy[refusal{"tcp", r}])
		}
		return n
	}
	before := rateDrops()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() { // a SYN dropped for a rate is counted at once; the client would retry in a second
		for ctx.Err() == nil {
			if rateDrops() > before {
				cancel()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	c, err := gw.client.DialTCP(ctx, src, dst)
	switch {
	case err != nil && strings.Contains(err.Error(), "refused"):
		return "refused", nil
	case err != nil && rateDrops() > before:
		return "dropped", nil
	case err != nil:
		return "error: " + err.Error(), nil
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "probe\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	c.SetDeadline(time.Time{})
	if err != nil {
		c.Close()
		return "closed: " + err.Error(), nil
	}
	backend, _, _ := strings.Cut(line, " ")
	return backend, c
}

// idleOf is the idle timeout of the flow of proto from client, or "" without
// one. (A UDP flow and a TCP one may have one client address and port: the
// kernel picks each socket's port.)
func (gw *rrGW) idleOf(proto string, client net.Addr) string {
	ap, err := netip.ParseAddrPort(client.String())
	if err != nil {
		return ""
	}
	fs := gw.g.flows.list(func(f *flow) bool { return f.client == ap && f.proto == proto })
	switch {
	case len(fs) == 0:
		return ""
	case fs[0].proto == "udp":
		return fs[0].svc.spec.Timeouts.UDPIdleFor(fs[0].vip.Port()).String()
	}
	return fs[0].idle.String()
}

// observeFlows opens, from src of tenant, as many new flows to each port
// of each service as it has backends (one where none may take it), one to
// a port none has, and one to a VIP without a service. A block of flows
// is described as the set of backends it reached (round_robin visits each
// once, from where the running gateway's turn happens to be; source_hash
// sends them all to one), or as what was refused and the ports reached
// (where limits cut it short, and with least_conn: rrBlock).
//
// vips are the VIPs of one family, novip one without a service; the
// facts' keys start with prefix.
func (gw *rrGW) observeFlows(o *rrObs, cfg *rrConfig, tenant string, src netip.Addr, vips map[string]netip.Addr, novip netip.Addr, prefix string) []net.Conn {
	var held []net.Conn
	for _, name := range cfg.serviceNames() {
		s := cfg.service(name)
		vip, ok := vips[name]
		if !ok {
			continue
		}
		ports := append(slices.Clone(s.ports), rrPort{proto: "tcp", port: rrUnmapped})
		for _, p := range ports {
			n := len(s.backends)
			if !s.allows(tenant) || !s.passes() || p.port == rrUnmapped {
				n = 1
			}
			key := fmt.Sprintf("%s/%s/%s/%s/%d", prefix, tenant, name, p.proto, p.port)
			var got, idles []string
			for range n {
				res, c := gw.probe(p.proto, src, netip.AddrPortFrom(vip, p.port))
				if c != nil {
					held = append(held, c)
					idles = append(idles, gw.idleOf(p.proto, c.LocalAddr()))
				}
				got = append(got, res)
			}
			idle := " idle " + strings.Join(slices.Compact(slices.Sorted(slices.Values(idles))), ",")
			o.facts[key] = rrBlock(got, s.balance, n) + idle
			if s.balance == "source_hash" && len(slices.Compact(slices.Clone(got))) == 1 && strings.HasPrefix(got[0], "127.") {
				// Which backend depends on the client's address: the same
				// in both gateways of a round, not from round to round.
				_, port, _ := strings.Cut(got[0], ":")
				o.facts[key] = fmt.Sprintf("%d to one backend on port %s%s", n, port, idle)
				o.facts["hash/"+key] = got[0]
			}
		}
	}
	// One VIP without a service, as each flow counts against the rates.
	res, c := gw.probe("tcp", src, netip.AddrPortFrom(novip, 80))
	if c != nil {
		held = append(held, c)
	}
	o.facts[prefix+"/"+tenant+"/novip"] = res
	return held
}

// rrBlock describes the outcomes of n flows to one port. With least_conn
// which backends a block reaches depends on the flows the blocks before
// left on each (a block cut short by a limit leaves them uneven) and on
// where the turn among equals is: only the ports tell.
func rrBlock(got []string, balance string, n int) string {
	reached := 0
	for _, g := range got {
		if strings.HasPrefix(g, "127.") {
			reached++
		}
	}
	if reached == n && balance != "least_conn" {
		if balance != "source_hash" {
			got = slices.Sorted(slices.Values(got))
		}
		return strings.Join(got, ",")
	}
	var other, ports []string
	for _, g := range got {
		if strings.HasPrefix(g, "127.") {
			_, port, _ := strings.Cut(g, ":")
			ports = append(ports, port)
		} else {
			other = append(other, g)
		}
	}
	slices.Sort(other)
	slices.Sort(ports)
	return fmt.Sprintf("%d of %d to ports %v, %v", reached, n, slices.Compact(ports), other)
}

// observePings pings each service's VIP, and the VIPs without one.
func (gw *rrGW) observePings(o *rrObs, cfg *rrConfig, tenant string, src netip.Addr, novip netip.Addr) {
	ping := func(dst netip.Addr) string {
		gw.ping++
		// Long enough for a reply under a loaded -race run: each ping
		// that gets none costs it.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p, err := gw.client.Ping(ctx, gw.g.lan, src, dst, 7, gw.ping, []byte("rr"))
		switch {
		case err != nil:
			return err.Error()
		case string(p) != "rr":
			return fmt.Sprintf("reply %q", p)
		}
		return "reply"
	}
	for _, name := range cfg.serviceNames() {
		o.facts[fmt.Sprintf("ping/%s/%s", tenant, name)] = ping(o.vips[name])
	}
	o.facts["ping/"+tenant+"/novip"] = ping(novip)
}

// observeOpenFlows takes GET /v1/flows while the round's flows are open:
// each flow's protocol, tenant, service, VIP and port and its backend's
// port (which backend, and the client's address and port, differ from
// gateway to gateway and round to round).
func (gw *rrGW) observeOpenFlows(o *rrObs, norm normalizer) {
	code, body := gw.call("GET", "/v1/flows")
	var list struct{ Flows []apiFlow }
	if err := json.Unmarshal([]byte(body), &list); code != http.StatusOK || err != nil {
		o.errf("GET /v1/flows: %d %s %v", code, body, err)
		return
	}
	var flows []string
	for _, f := range list.Flows {
		_, port, _ := strings.Cut(f.Backend, ":")
		flows = append(flows, norm.of(fmt.Sprintf("%s %s %s %s %s to port %s", f.Protocol, f.Tenant, f.Identity, f.Service, f.VIP, port)))
	}
	slices.Sort(flows)
	o.facts["api/flows open"] = strings.Join(flows, "\n")
}

// closeFlows closes every flow through the API and waits for them to end.
func (gw *rrGW) closeFlows(o *rrObs) {
	if code, body := gw.call("DELETE", "/v1/flows?all=true"); code != http.StatusOK {
		o.errf("DELETE /v1/flows: %d %s", code, body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for gw.g.flows.len() > 0 || gw.g.flowCount.Load() != 0 || gw.g.limits.entries() != "" {
		if time.Now().After(deadline) {
			o.errf("5 s after DELETE /v1/flows: %d flows left, %d counted, tenants holding %q",
				gw.g.flows.len(), gw.g.flowCount.Load(), gw.g.limits.entries())
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// observeAPI takes GET /v1/services and GET /v1/flows, without what
// tells when (last_change) and what the VIP checks see.
func (gw *rrGW) observeAPI(o *rrObs, norm normalizer) {
	svcs, err := gw.services()
	if err != nil {
		o.errf("%v", err)
		return
	}
	for _, s := range svcs {
		for i := range s.Backends {
			s.Backends[i].LastChange = time.Time{}
		}
		b, _ := json.Marshal(s)
		o.facts["api/services/"+s.Name] = norm.of(string(b))
	}
	code, body := gw.call("GET", "/v1/flows")
	o.facts["api/flows"] = fmt.Sprint(code, " ", strings.TrimSpace(body))
}

// rrServiceFamilies are the metric families with a service label.
var rrServiceFamilies = []string{
	"ztgate_flows_active", "ztgate_flows_total", "ztgate_bytes_total", "ztgate_dial_errors_total",
	"ztgate_backend_healthy", "ztgate_health_checks_total", "ztgate_health_check_duration_seconds",
	"ztgate_echo_requests_total",
}

// observeMetrics checks that no series is left of a service or tenant
// that cfg lacks or of a backend its service lacks, once every flow has
// ended, and notes the series: those of the backends' health, bytes and
// echo requests a fresh gateway has alike, the others (made by flows and
// checks) at least.
func (gw *rrGW) observeMetrics(o *rrObs, cfg *rrConfig) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		stale, series := gw.series(cfg)
		if len(stale) == 0 || time.Now().After(deadline) {
			for _, s := range stale {
				o.errf("stale series %s", s)
			}
			for fam, ss := range series {
				switch fam {
				case "ztgate_backend_healthy", "ztgate_bytes_total", "ztgate_echo_requests_total", "ztgate_dial_errors_total":
					o.facts["metric/"+fam] = strings.Join(ss, " ")
				default:
					o.subsets["metric/"+fam] = ss
				}
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// series returns the series of rrServiceFamilies by family, each as its
// labels (and value, where a fresh gateway must have the same), and the
// ones that should be gone.
func (gw *rrGW) series(cfg *rrConfig) (stale []string, series map[string][]string) {
	mfs, err := gw.g.m.reg.Gather()
	if err != nil {
		return []string{err.Error()}, nil
	}
	series = map[string][]string{}
	for _, mf := range mfs {
		fam := mf.GetName()
		if !slices.Contains(rrServiceFamilies, fam) {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			var parts []string
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
				parts = append(parts, lp.GetName()+"="+lp.GetValue())
			}
			id := fam + "{" + strings.Join(parts, ",") + "}"
			s := cfg.service(l["service"])
			switch {
			case s == nil:
				stale = append(stale, id+" (no such service)")
			case l["tenant"] != "" && !slices.Contains(cfg.tenantNames(), l["tenant"]):
				stale = append(stale, id+" (no such tenant)")
			case l["backend"] != "" && !slices.ContainsFunc(s.backends, func(i int) bool {
				return rrBackendAddr(i).String() == l["backend"]
			}):
				stale = append(stale, id+" (no such backend)")
			}
			switch fam {
			case "ztgate_flows_active":
				if v := m.GetGauge().GetValue(); v != 0 {
					stale = append(stale, fmt.Sprint(id, " = ", v, " with no flow open"))
				}
			case "ztgate_backend_healthy":
				id += fmt.Sprint("=", m.GetGauge().GetValue())
			case "ztgate_dial_errors_total":
				id += fmt.Sprint("=", m.GetCounter().GetValue())
			}
			series[fam] = append(series[fam], id)
		}
	}
	for _, ss := range series {
		sort.Strings(ss)
	}
	return stale, series
}

func rrBackendAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}) }
