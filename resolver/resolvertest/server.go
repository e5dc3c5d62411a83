// Package resolvertest is a small authoritative DNS server for tests: A,
// AAAA and SRV records set and changed at run time, served on a loopback
// UDP and TCP port, so that tests of DNS-based discovery need no network.
package resolvertest

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"github.com/ztgate/ztgate/resolver"
)

// Server answers the records set on it; other names get NXDOMAIN.
type Server struct {
	addr netip.AddrPort
	udp  *dns.Server
	tcp  *dns.Server
	wg   sync.WaitGroup

	mu      sync.Mutex
	records map[string][]dns.RR // by lower-case fqdn
	fail    map[string]bool     // names answered SERVFAIL, by lower-case fqdn
	queries int
}

// Start serves on 127.0.0.1 (a free port, UDP and TCP).
func Start() (*Server, error) {
	var (
		pc  net.PacketConn
		l   net.Listener
		err error
	)
	// The free UDP port may be taken for TCP: then try another one.
	for range 20 {
		if pc, l, err = listenBoth(); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	s := &Server{addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), records: map[string][]dns.RR{}}
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: l, Handler: s}
	// Both have started when Start returns: Shutdown does nothing to a
	// server that has not started yet ("server not started"), which then
	// serves on, and Close would wait for it forever (a test ending at
	// once on a loaded machine did).
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started, failed := make(chan struct{}), make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
			}
		}()
		select {
		case <-started:
		case err := <-failed:
			s.Close()
			return nil, fmt.Errorf("resolvertest: %w", err)
		}
	}
	return s, nil
}

// listenBoth listens on a free UDP port of 127.0.0.1 and on the same TCP
// port.
func listenBoth() (net.PacketConn, net.Listener, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("resolvertest: %w", err)
	}
	return pc, l, nil
}

// Addr is where the server listens.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Queries returns how many queries the server answered.
func (s *Server) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries
}

// Close stops the server and waits for it.
func (s *Server) Close() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
	s.wg.Wait()
}

func fqdn(name string) string { return dns.Fqdn(strings.ToLower(name)) }

// SetHost makes name answer addrs (A and AAAA) with ttl seconds; no
// addresses removes the name.
func (s *Server) SetHost(name string, ttl uint32, addrs ...netip.Addr) {
	n := fqdn(name)
	var rrs []dns.RR
	for _, a := range addrs {
		if a.Is4() {
			rrs = append(rrs, &dns.A{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: a.AsSlice()})
		} else {
			rrs = append(rrs, &dns.AAAA{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: a.AsSlice()})
		}
	}
	s.set(n, dns.TypeA, dns.TypeAAAA, rrs)
}

// SetSRV makes name answer the SRV records with ttl seconds.
func (s *Server) SetSRV(name string, ttl uint32, recs ...resolver.SRV) {
	n := fqdn(name)
	var rrs []dns.RR
	for _, r := range recs {
		rrs = append(rrs, &dns.SRV{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
			Priority: r.Priority, Weight: r.Weight, Port: r.Port, Target: fqdn(r.Target)})
	}
	s.set(n, dns.TypeSRV, dns.TypeSRV, rrs)
}

func (s *Server) set(n string, t1, t2 uint16, rrs []dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := s.records[n][:0:0]
	for _, rr := range s.records[n] {
		if t := rr.Header().Rrtype; t != t1 && t != t2 {
			keep = append(keep, rr)
		}
	}
	if all := append(keep, rrs...); len(all) > 0 {
		s.records[n] = all
	} else {
		delete(s.records, n)
	}
}

// SetServFail makes name answer SERVFAIL (a failing resolver) while fail is
// true, and its records again after.
func (s *Server) SetServFail(name string, fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail == nil {
		s.fail = map[string]bool{}
	}
	s.fail[fqdn(name)] = fail
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	s.mu.Lock()
	s.queries++
	if len(q.Question) == 1 {
		qq := q.Question[0]
		rrs, ok := s.records[fqdn(qq.Name)]
		switch {
		case s.fail[fqdn(qq.Name)]:
			m.Rcode, rrs = dns.RcodeServerFailure, nil
		case !ok:
			m.Rcode = dns.RcodeNameError
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype == qq.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
		}
	}
	s.mu.Unlock()
	w.WriteMsg(m)
}
