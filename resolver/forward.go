package resolver

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// errUpstreamRcode is returned for an upstream's SERVFAIL or REFUSED: the
// next upstream is asked.
var errUpstreamRcode = errors.New("upstream failed the query")

// forward sends raw, a query from client, to the upstreams and replies
// with send: the first good answer, with the client's ID, or SERVFAIL when
// every upstream failed.
func (s *Server) forward(raw []byte, client netip.Addr, tcp bool, send func([]byte) error) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	id := randomID()
	c, chained := s.chain(raw, id)
	if !chained {
		c.query = append([]byte(nil), raw...)
		c.query[0], c.query[1] = byte(id>>8), byte(id)
	}
	var reply []byte
	err := errForwardLoop
	switch {
	case c.back:
		s.inflight.looped(c.backIDs)
		s.warnLoop("a query this DNS server forwarded came back to it: dns.upstreams leads to this server; answering SERVFAIL", raw, client)
	case c.long:
		s.warnLoop(fmt.Sprintf("a query came through %d forwarding servers or more: a loop; answering SERVFAIL", maxChain), raw, client)
	case s.inflight.cameBack(raw, slices.Contains(s.upstreamAddrs, client)):
		s.warnLoop("a query this DNS server forwarded came back to it: dns.upstreams leads to this server; answering SERVFAIL", raw, client)
	default:
		reply, err = s.askUpstreams(raw, &c, chained, tcp, *bp)
	}
	if err != nil {
		reply = s.errorReply(raw, tcp, dns.RcodeServerFailure, *bp)
	}
	s.m.reply(int(be16(reply[2:]) & rcodeMask))
	if err := send(reply); err != nil {
		s.m.drop(dropWrite)
	}
}

// warnLoop logs a forwarding loop, once a minute at most: a loop is a
// standing misconfiguration.
func (s *Server) warnLoop(msg string, raw []byte, client netip.Addr) {
	if s.loopWarn.Allow() {
		s.log.Warn(msg, "client", client.String(), "query", fmt.Sprintf("%x", raw[min(len(raw), headerLen):]))
	}
}

// askUpstreams asks the upstreams in order (each within ForwardTimeout)
// c.query, raw with its chain's entry (when chained) and a fresh ID, and
// returns, in buf, the first answer that is not SERVFAIL or REFUSED, with
// what the chain added taken out, the client's ID and question (in its
// letter case), and fitted to what the client accepts.
// An upstream that answers the chained query FORMERR (one that does not
// take EDNS, or this option) is asked the query as the client sent it.
// An upstream a loop probe came back from is skipped (loopprobe.go).
func (s *Server) askUpstreams(raw []byte, c *chained, chained, tcp bool, buf []byte) ([]byte, error) {
	query := c.query
	fw, done := s.inflight.add(query)
	defer done()
	var errs []error
	for i, up := range s.cfg.Upstreams {
		if s.looping[i].Load() { // a loop probe came back from it
			continue
		}
		reply, err := exchange(s.ctx, up, query, buf, s.cfg.ForwardTimeout, tcp)
		unchained := !chained
		if err == nil && chained && be16(reply[2:])&rcodeMask == dns.RcodeFormatError {
			plain := append([]byte(nil), raw...)
			plain[0], plain[1] = query[0], query[1]
			reply, err = exchange(s.ctx, up, plain, buf, s.cfg.ForwardTimeout, tcp)
			unchained = true
		}
		if err == nil {
			if rc := be16(reply[2:]) & rcodeMask; rc == dns.RcodeServerFailure || rc == dns.RcodeRefused {
				err = fmt.Errorf("%v: %w: %s", up, errUpstreamRcode, dns.RcodeToString[int(rc)])
			}
		}
		if err != nil {
			reason := errorReason(err)
			if fw.looped.Swap(false) {
				reason = fwdLoop
			}
			s.m.forwardError(up, reason)
			errs = append(errs, err)
			continue
		}
		if !unchained {
			reply = unchain(reply, c.ednsAdd)
		}
		reply[0], reply[1] = raw[0], raw[1]
		// The question as the client asked it: isReplyTo found it in
		// the reply but for the letter case, which some upstreams change
		// and a client checking its case (DNS 0x20) would not take.
		qend, _ := questionEnd(raw)
		copy(reply[headerLen:qend], raw[headerLen:qend])
		reply[3] |= flagRA // this server offers recursion, through its upstreams
		return s.fit(reply, raw, tcp), nil
	}
	if len(errs) == 0 {
		return nil, errUpstreamsLoop
	}
	return nil, fmt.Errorf("resolver: forward: %w", errors.Join(errs...))
}

// errUpstreamsLoop: every upstream was marked looping by a loop probe.
var errUpstreamsLoop = errors.New("resolver: forward: every upstream leads back to this server")

