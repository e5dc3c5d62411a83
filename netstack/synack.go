package netstack

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/ztgate/ztgate/internal/monoclock"
)

// gVisor retransmits a SYN-ACK whose client did not answer (after 1 s,
// then 2 s, 4 s …) with the timestamp option of the first one: the same
// TSval, and as TSecr the TSval of the client's first SYN, though the
// client may have sent its SYN again since. The client's ACK echoes that
// stale TSval, and gVisor takes the time since its first SYN-ACK — a
// second and more — for the connection's first round trip: its
// retransmission timeout becomes some 3 s. A client that took the
// SYN-ACK's TSecr for the echo of its first SYN does the same. On a lossy
// path (a laptop's Wi-Fi, the agent's relay link), one lost SYN-ACK made
// each later loss on that connection cost seconds: a request through a
// path losing 5 % of its packets took more than 10 s about once in a
// thousand. Linux builds every retransmitted SYN-ACK anew, with a TSval
// of the moment and the newest TSval of the client's SYN as TSecr; the
// link does that for gVisor (synAckClock).
//
// A client's SYN sent again (its SYN-ACK lost, or late) gVisor answers,
// in SYN-RCVD, with a bare ACK (RFC 793's answer to a segment outside the
// window), which a client in SYN-SENT drops: the handshake then waits for
// gVisor's own timer, and when that SYN-ACK is lost too, for the next one
// (3 s, then 7 s). Linux answers a SYN sent again with the SYN-ACK. So
// does the link: gVisor's bare ACK that follows such a SYN leaves as the
// SYN-ACK again, with the timestamps it would have if built now.

// synAckClock keeps the timestamp of each SYN-ACK the stack sends, for a
// few seconds, and gives a retransmission of it the TSval it would have
// if built now (the first one's plus the milliseconds since: gVisor's
// timestamps count milliseconds) and, when the client sent its SYN again
// in the meantime, that SYN's TSval as TSecr.
//
// Entries live for one to two generations (synAckGeneration), which
// covers gVisor's first two retransmissions (after 1 s and 3 s), and at
// most synAckMax are taken per generation: under a flood of SYNs the
// newest SYN-ACKs go unrecorded and are retransmitted as gVisor built
// them.
type synAckClock struct {
	live    atomic.Bool  // any entry: inbound SYNs are looked up only then
	pending atomic.Int32 // entries with synAgain: outbound bare ACKs are looked up only then

	answered atomic.Uint64 // SYNs sent again answered with the SYN-ACK (Stats.TCPSynAgain)

	mu      sync.Mutex
	cur     map[synAckKey]synAckSent // guarded by mu
	prev    map[synAckKey]synAckSent // guarded by mu: the generation before
	rotated int64                    // guarded by mu: monoclock of cur's start
}

const (
	synAckGeneration = 4 * time.Second
	synAckMax        = 1 << 14
)

// synAckKey names a handshake: the stack's address and port, the
// client's, and the client's initial sequence number (its SYN's sequence
// number, the SYN-ACK's acknowledgment number less one).
type synAckKey struct {
	local, remote netip.Addr
	lport, rport  uint16
	isn           uint32
}

// synAckSent is what the clock knows of a handshake.
type synAckSent struct {
	tsval    uint32 // the first SYN-ACK's
	at       int64  // monoclock when it was written
	tsecr    uint32 // the TSval of the client's latest SYN, when seen after it
	newSYN   bool   // tsecr is set
	synAgain bool   // a SYN sent again awaits its answer (counted in pending)
	iss      uint32 // the stack's initial sequence number
	pkt      []byte // the first SYN-ACK, whole, for answering a SYN sent again
}

// tcpSeg is what the clock reads of a TCP segment.
type tcpSeg struct {
	key synAckKey
	ts  int // offset of the timestamp option's TSval in the packet; 0: none
}

