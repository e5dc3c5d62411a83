package resolver

import (
	"net"

	"github.com/miekg/dns"
)

// dnsHandler serves a Server through miekg's dns.Handler interface, for
// callers that hold a dns.ResponseWriter: handler tests, and dns.Server in
// the benchmark that compares it with ServePacket.
type dnsHandler struct{ s *Server }

var _ dns.Handler = dnsHandler{}

// ServeDNS answers r, repacked: miekg has parsed it already.
func (h dnsHandler) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	raw, err := r.Pack()
	if err != nil {
		h.s.m.malformed.Inc()
		return
	}
	h.s.serveRaw(w, raw)
}

// serveRaw answers the message raw that w's server read, forwarding on the
// calling goroutine.
func (s *Server) serveRaw(w dns.ResponseWriter, raw []byte) {
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	wk := s.workers.Get().(*worker)
	defer s.workers.Put(wk)
	client := addrPortOf(w.RemoteAddr()).Addr().Unmap()
	out, fwd := s.handle(wk, raw, client, tcp)
	send := func(b []byte) error {
		_, err := w.Write(b)
		return err
	}
	switch {
	case out != nil:
		if send(out) != nil {
			s.m.drop(dropWrite)
		}
	case fwd:
		s.forward(raw, client, tcp, send)
	}
}