// fit cuts an upstream's answer that is larger than the client accepts over
// UDP down to its header, question and OPT record, with TC set. The OPT
// stays (RFC 6891 §6.1.1: an EDNS query gets an EDNS answer, and one
// without tells the client that the server does not do EDNS), without its
// options when they would not fit.
func (s *Server) fit(reply, raw []byte, tcp bool) []byte {
	limit := s.clientLimit(raw, tcp)
	if len(reply) <= limit {
		return reply
	}
	qend, _ := questionEnd(reply) // isReplyTo checked it
	// An OPT record found whole is kept even when what follows it cannot be
	// walked (bytes after the last record).
	opt, _ := findOPT(reply)
	reply[2] |= flagTC >> 8
	clear(reply[6:headerLen])
	if !opt.found {
		return reply[:qend]
	}
	n := copy(reply[qend:], reply[opt.start:opt.end]) // OPT comes after the question
	if qend+n > limit {
		n = opt.rdata - opt.start
		reply[qend+n-2], reply[qend+n-1] = 0, 0 // RDLENGTH: no options
	}
	reply[11] = 1 // ARCOUNT
	return reply[:qend+n]
}

// clientLimit is the largest reply the sender of raw accepts.
func (s *Server) clientLimit(raw []byte, tcp bool) int {
	var q query
	var key [maxNameLen + 5]byte
	if _, ok := parseQuery(raw, &q, key[:0]); ok {
		return replyLimit(tcp, q.edns, q.udpSize, s.cfg.MaxUDPSize)
	}
	var m dns.Msg
	if err := m.Unpack(raw); err == nil {
		if opt := m.IsEdns0(); opt != nil {
			return replyLimit(tcp, true, opt.UDPSize(), s.cfg.MaxUDPSize)
		}
	}
	return replyLimit(tcp, false, 0, s.cfg.MaxUDPSize)
}

// errorReply answers raw, a query the slow path can parse, with rcode.
func (s *Server) errorReply(raw []byte, tcp bool, rcode int, buf []byte) []byte {
	var m dns.Msg
	if err := m.Unpack(raw); err == nil && len(m.Question) == 1 {
		req, _ := requestOf(&m, tcp)
		if out, err := pack(s.message(&req, &answer{rcode: rcode}), buf, req.limit(s.cfg.MaxUDPSize)); err == nil {
			return out
		}
	}
	return headerReply(buf, raw, s.ra, rcode)
}

// errForwardLoop: the query was one this server had forwarded itself.
var errForwardLoop = errors.New("resolver: forward: the query came back to this server")

// inflight are the queries this server has forwarded and awaits answers
// to. One of them arriving as a query means an upstream leads back here:
// forwarded again, with a fresh ID, and again, one client's query would
// take every forward slot. It is answered SERVFAIL at once instead, and its
// forwarder counts the upstream's error as a loop
// (ztgate_dns_forward_errors_total{reason="loop"}).
//
// A query comes back byte for byte, ID and all, when this server is its
// own upstream. Between two servers that forward to each other (two
// ztgate gateways, each the other's upstream), each gives the query a
// fresh ID and passes the rest on unchanged: a query that is one in
// flight but for its ID is a loop when it comes from an upstream's
// address (a client that sent the same bytes at the same time is not).
// Not from a loopback address, which every local process shares: local
// clients of a server whose upstream is on the same host would be taken
// for it, and a second server on the host forwards from 127.0.0.1
// whatever loopback address it listens on.
type inflight struct {
	mu sync.Mutex
	m  map[string][]*forwarding // by the query without its ID
}

// forwarding is one query in flight, under the ID this server gave it.
type forwarding struct {
	id     uint16
	looped atomic.Bool
}

// add records query as in flight until done is called.
func (f *inflight) add(query []byte) (fw *forwarding, done func()) {
	fw, key := &forwarding{id: be16(query)}, string(query[2:])
	f.mu.Lock()
	if f.m == nil {
		f.m = make(map[string][]*forwarding)
	}
	f.m[key] = append(f.m[key], fw)
	f.mu.Unlock()
	return fw, func() {
		f.mu.Lock()
		if rest := slices.DeleteFunc(f.m[key], func(e *forwarding) bool { return e == fw }); len(rest) > 0 {
			f.m[key] = rest
		} else {
			delete(f.m, key)
		}
		f.mu.Unlock()
	}
}

// looped marks the forwards with the given IDs (two bytes each) looped:
// the chain showed that their queries came back.
func (f *inflight) looped(ids []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fws := range f.m {
		for _, fw := range fws {
			for i := 0; i+1 < len(ids); i += 2 {
				if fw.id == be16(ids[i:]) {
					fw.looped.Store(true)
				}
			}
		}
	}
}

// cameBack reports whether raw is a query this server has in flight —
// with its ID, or from an upstream (fromUpstream) with any — and marks
// those it matched looped.
func (f *inflight) cameBack(raw []byte, fromUpstream bool) bool {
	if len(raw) < headerLen {
		return false
	}
	id := be16(raw)
	f.mu.Lock()
	defer f.mu.Unlock()
	back := false
	for _, fw := range f.m[string(raw[2:])] {
		if fromUpstream || fw.id == id {
			fw.looped.Store(true)
			back = true
		}
	}
	return back
}