// parseTCPSeg reads a TCP segment with flags among want (the SYN and ACK
// bits: SYN for a client's SYN, SYN|ACK for a SYN-ACK; RST and FIN
// unset), its key seen from the stack's side (out: the stack sent it).
func parseTCPSeg(p []byte, want header.TCPFlags, out bool) (s tcpSeg, ok bool) {
	if len(p) < 1 {
		return s, false
	}
	var l4 int
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 || p[9] != 6 || binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 {
			return s, false
		}
		l4 = int(p[0]&0x0f) * 4
	case 6:
		if len(p) < 40 || p[6] != 6 {
			return s, false
		}
		l4 = 40
	default:
		return s, false
	}
	if len(p) < l4+20 || header.TCPFlags(p[l4+13])&(header.TCPFlagSyn|header.TCPFlagAck|header.TCPFlagRst|header.TCPFlagFin) != want {
		return s, false
	}
	h, ok := parseIP(p)
	if !ok || len(h.l4) < 20 {
		return s, false
	}
	t := h.l4
	off := int(t[12]>>4) * 4
	if off < 20 || off > len(t) {
		return s, false
	}
	for o := 20; o < off; {
		switch kind := t[o]; {
		case kind == 0: // end of options
			o = off
		case kind == 1: // no-op
			o++
		case o+1 >= off || t[o+1] < 2 || o+int(t[o+1]) > off:
			return s, false
		default:
			if kind == 8 && t[o+1] == 10 {
				s.ts = l4 + o + 2
			}
			o += int(t[o+1])
		}
	}
	sport, dport := binary.BigEndian.Uint16(t[0:2]), binary.BigEndian.Uint16(t[2:4])
	if out {
		s.key = synAckKey{local: h.src, remote: h.dst, lport: sport, rport: dport, isn: binary.BigEndian.Uint32(t[8:12]) - 1}
	} else {
		s.key = synAckKey{local: h.dst, remote: h.src, lport: dport, rport: sport, isn: binary.BigEndian.Uint32(t[4:8])}
	}
	return s, true
}

// outbound records a SYN-ACK the stack sends, or refreshes the timestamp
// option of one it sends again; a bare ACK that answers a client's SYN
// sent again it turns into that SYN-ACK, which may be longer: p's capacity
// must hold any SYN-ACK (the link's buffers hold a packet of the MTU).
// p is the whole IP packet, its checksums complete; outbound returns its
// length. Anything else is left alone at the cost of a few byte
// comparisons.
func (c *synAckClock) outbound(p []byte) int { return c.outboundAt(p, monoclock.Now()) }

// outboundAt is outbound at the instant now (monoclock).
func (c *synAckClock) outboundAt(p []byte, now int64) int {
	s, ok := parseTCPSeg(p, header.TCPFlagSyn|header.TCPFlagAck, true)
	if !ok {
		if c.pending.Load() > 0 {
			return c.answerAt(p, now)
		}
		return len(p)
	}
	var tsval uint32
	if s.ts != 0 {
		tsval = binary.BigEndian.Uint32(p[s.ts:])
	}
	c.mu.Lock()
	c.rotate(now)
	sent, found := c.cur[s.key]
	if !found {
		sent, found = c.prev[s.key]
	}
	if !found {
		if len(c.cur) < synAckMax {
			h, _ := parseIP(p) // parsed by parseTCPSeg
			c.cur[s.key] = synAckSent{tsval: tsval, at: now, iss: binary.BigEndian.Uint32(h.l4[4:8]), pkt: slices.Clone(p)}
			c.live.Store(true)
		}
		c.mu.Unlock()
		return len(p)
	}
	c.mu.Unlock()
	if s.ts == 0 || tsval != sent.tsval {
		return len(p) // no timestamps, or built anew (a gVisor that does so): nothing to mend
	}
	sent.mend(p, s.ts, now)
	return len(p)
}

