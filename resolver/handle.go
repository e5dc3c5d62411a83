package resolver

import (
	"bytes"
	"net/netip"

	"github.com/miekg/dns"
)

// worker holds what answering needs per goroutine: scratch buffers and a
// cache of packed answers that no other goroutine touches.
type worker struct {
	q     query
	key   []byte // cache key scratch: wire name, type, class, EDNS class
	out   []byte // reply buffer
	cache *cache
}

func (s *Server) newWorker() *worker {
	return &worker{
		key:   make([]byte, 0, maxNameLen+5),
		out:   make([]byte, maxMsgSize+1),
		cache: newCache(s.cfg.CacheSize),
	}
}

// handle answers the message raw from client. It returns the reply to send
// (held in w until the next call), or fwd when raw is to be forwarded, or
// neither when raw is dropped. It never blocks.
func (s *Server) handle(w *worker, raw []byte, client netip.Addr, tcp bool) (out []byte, fwd bool) {
	if len(raw) < headerLen {
		s.m.malformed.Inc()
		s.m.drop(dropMalformed)
		return nil, false
	}
	if be16(raw[2:])&flagQR != 0 {
		s.m.drop(dropResponse)
		return nil, false
	}
	key, ok := parseQuery(raw, &w.q, w.key[:0])
	if !ok {
		return s.handleSlow(w, raw, client, tcp)
	}
	w.key = key
	if s.probeBack(key[:w.q.nameEnd-headerLen]) { // before the view: it may come from any address
		return s.servfailFast(w, raw, tcp), false
	}
	view := s.dir.View(client)
	c := w.cache
	if c == nil || !cacheable(view) {
		return s.answerFast(w, raw, view, tcp, nil)
	}
	c.from(s.zone.Load())
	e, hit := c.get(view, key)
	if !hit {
		s.m.misses.Inc()
		return s.answerFast(w, raw, view, tcp, c)
	}
	s.m.hits.Inc()
	if e.forward {
		if s.allLooping() {
			return s.servfailFast(w, raw, tcp), false
		}
		return nil, true
	}
	if len(e.reply) > replyLimit(tcp, w.q.edns, w.q.udpSize, s.cfg.MaxUDPSize) {
		return s.answerFast(w, raw, view, tcp, nil) // to be truncated
	}
	out = w.out[:len(e.reply)]
	copy(out, e.reply)
	patch(out, raw, &w.q)
	s.m.reply(e.rcode)
	return out, false
}

// answerFast answers a query parseQuery read into w, and stores the packed
// answer (or the mark to forward) in c when c is not nil.
func (s *Server) answerFast(w *worker, raw []byte, view View, tcp bool, c *cache) ([]byte, bool) {
	q := &w.q
	name := w.key[:q.nameEnd-headerLen]
	owner, _, err := dns.UnpackDomainName(name, 0)
	if err != nil { // parseQuery checked the name: cannot happen
		return s.failure(w, raw, err), false
	}
	a := s.zone.Load().resolve(view, &question{wire: name, owner: owner, qtype: q.qtype, qclass: q.qclass})
	if a.forward {
		if c != nil {
			c.put(view, w.key, cached{forward: true})
		}
		if !s.allLooping() {
			return nil, true
		}
		a, c = answer{rcode: dns.RcodeServerFailure}, nil
	}
	return s.replyFast(w, raw, view, owner, &a, tcp, c), false
}

// servfailFast answers SERVFAIL to a query parseQuery read into w.
func (s *Server) servfailFast(w *worker, raw []byte, tcp bool) []byte {
	owner, _, err := dns.UnpackDomainName(w.key[:w.q.nameEnd-headerLen], 0)
	if err != nil { // parseQuery checked the name: cannot happen
		return s.failure(w, raw, err)
	}
	return s.replyFast(w, raw, nil, owner, &answer{rcode: dns.RcodeServerFailure}, tcp, nil)
}

// replyFast packs a, the answer to a query parseQuery read into w whose
// name is owner, and stores it in c under view when c is not nil.
func (s *Server) replyFast(w *worker, raw []byte, view View, owner string, a *answer, tcp bool, c *cache) []byte {
	q := &w.q
	req := request{
		id: be16(raw), flags: q.flags, name: owner, qtype: q.qtype, qclass: q.qclass,
		edns: q.edns, do: q.do, udpSize: q.udpSize, tcp: tcp,
	}
	m := s.message(&req, a)
	out, err := m.PackBuffer(w.out)
	if err != nil {
		return s.failure(w, raw, err)
	}
	if c != nil && bytes.Equal(out[headerLen:q.nameEnd], w.key[:q.nameEnd-headerLen]) {
		c.put(view, w.key, cached{reply: bytes.Clone(out), rcode: a.rcode})
	}
	if out, err = pack(m, w.out, req.limit(s.cfg.MaxUDPSize)); err != nil {
		return s.failure(w, raw, err)
	}
	patch(out, raw, q)
	s.m.reply(a.rcode)
	return out
}

