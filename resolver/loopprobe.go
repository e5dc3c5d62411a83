package resolver

import (
	"crypto/rand"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Loop probes find a forwarding loop that nothing in a forwarded query
// shows: one through a resolver that is not ztgate, strips unknown EDNS
// options (the chain's) and renews IDs, and sends from a loopback or an
// own address (inflight's rule cannot name it). The usual one is the
// host's resolver (systemd-resolved, dnsmasq, unbound) pointed at this
// server's host listener and named in dns.upstreams: each client query
// would go round until the forward slots were full or ForwardTimeout
// passed.
//
// As CoreDNS's loop plugin does, the server asks each upstream, at the
// first Serve call and every probeQuiet after (every probeEvery while an
// upstream loops, to take it back soon once it is mended), a name of its
// own: a random
// name under the root (two labels of 16 hex digits, 128 bits from
// crypto/rand, which no client can guess), type HINFO, recursion desired,
// within ForwardTimeout. A probe that arrives as a query, on any listener
// from any address, while it is in flight came back: its upstream leads
// back here. The probe is answered SERVFAIL at once, which ends its loop;
// the upstream is marked looping, logged once and counted
// (ztgate_dns_forward_errors_total{reason="loop"} for each probe that
// comes back, ztgate_dns_upstream_looping 1), and no query is forwarded to
// it. Unlike CoreDNS, the server goes on: it answers its zone, forwards
// to the other upstreams, and answers names outside the zone SERVFAIL at
// once, in the reader, when every upstream loops. A probe answered NOERROR
// or NXDOMAIN without coming back takes its upstream back; one that times
// out or fails proves nothing and changes nothing.
//
// One round at a time, each probe in flight at most ForwardTimeout: one
// probe per upstream in flight. A name shaped like a probe that is not
// one in flight is a client's and treated as any other.
const (
	// loopProbeInterval is the time between two rounds of probes while
	// an upstream loops.
	loopProbeInterval = 30 * time.Second
	// loopProbeQuietInterval is the time between two rounds while none
	// does: a loop made after the start (the host's resolver pointed at
	// this server later) is found within it. A probe is a query for a
	// name that does not exist, which a recursive upstream takes to the
	// root servers: once every few minutes is little.
	loopProbeQuietInterval = 5 * time.Minute
	// probeLabelLen is the length of each of a probe name's two labels.
	probeLabelLen = 16
	// probeNameLen is the length of a probe name in wire format.
	probeNameLen = 2*(1+probeLabelLen) + 1
)

// loopProbes are the probes in flight, by name in wire format.
type loopProbes struct {
	n  atomic.Int32 // len(m): handle looks no further while it is 0
	mu sync.Mutex
	m  map[string]*loopProbe
}

// loopProbe is one probe in flight.
type loopProbe struct {
	up   int         // the upstream's index in Config.Upstreams
	back atomic.Bool // it came back
}

// add records a probe to upstream up under name until remove.
func (ps *loopProbes) add(name []byte, up int) *loopProbe {
	p := &loopProbe{up: up}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.m == nil {
		ps.m = make(map[string]*loopProbe)
	}
	ps.m[string(name)] = p
	ps.n.Store(int32(len(ps.m)))
	return p
}

func (ps *loopProbes) remove(name []byte) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	delete(ps.m, string(name))
	ps.n.Store(int32(len(ps.m)))
}

// get returns the probe in flight under name, the lower-case wire name of
// a query, or nil. While no probe is in flight it costs one atomic load.
func (ps *loopProbes) get(name []byte) *loopProbe {
	if ps.n.Load() == 0 || len(name) != probeNameLen {
		return nil
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.m[string(name)]
}

// newLoopProbe returns a probe query with a fresh random name, and the
// name in wire format (within the query).
func newLoopProbe() (query, name []byte) {
	var r [probeLabelLen]byte // two labels of 8 random bytes in hex
	_, _ = rand.Read(r[:])    // crypto/rand.Read never fails (Go 1.24)
	h := hex.EncodeToString(r[:])
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Id: randomID(), RecursionDesired: true}}
	m.Question = []dns.Question{{Name: h[:probeLabelLen] + "." + h[probeLabelLen:] + ".", Qtype: dns.TypeHINFO, Qclass: dns.ClassINET}}
	query, _ = m.Pack() // a valid name always packs
	return query, query[headerLen : headerLen+probeNameLen]
}

// startProbing starts the probes, once, when upstreams are configured; the
// goroutine is the server's, which Shutdown stops and waits for.
func (s *Server) startProbing() {
	if s.probeEvery <= 0 || len(s.cfg.Upstreams) == 0 {
		return
	}
	s.probeOnce.Do(func() {
		if !s.acquire(nil) {
			return
		}
		go func() {
			defer s.release(nil)
			s.probeLoop()
		}()
	})
}

// probeLoop probes every upstream, every probeQuiet (probeEvery while one
// loops), until Shutdown; a round ends when each of its probes has, and
// the next starts that long after the last one started.
func (s *Server) probeLoop() {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		var wg sync.WaitGroup
		for i := range s.cfg.Upstreams {
			wg.Go(func() { s.probe(i) })
		}
		wg.Wait()
		next := s.probeQuiet
		if s.nLooping.Load() > 0 {
			next = s.probeEvery
		}
		t.Reset(max(next-time.Since(start), 0))
	}
}

// probe asks upstream i a probe: one that comes back marks it looping
// (probeBack), one answered NOERROR or NXDOMAIN takes it back.
func (s *Server) probe(i int) {
	query, name := newLoopProbe()
	p := s.probes.add(name, i)
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	reply, err := exchange(s.ctx, s.cfg.Upstreams[i], query, *bp, s.cfg.ForwardTimeout, false)
	s.probes.remove(name) // back is final from here
	if p.back.Load() || err != nil {
		return
	}
	if rc := be16(reply[2:]) & rcodeMask; rc == dns.RcodeSuccess || rc == dns.RcodeNameError {
		s.setLooping(i, false)
	}
}

// probeBack reports whether name, the lower-case wire name of a query, is
// a probe in flight; the first time, its upstream is marked looping.
func (s *Server) probeBack(name []byte) bool {
	p := s.probes.get(name)
	if p == nil {
		return false
	}
	if p.back.CompareAndSwap(false, true) {
		s.m.forwardError(s.cfg.Upstreams[p.up], fwdLoop)
		s.setLooping(p.up, true)
	}
	return true
}

// setLooping marks upstream i looping or not, and logs the change.
func (s *Server) setLooping(i int, looping bool) {
	if !s.looping[i].CompareAndSwap(!looping, looping) {
		return
	}
	up := s.cfg.Upstreams[i]
	s.m.upstreamLooping(up, looping)
	if looping {
		s.nLooping.Add(1)
		s.log.Error("dns upstream leads back to this server: names outside the zone are not forwarded to it", "upstream", up.String())
		return
	}
	s.nLooping.Add(-1)
	s.log.Info("dns upstream answers without leading back to this server: names outside the zone are forwarded to it again", "upstream", up.String())
}

// allLooping reports whether every upstream loops: names outside the zone
// are answered SERVFAIL at once.
func (s *Server) allLooping() bool {
	return len(s.looping) > 0 && int(s.nLooping.Load()) == len(s.looping)
}
