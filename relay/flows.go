package relay

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The flow table of an agent session remembers which tag each of its flows
// uses, so that a gateway is chosen for new flows only: existing flows stay
// on their gateway when another one joins, is drained or reports the
// service down. Entries expire after idle; the table is bounded and counts
// what it evicts.
const (
	flowTCPIdle     = time.Hour        // as the gateway's default tcp_idle
	flowClosingIdle = 30 * time.Second // TCP after a FIN or RST from the agent
	flowUDPIdle     = 2 * time.Minute  // as the gateway's default udp_idle
	flowOtherIdle   = 30 * time.Second // ICMP and other protocols
	flowSweepEvery  = 5 * time.Second  // how often expired entries are removed
	maxAgentFlows   = 8192             // entries per agent session
	evictSample     = 8                // entries looked at to evict the stalest when full
	fullSweepEvery  = time.Second      // how often a full table looks for expired entries
)

// IP protocol numbers the table tells apart.
const (
	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17
)

// flowKey is an IPv4 5-tuple; for ICMP echo the identifier stands in for
// the source port. Comparable and fixed-size: map lookups allocate nothing.
type flowKey struct {
	src, dst     [4]byte
	sport, dport uint16
	proto        uint8
}

// flowPacket is what the relay reads of an agent's packet for the table.
type flowPacket struct {
	key   flowKey
	syn   bool // TCP SYN without ACK: a connection attempt
	close bool // TCP FIN or RST
}

// parseFlow reads the flow of an IPv4 packet that is not a fragment and
// whose transport header is whole; ok is false for anything else (IPv6,
// fragments, truncated packets), which the relay routes by service only.
func parseFlow(p []byte) (fp flowPacket, ok bool) {
	if len(p) < ipv4Header || p[0]>>4 != 4 {
		return fp, false
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < ipv4Header || binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 { // MF or an offset
		return fp, false
	}
	fp.key.proto = p[9]
	fp.key.src, fp.key.dst = [4]byte(p[12:16]), [4]byte(p[16:20])
	l4 := p[min(ihl, len(p)):]
	switch fp.key.proto {
	case protoTCP:
		if len(l4) < 14 {
			return fp, false
		}
		fp.key.sport, fp.key.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		flags := l4[13]
		fp.syn = flags&0x12 == 0x02 // SYN, not ACK
		fp.close = flags&0x05 != 0  // FIN or RST
	case protoUDP:
		if len(l4) < 4 {
			return fp, false
		}
		fp.key.sport, fp.key.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
	case protoICMP:
		if len(l4) < 8 {
			return fp, false
		}
		if l4[0] == 8 || l4[0] == 0 { // echo request or reply: one flow per identifier
			fp.key.sport = binary.BigEndian.Uint16(l4[4:])
		}
	}
	return fp, true
}

// idleFor is how long an entry of proto lives without packets.
func idleFor(proto uint8) int64 {
	switch proto {
	case protoTCP:
		return int64(flowTCPIdle)
	case protoUDP:
		return int64(flowUDPIdle)
	}
	return int64(flowOtherIdle)
}

// flowEntry is one flow: its tag and when it expires.
type flowEntry struct {
	tag  *tag
	last int64 // UnixNano of the last packet
	idle int64 // nanoseconds without packets before it expires
}

// expired reports whether the entry outlived its idle timeout at now.
func (e flowEntry) expired(now int64) bool { return now-e.last > e.idle }

// flowVerdict is what the table says about a packet.
type flowVerdict uint8

const (
	flowKnown  flowVerdict = iota // a flow with a live tag: use it
	flowNew                       // a new flow: choose a gateway (the returned tag, if any, is a hint)
	flowOrphan                    // a TCP segment of a flow the table does not know: the service's current tag
	flowLost                      // a TCP segment of a flow whose gateway is gone: drop it
)

// flowStats are the table's collectors, shared by every agent session.
type flowStats struct {
	live      prometheus.Gauge
	idleEvict prometheus.Counter
	fullEvict prometheus.Counter
}

// flowTable is an agent session's flows. The datagram goroutine looks up
// and inserts; the relay's janitor sweeps; hence the mutex, which nobody
// else contends.
type flowTable struct {
	mu        sync.Mutex
	m         map[flowKey]flowEntry // guarded by mu
	lastSweep int64                 // guarded by mu
	max       int
	stats     *flowStats
}

func newFlowTable(max int, stats *flowStats) *flowTable {
	return &flowTable{m: make(map[flowKey]flowEntry), max: max, stats: stats}
}

// lookup classifies a packet of the agent for service and refreshes the
// entry of a known flow. A SYN is always a new flow, with the tag it had
// as a hint (a retransmitted SYN stays where it went while that gateway
// still qualifies); a UDP or ICMP flow whose gateway is gone is new again;
// a TCP flow whose gateway is gone is lost.
func (ft *flowTable) lookup(fp flowPacket, service []byte, now int64) (*tag, flowVerdict) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	e, ok := ft.m[fp.key]
	if ok && (e.tag.service != string(service) || e.expired(now)) {
		ok = false // the VIP changed hands, or the entry awaits its sweep
	}
	tcp := fp.key.proto == protoTCP
	switch {
	case ok && fp.syn:
		return e.tag, flowNew
	case !ok && tcp && !fp.syn:
		return nil, flowOrphan
	case !ok:
		return nil, flowNew
	case e.tag.dead.Load() && tcp:
		return nil, flowLost
	case e.tag.dead.Load():
		return nil, flowNew
	}
	e.last = now
	if fp.close {
		e.idle = int64(flowClosingIdle)
	}
	ft.m[fp.key] = e
	return e.tag, flowKnown
}

