package resolver

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// The model of TestDNSRandom (random_test.go): what a server should answer,
// derived from the zone's contents written out name by name (as an
// authoritative server's zone file would list them) rather than from the
// server's own code paths, and the fake upstreams the forwarding server asks
// for every other name.

// rndServer is one server under test and what the model knows of it.
type rndServer struct {
	s      *Server
	udp    string // its addresses
	tcp    string
	fwd    bool // it forwards to the fake upstreams
	zone   string
	ttl    uint32
	maxUDP int
	nsAddr netip.Addr
	pool4  netip.Prefix
	pool6  netip.Prefix
	serial uint32
	errs   chan error // of its Serve calls
}

// rndZone is a server's service zone as one tenant sees it: every name
// that exists (empty non-terminals with no records) and its records.
type rndZone map[string]map[uint16][]dns.RR

func (z rndZone) add(rr dns.RR) {
	z.ent(rr.Header().Name)
	h := rr.Header()
	z[h.Name][h.Rrtype] = append(z[h.Name][h.Rrtype], rr)
}

func (z rndZone) ent(name string) {
	if z[name] == nil {
		z[name] = map[uint16][]dns.RR{}
	}
}

func (sv *rndServer) hdr(owner string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: owner, Rrtype: t, Class: dns.ClassINET, Ttl: sv.ttl}
}

func (sv *rndServer) soa(apex string) dns.RR {
	return &dns.SOA{Hdr: sv.hdr(apex, dns.TypeSOA), Ns: "ns." + sv.zone, Mbox: "hostmaster." + sv.zone,
		Serial: sv.serial, Refresh: soaRefresh, Retry: soaRetry, Expire: soaExpire, Minttl: sv.ttl}
}

