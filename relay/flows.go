package relay

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/tunnel"
)

// The flow table of an agent session remembers which tag each of its flows
// uses, so that a gateway is chosen for new flows only: existing flows stay
// on their gateway when another one joins, is drained or reports the
// service down. Entries expire after idle (tunnel.Flow.Idle); the table is
// bounded and counts what it evicts (tunnel.FlowTable).

// maxAgentFlows bounds the entries of an agent session's table.
const maxAgentFlows = 8192

// maxAgentFragmented bounds the fragmented datagrams of an agent session
// whose later fragments the relay awaits (tunnel.Fragments).
const maxAgentFragmented = 256

// flowVerdict is what the table says about a packet.
type flowVerdict uint8

const (
	flowKnown  flowVerdict = iota // a flow with a live tag: use it
	flowNew                       // a new flow: choose a gateway (the returned tag, if any, is a hint)
	flowOrphan                    // a TCP segment of a flow the table does not know: the service's current tag
	flowLost                      // a TCP segment of a flow whose gateway is gone: drop it
)

// flowStats are the tables' collectors, shared by every agent session.
type flowStats struct {
	live      prometheus.Gauge
	idleEvict prometheus.Counter
	fullEvict prometheus.Counter
}

// flowTable is an agent session's flows. The datagram goroutine looks up
// and inserts; the relay's janitor sweeps; hence the mutex, which nobody
// else contends. Each entry under a live tag counts towards its gateway's
// flows, which the gateway choice balances.
type flowTable struct {
	mu   sync.Mutex
	t    *tunnel.FlowTable[*tag] // guarded by mu
	live prometheus.Gauge
}

func newFlowTable(max int, stats *flowStats) *flowTable {
	return &flowTable{live: stats.live, t: tunnel.NewFlowTable(max, func(t *tag, why tunnel.FlowRemoval) {
		t.addEntries(-1)
		stats.live.Dec()
		switch why {
		case tunnel.FlowExpired:
			stats.idleEvict.Inc()
		case tunnel.FlowEvicted:
			stats.fullEvict.Inc()
		}
	})}
}

// lookup classifies a packet of the agent for service and refreshes the
// entry of a known flow. A SYN is always a new flow, with the tag it had
// as a hint (a retransmitted SYN stays where it went while that gateway
// still qualifies); a UDP or ICMP flow whose gateway is gone is new again;
// a TCP flow whose gateway is gone is lost.
func (ft *flowTable) lookup(f tunnel.Flow, service []byte, now int64) (*tag, flowVerdict) {
	ft.mu.Lock()
	t, ok := ft.t.Lookup(f.Key, now, f.Refresh())
	ft.mu.Unlock()
	if ok && t.service != string(service) {
		ok = false // the VIP changed hands
	}
	tcp := f.Key.Proto == tunnel.ProtoTCP
	switch {
	case ok && f.Start:
		return t, flowNew
	case !ok && tcp && !f.Start:
		return nil, flowOrphan
	case !ok:
		return nil, flowNew
	case t.dead.Load() && tcp:
		return nil, flowLost
	case t.dead.Load():
		return nil, flowNew
	}
	return t, flowKnown
}

// insert records the tag of a flow, replacing an older entry.
func (ft *flowTable) insert(f tunnel.Flow, t *tag, now int64) {
	t.addEntries(1)
	ft.live.Inc()
	ft.mu.Lock()
	ft.t.Put(f.Key, t, now, f.Idle())
	ft.mu.Unlock()
}

// sweep removes expired entries (at most every few seconds).
func (ft *flowTable) sweep(now int64) {
	ft.mu.Lock()
	ft.t.Sweep(now)
	ft.mu.Unlock()
}

// clear removes every entry: the agent session ended.
func (ft *flowTable) clear() {
	ft.mu.Lock()
	ft.t.Clear()
	ft.mu.Unlock()
}

// len returns the number of entries.
func (ft *flowTable) len() int {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return ft.t.Len()
}