// handleSlow answers what the fast path does not read: other opcodes,
// question counts other than one, compressed or malformed questions, other
// records, EDNS versions other than 0.
func (s *Server) handleSlow(w *worker, raw []byte, client netip.Addr, tcp bool) ([]byte, bool) {
	switch {
	case be16(raw[2:])&opcodeMask != 0:
		// The EDNS version is read before the opcode, as BIND reads them
		// (Unbound answers the opcode first; RFC 6891 orders neither): a
		// client that asks for a version this server lacks learns so
		// whatever it asked (§6.1.3).
		if opt, ok := findOPT(raw); ok && opt.found && raw[opt.start+6] != 0 {
			return s.headerOnly(w, raw, dns.RcodeBadVers), false
		}
		return s.headerOnly(w, raw, dns.RcodeNotImplemented), false
	case be16(raw[4:]) != 1:
		s.m.malformed.Inc()
		return s.headerOnly(w, raw, dns.RcodeFormatError), false
	}
	var m dns.Msg
	// questionEnd first: miekg accepts a question without type or class.
	if _, ok := questionEnd(raw); !ok || m.Unpack(raw) != nil || len(m.Question) != 1 {
		s.m.malformed.Inc()
		return s.headerOnly(w, raw, dns.RcodeFormatError), false
	}
	req, rcode := requestOf(&m, tcp)
	a := answer{rcode: rcode}
	if rcode == dns.RcodeSuccess {
		name, err := wireName(req.name, w.key[:cap(w.key)])
		if err != nil {
			s.m.malformed.Inc()
			return s.headerOnly(w, raw, dns.RcodeFormatError), false
		}
		if s.probeBack(name) {
			a = answer{rcode: dns.RcodeServerFailure}
		} else if a = s.zone.Load().resolve(s.dir.View(client), &question{wire: name, owner: req.name, qtype: req.qtype, qclass: req.qclass}); a.forward {
			if !s.allLooping() {
				return nil, true
			}
			a = answer{rcode: dns.RcodeServerFailure}
		}
	}
	out, err := pack(s.message(&req, &a), w.out, req.limit(s.cfg.MaxUDPSize))
	if err != nil {
		return s.failure(w, raw, err), false
	}
	s.m.reply(a.rcode)
	return out, false
}

// requestOf reads what a reply needs from a parsed query, and the rcode that
// answers it when it is not well-formed (FORMERR) or asks for an EDNS
// version other than 0 (BADVERS, RFC 6891 §6.1.3).
func requestOf(m *dns.Msg, tcp bool) (request, int) {
	q := m.Question[0]
	req := request{id: m.Id, name: q.Name, qtype: q.Qtype, qclass: q.Qclass, tcp: tcp}
	if m.RecursionDesired {
		req.flags |= flagRD
	}
	if m.CheckingDisabled {
		req.flags |= flagCD
	}
	var opts int
	for _, rr := range m.Extra {
		if opt, ok := rr.(*dns.OPT); ok {
			opts++
			req.edns, req.udpSize, req.do = true, opt.UDPSize(), opt.Do()
			if opt.Hdr.Name != "." || opts > 1 {
				req.edns = false
				return req, dns.RcodeFormatError
			}
			if opt.Version() != 0 {
				return req, dns.RcodeBadVers
			}
		}
	}
	return req, dns.RcodeSuccess
}

// wireName packs a presentation name into buf in lower case.
func wireName(name string, buf []byte) ([]byte, error) {
	n, err := dns.PackDomainName(name, buf, 0, nil, false)
	if err != nil {
		return nil, err
	}
	buf = buf[:n]
	for off := 0; off < n && buf[off] != 0; off += 1 + int(buf[off]) {
		for i := off + 1; i <= off+int(buf[off]) && i < n; i++ {
			buf[i] = lowerASCII(buf[i])
		}
	}
	return buf, nil
}

// headerOnly answers with a header and no other section but an OPT record
// when raw has one (RFC 6891 §6.1.1: an EDNS query gets an EDNS answer; a
// FORMERR without OPT tells the client that the server does not do EDNS),
// and counts the reply. A message that cannot be walked to its end gets
// the header alone. An rcode over 15 (BADVERS) needs the OPT record: it is
// passed only for a query whose OPT record can be read.
func (s *Server) headerOnly(w *worker, raw []byte, rcode int) []byte {
	s.m.reply(rcode)
	out := headerReply(w.out, raw, s.ra, rcode)
	if opt, ok := findOPT(raw); ok && opt.found {
		do := raw[opt.start+7] & byte(ednsDO>>8) // the high octet of the OPT's flags
		size := s.cfg.MaxUDPSize
		// The root, OPT, the UDP size, the rcode's upper 8 bits (BADVERS),
		// version 0, the flags, no options.
		out = append(out, 0, 0, typeOPT, byte(size>>8), byte(size), byte(rcode>>4), 0, do, 0, 0, 0)
		out[11] = 1 // ARCOUNT
	}
	return out
}

// failure answers SERVFAIL when a reply could not be packed.
func (s *Server) failure(w *worker, raw []byte, err error) []byte {
	s.log.Warn("resolver: cannot pack a reply", "err", err)
	return s.headerOnly(w, raw, dns.RcodeServerFailure)
}