// addrRRs are the address records of name: an IPv4 address gives an A, an
// IPv6 one an AAAA.
func (sv *rndServer) addrRRs(name string, addrs ...netip.Addr) []dns.RR {
	var out []dns.RR
	for _, a := range addrs {
		switch {
		case a.Is4():
			out = append(out, &dns.A{Hdr: sv.hdr(name, dns.TypeA), A: a.AsSlice()})
		case a.IsValid():
			out = append(out, &dns.AAAA{Hdr: sv.hdr(name, dns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}
	return out
}

// serviceZone writes out the service zone of the entries a tenant sees.
func (sv *rndServer) serviceZone(entries []Entry) rndZone {
	z := rndZone{}
	apex, ns := sv.zone, "ns."+sv.zone
	z.add(sv.soa(apex))
	z.add(&dns.NS{Hdr: sv.hdr(apex, dns.TypeNS), Ns: ns})
	z.ent(ns)
	for _, rr := range sv.addrRRs(ns, sv.nsAddr) {
		z.add(rr)
	}
	for _, e := range entries {
		if e.Name == "ns" { // the server's own name
			continue
		}
		host := e.Name + "." + apex
		z.ent(host)
		for _, rr := range sv.addrRRs(host, e.VIP, e.VIP6) {
			z.add(rr)
		}
		for _, p := range e.Ports {
			proto := "_" + p.Protocol.String() + "." + host
			z.ent(proto)
			label := p.Name
			if label == "" {
				label = fmt.Sprint(p.Port)
			}
			z.add(&dns.SRV{Hdr: sv.hdr("_"+strings.ToLower(label)+"."+proto, dns.TypeSRV), Port: p.Port, Target: host})
		}
	}
	return z
}

// rndTenant is what one tenant sees of the catalog, for the model.
type rndTenant struct {
	view    *testView
	entries []Entry
	zones   []rndZone // by server
}

// rndWant is the reply a query should get.
type rndWant struct {
	drop     bool // no reply at all
	bare     bool // a header alone
	rcode    int
	aa, ra   bool
	opt, do  bool // an OPT record, with DO
	fwd      bool // relayed from an upstream
	echo     string
	sections [3][]dns.RR // answer, authority, additional in full
	upTC     bool        // the upstream answered TC itself
	// sizeLo and sizeHi bound the size of the whole reply: the server
	// packs names at the question in the case asked or in lower case.
	sizeLo, sizeHi int
}

// zoneAnswer answers a name in one of sv's zones; false when the name is
// in none of them.
func (sv *rndServer) zoneAnswer(z rndZone, view *testView, lname string, qtype uint16) (*rndWant, bool) {
	labels := dns.SplitDomainName(lname)
	if _, ok := hasSuffix(labels, dns.SplitDomainName(sv.zone)); ok {
		return authoritative(z, z, sv.soa(sv.zone), lname, qtype, sv.hdr), true
	}
	for _, p := range []netip.Prefix{sv.pool4, sv.pool6} {
		if !p.IsValid() {
			continue
		}
		apex, names, ok := sv.reverseNames(p, view, lname, labels)
		if ok {
			return authoritative(names, z, sv.soa(apex), lname, qtype, sv.hdr), true
		}
	}
	return nil, false
}

// reverseNames returns the apex of the reverse zone of p that holds lname,
// and lname's records as that zone would list them (nothing when it does
// not exist). The zone's names are its apexes (the first label boundary at
// or below the prefix length), the names of VIPs, and every canonical name
// between an apex and an address (empty non-terminals).
func (sv *rndServer) reverseNames(p netip.Prefix, view *testView, lname string, labels []string) (string, rndZone, bool) {
	suffix, step, full := "in-addr.arpa.", 8, 4
	if p.Addr().Is6() {
		suffix, step, full = "ip6.arpa.", 4, 32
	}
	if !strings.HasSuffix(lname, "."+suffix) {
		return "", nil, false
	}
	below := len(labels) - 2
	depth := (p.Bits() + step - 1) / step
	if below < depth {
		return "", nil, false
	}
	apex := strings.Join(labels[below-depth:], ".") + "."
	if !apexNames(p)[apex] {
		return "", nil, false
	}
	z := rndZone{}
	if apex == lname {
		z.add(sv.soa(apex))
		z.add(&dns.NS{Hdr: sv.hdr(apex, dns.TypeNS), Ns: "ns." + sv.zone})
	}
	if below > full {
		return apex, z, true
	}
	// Pad the name with zero labels to a whole address: canonical names
	// read back as they were written.
	padded := strings.Repeat("0.", full-below) + lname
	addr, ok := reverseAddr(padded, step == 4)
	if !ok {
		return apex, rndZone{}, true // not a name of the zone
	}
	switch {
	case below < full:
		z.ent(lname)
	default:
		if e, ok := view.Reverse(addr); ok {
			z.add(&dns.PTR{Hdr: sv.hdr(lname, dns.TypePTR), Ptr: e.Name + "." + sv.zone})
		}
	}
	return apex, z, true
}

// reverseAddr reads a whole reverse name and reports whether it is the
// canonical name of the address (decimal octets without leading zeros,
// lower-case nibbles).
func reverseAddr(name string, v6 bool) (netip.Addr, bool) {
	labels := dns.SplitDomainName(name)
	labels = labels[:len(labels)-2]
	slices.Reverse(labels)
	var a netip.Addr
	var err error
	if v6 {
		hex := strings.Join(labels, "")
		if len(hex) != 32 {
			return netip.Addr{}, false
		}
		var groups []string
		for i := 0; i < 32; i += 4 {
			groups = append(groups, hex[i:i+4])
		}
		a, err = netip.ParseAddr(strings.Join(groups, ":"))
	} else {
		a, err = netip.ParseAddr(strings.Join(labels, "."))
	}
	if err != nil {
		return netip.Addr{}, false
	}
	back, err := dns.ReverseAddr(a.String())
	return a, err == nil && back == name
}

// apexNames returns the apexes of p's reverse zones.
func apexNames(p netip.Prefix) map[string]bool {
	step, full := 8, 4
	if p.Addr().Is6() {
		step, full = 4, 32
	}
	depth := (p.Bits() + step - 1) / step
	bits := p.Addr().BitLen()
	out := map[string]bool{}
	for i := range 1 << (depth*step - p.Bits()) {
		b := p.Masked().Addr().AsSlice()
		addShifted(b, uint64(i), bits-depth*step)
		a, _ := netip.AddrFromSlice(b)
		rev, _ := dns.ReverseAddr(a.String())
		out[strings.Join(dns.SplitDomainName(rev)[full-depth:], ".")+"."] = true
	}
	return out
}

// addShifted adds v<<shift to the big-endian number b.
func addShifted(b []byte, v uint64, shift int) {
	carry := uint64(0)
	for i := len(b) - 1; i >= 0; i-- {
		bit := (len(b) - 1 - i) * 8
		add := carry
		if d := bit - shift; d >= -8 && d < 64 {
			switch {
			case d >= 0:
				add += (v >> d) & 0xff
			default:
				add += (v << -d) & 0xff
			}
		}
		sum := uint64(b[i]) + add
		b[i], carry = byte(sum), sum>>8
	}
}

// authoritative answers lname from z, a zone whose apex has soa: the
// records of the type asked, a minimal answer to ANY (RFC 8482), NODATA
// or NXDOMAIN with the SOA (RFC 2308), and the addresses of SRV and NS
// targets (names of the service zone svc) as additional records.
func authoritative(z, svc rndZone, soa dns.RR, lname string, qtype uint16, hdr func(string, uint16) dns.RR_Header) *rndWant {
	w := &rndWant{aa: true}
	rrs, exists := z[lname]
	switch {
	case !exists:
		w.rcode = dns.RcodeNameError
		w.sections[1] = []dns.RR{soa}
	case qtype == dns.TypeANY:
		w.sections[0] = []dns.RR{&dns.HINFO{Hdr: hdr(lname, dns.TypeHINFO), Cpu: "RFC8482"}}
	case len(rrs[qtype]) == 0:
		w.sections[1] = []dns.RR{soa}
	default:
		w.sections[0] = rrs[qtype]
		targets := map[string]bool{}
		for _, rr := range rrs[qtype] {
			var target string
			switch rr := rr.(type) {
			case *dns.SRV:
				target = rr.Target
			case *dns.NS:
				target = rr.Ns
			}
			if target != "" && !targets[target] {
				targets[target] = true
				w.sections[2] = append(w.sections[2], slices.Concat(svc[target][dns.TypeA], svc[target][dns.TypeAAAA])...)
			}
		}
	}
	return w
}

// The fake upstreams: each answers the names of a table the test changes
// between batches, in a mode per name and upstream.

type upMode int

const (
	upAnswer    upMode = iota
	upServfail         // SERVFAIL: the next upstream is asked
	upRefused          // REFUSED: likewise
	upTimeout          // no answer at all
	upTruncated        // TC and no records over UDP, the whole answer over TCP
	upStray            // over UDP, two replies that do not answer the query before the one that does
	numUpModes
)

var upModeNames = [numUpModes]string{"answer", "servfail", "refused", "timeout", "truncated", "stray"}

func (m upMode) String() string { return upModeNames[m] }

// upName is how the fake upstreams answer one name.
type upName struct {
	modes     [2]upMode
	aa        bool
	lowerEcho bool // the question comes back in lower case
	nx        bool
	rrs       map[uint16][]dns.RR
	soa       dns.RR // of negative answers
}

// upDefault answers names outside the table (and the loop probes).
var upDefault = &upName{nx: true, soa: &dns.SOA{
	Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 3600},
	Ns:  "a.root-servers.net.", Mbox: "nstld.verisign-grs.com.", Serial: 1, Refresh: 1800, Retry: 900, Expire: 604800, Minttl: 86400,
}}

// upTypes are the types an upstream name may have, in the order of its
// answer to ANY.
var upTypes = []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeMX}

// answer is the upstream's answer to qtype: rcode, answer and authority.
func (n *upName) answer(qtype uint16) (int, []dns.RR, []dns.RR) {
	if n.nx {
		return dns.RcodeNameError, nil, []dns.RR{n.soa}
	}
	var ans []dns.RR
	if qtype == dns.TypeANY {
		for _, t := range upTypes {
			ans = append(ans, n.rrs[t]...)
		}
	} else {
		ans = n.rrs[qtype]
	}
	if len(ans) == 0 {
		return dns.RcodeSuccess, nil, []dns.RR{n.soa}
	}
	return dns.RcodeSuccess, ans, nil
}

// upUDPSize is the EDNS size the fake upstreams advertise.
const upUDPSize = 1232

// atomicTable holds the upstreams' names; the test replaces the map whole.
type atomicTable = atomic.Pointer[map[string]*upName]

// fakeUpstream serves the table on a loopback UDP and TCP port.
type fakeUpstream struct {
	idx   int
	table *atomicTable
	addr  netip.AddrPort
	srvs  []*dns.Server
	wg    sync.WaitGroup
}

func (u *fakeUpstream) lookup(name string) *upName {
	if n := (*u.table.Load())[strings.ToLower(name)]; n != nil {
		return n
	}
	return upDefault
}

func (u *fakeUpstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	m := new(dns.Msg).SetReply(r)
	m.Compress = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	n := u.lookup(r.Question[0].Name)
	mode := n.modes[u.idx]
	if n.lowerEcho {
		m.Question[0].Name = strings.ToLower(m.Question[0].Name)
	}
	m.Authoritative = n.aa
	var ans, ns []dns.RR
	m.Rcode, ans, ns = n.answer(r.Question[0].Qtype)
	switch mode {
	case upTimeout:
		return
	case upServfail:
		m.Rcode = dns.RcodeServerFailure
	case upRefused:
		m.Rcode = dns.RcodeRefused
	default:
		for _, rr := range ans {
			m.Answer = append(m.Answer, dns.Copy(rr))
		}
		for _, rr := range ns {
			m.Ns = append(m.Ns, dns.Copy(rr))
		}
	}
	limit := dns.MinMsgSize
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(upUDPSize, opt.Do())
		limit = max(int(opt.UDPSize()), dns.MinMsgSize)
	}
	if !tcp {
		switch mode {
		case upTruncated:
			m.Answer, m.Ns, m.Truncated = nil, nil, true
		case upStray:
			other := m.Copy()
			other.Id ^= 0x5a5a
			_ = w.WriteMsg(other)
			other = m.Copy()
			other.Question[0].Name = under("stray", other.Question[0].Name)
			_ = w.WriteMsg(other)
		}
		// Truncate only what does not fit compressed: miekg's Truncate
		// turns compression off for a message whose uncompressed length
		// fits.
		if b, err := m.Pack(); err == nil && len(b) > limit {
			m.Truncate(limit)
		}
	}
	_ = w.WriteMsg(m)
}

// startFakeUpstream serves u on a new loopback port.
func startFakeUpstream(t testing.TB, u *fakeUpstream) {
	t.Helper()
	pc, l := listenBoth(t)
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	u.srvs = []*dns.Server{{PacketConn: pc, Handler: u}, {Listener: l, Handler: u}}
	for _, srv := range u.srvs {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		u.wg.Go(func() { _ = srv.ActivateAndServe() })
		<-started
	}
}

func (u *fakeUpstream) stop() {
	for _, srv := range u.srvs {
		_ = srv.Shutdown()
	}
	u.wg.Wait()
	u.srvs = nil
}