// insert records the tag of a flow, replacing an older entry. A full table
// first drops what expired (at most every fullSweepEvery), then evicts the
// stalest of a few entries.
func (ft *flowTable) insert(fp flowPacket, t *tag, now int64) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	old, replacing := ft.m[fp.key]
	if replacing {
		ft.forgetLocked(old)
	} else if len(ft.m) >= ft.max {
		if now-ft.lastSweep >= int64(fullSweepEvery) { // a sweep is O(n): not for every new flow
			ft.sweepLocked(now)
		}
		if len(ft.m) >= ft.max {
			ft.evictLocked()
		}
	}
	idle := idleFor(fp.key.proto)
	if fp.close {
		idle = int64(flowClosingIdle)
	}
	ft.m[fp.key] = flowEntry{tag: t, last: now, idle: idle}
	t.gw.flows.Add(1)
	ft.stats.live.Inc()
}

// sweep removes expired entries if the last sweep is flowSweepEvery old.
func (ft *flowTable) sweep(now int64) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if now-ft.lastSweep >= int64(flowSweepEvery) {
		ft.sweepLocked(now)
	}
}

// sweepLocked removes every expired entry.
func (ft *flowTable) sweepLocked(now int64) {
	ft.lastSweep = now
	for k, e := range ft.m {
		if e.expired(now) {
			delete(ft.m, k)
			ft.forgetLocked(e)
			ft.stats.idleEvict.Inc()
		}
	}
}

// evictLocked removes the stalest of evictSample entries (map order is
// random enough to sample).
func (ft *flowTable) evictLocked() {
	var victim flowKey
	oldest, n := int64(0), 0
	for k, e := range ft.m {
		if n == 0 || e.last < oldest {
			victim, oldest = k, e.last
		}
		if n++; n == evictSample {
			break
		}
	}
	if n > 0 {
		ft.forgetLocked(ft.m[victim])
		delete(ft.m, victim)
		ft.stats.fullEvict.Inc()
	}
}

// forgetLocked undoes an entry's share of the counts.
func (ft *flowTable) forgetLocked(e flowEntry) {
	e.tag.gw.flows.Add(-1)
	ft.stats.live.Dec()
}

// clear removes every entry: the agent session ended.
func (ft *flowTable) clear() {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	for k, e := range ft.m {
		delete(ft.m, k)
		ft.forgetLocked(e)
	}
}

// len returns the number of entries.
func (ft *flowTable) len() int {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return len(ft.m)
}