// mend gives p, this handshake's SYN-ACK with its timestamp option's TSval
// at offset ts, the timestamps it would have if built at now.
func (sent *synAckSent) mend(p []byte, ts int, now int64) {
	binary.BigEndian.PutUint32(p[ts:], sent.tsval+uint32((now-sent.at)/int64(time.Millisecond)))
	if sent.newSYN {
		binary.BigEndian.PutUint32(p[ts+4:], sent.tsecr)
	}
	tcpChecksum(p)
}

// answerAt turns p into the SYN-ACK again when it is the stack's bare ACK
// (no payload) of a handshake whose client sent its SYN again since the
// last answer, acknowledging that SYN only; it returns p's length.
func (c *synAckClock) answerAt(p []byte, now int64) int {
	s, ok := parseTCPSeg(p, header.TCPFlagAck, true)
	if !ok {
		return len(p)
	}
	h, _ := parseIP(p) // parsed by parseTCPSeg
	if int(h.l4[12]>>4)*4 != len(h.l4) {
		return len(p) // data: no answer to a SYN
	}
	c.mu.Lock()
	c.rotate(now) // a SYN whose answer never came stops these lookups in time
	var sent synAckSent
	var found bool
	for _, m := range []map[synAckKey]synAckSent{c.cur, c.prev} {
		if sent, found = m[s.key]; found {
			if !sent.synAgain || cap(p) < len(sent.pkt) || binary.BigEndian.Uint32(h.l4[4:8]) != sent.iss+1 {
				found = false // nothing to answer, or not that handshake's answer
				break
			}
			sent.synAgain = false
			m[s.key] = sent
			c.pending.Add(-1)
			break
		}
	}
	c.mu.Unlock()
	if !found {
		return len(p)
	}
	c.answered.Add(1)
	p = p[:len(sent.pkt)]
	copy(p, sent.pkt)
	if t, _ := parseTCPSeg(p, header.TCPFlagSyn|header.TCPFlagAck, true); t.ts != 0 {
		sent.mend(p, t.ts, now)
	}
	return len(p)
}

// inbound notes a client's SYN sent again for a handshake whose SYN-ACK
// the stack sent: the stack's answer to it is to leave as the SYN-ACK, and
// a retransmitted SYN-ACK echoes its TSval.
func (c *synAckClock) inbound(p []byte) {
	if !c.live.Load() {
		return
	}
	s, ok := parseTCPSeg(p, header.TCPFlagSyn, false)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range []map[synAckKey]synAckSent{c.cur, c.prev} {
		if sent, found := m[s.key]; found {
			if s.ts != 0 {
				sent.tsecr, sent.newSYN = binary.BigEndian.Uint32(p[s.ts:]), true
			}
			if !sent.synAgain {
				sent.synAgain = true
				c.pending.Add(1)
			}
			m[s.key] = sent
			return
		}
	}
}

// rotate starts a new generation when the current one is older than
// synAckGeneration; the one before is forgotten.
func (c *synAckClock) rotate(now int64) {
	if c.cur != nil && now-c.rotated < int64(synAckGeneration) {
		return
	}
	var waiting int32 // entries of the new prev whose SYN sent again awaits its answer
	if c.pending.Load() > 0 {
		for _, sent := range c.cur {
			if sent.synAgain {
				waiting++
			}
		}
	}
	c.pending.Store(waiting)
	c.prev, c.cur, c.rotated = c.cur, make(map[synAckKey]synAckSent), now
	if len(c.prev) == 0 {
		c.prev = nil
	}
	c.live.Store(len(c.prev) > 0)
}

// tcpChecksum computes anew the TCP checksum of p, a packet parseTCPSeg
// took.
func tcpChecksum(p []byte) {
	h, _ := parseIP(p) // parsed by parseTCPSeg
	t := h.l4
	t[16], t[17] = 0, 0
	src, dst := tcpip.AddrFromSlice(h.src.AsSlice()), tcpip.AddrFromSlice(h.dst.AsSlice())
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(t)))
	binary.BigEndian.PutUint16(t[16:18], ^checksum.Checksum(t, sum))
}
