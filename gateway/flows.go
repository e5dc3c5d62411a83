package gateway

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/internal/monoclock"
)

// peer is who opened a flow: the tenant and identity of its ingress.
type peer struct {
	tenant   string
	identity string // lanIdentity for TUN clients; the certificate identity of a tunnel session
}

// lanIdentity is the identity of the TUN clients, whose tenant is the one
// of their source prefix. A certificate's identity is never it: it is
// "tenant/role/name".
const lanIdentity = "lan"

// flow is one spliced TCP or UDP flow. It is bound at creation to its
// peer, service and backend and never re-evaluated: a reload does not
// move it.
type flow struct {
	id      uint64
	proto   string
	client  netip.AddrPort
	vip     netip.AddrPort
	peer    peer
	svc     *service
	backend *backend
	target  netip.AddrPort
	start   time.Time

	up, down   atomic.Int64 // payload bytes: up is client → backend
	lastActive atomic.Int64 // monoclock stamp of the last byte moved
	upBytes    prometheus.Counter
	downBytes  prometheus.Counter
	metrics    *flowMetrics // its service's, tenant's and protocol's flow counters

	once   sync.Once
	done   chan struct{}
	reason string // why it ended; written once under once
	reset  bool   // cut: its connections reset rather than closed; written once under once
	conns  []net.Conn
	mu     sync.Mutex

	idle    time.Duration             // TCP: the sweeper closes the flow after this long without a byte
	splice  atomic.Pointer[tcpSplice] // TCP: the splice moving its data
	onClose func()                    // called once by close, after the conns are closed; guarded by mu
}

func (f *flow) touch(now time.Time) { f.lastActive.Store(monoclock.Of(now)) }

// idleFor returns how long no byte has moved.
func (f *flow) idleFor(now time.Time) time.Duration {
	return time.Duration(monoclock.Of(now) - f.lastActive.Load())
}

// addUp and addDown account bytes moved in each direction.
func (f *flow) addUp(n int, now time.Time) {
	f.up.Add(int64(n))
	f.upBytes.Add(float64(n))
	f.touch(now)
}

func (f *flow) addDown(n int, now time.Time) {
	f.down.Add(int64(n))
	f.downBytes.Add(float64(n))
	f.touch(now)
}

// attach registers a connection that close closes; on a flow already
// closed (by the API or a shutdown while its backend was dialled) it
// closes c at once.
func (f *flow) attach(c net.Conn) {
	f.mu.Lock()
	if _, closed := f.closed(); closed {
		f.mu.Unlock()
		c.Close()
		return
	}
	f.conns = append(f.conns, c)
	f.mu.Unlock()
}

// close ends the flow once: records why, wakes its copy loops and closes
// its connections. Later calls do nothing.
func (f *flow) close(reason string) { f.end(reason, false) }

// cut ends the flow as close does, but resets its connections (SO_LINGER
// 0: a RST) and, once its splice tears down, the backend's. It ends the
// flows whose client can send nothing more: its source or its rights
// taken away by a reload (its packets are dropped from then on), or its
// tunnel ingress gone. A FIN could never be acknowledged: the netstack
// would send it, and the data the client had not acknowledged, again and
// again for minutes, to a client that is no longer admitted or no longer
// there; and the backend must not take a stream cut short for a complete
// one.
func (f *flow) cut(reason string) { f.end(reason, true) }

func (f *flow) end(reason string, reset bool) {
	f.once.Do(func() {
		f.reason, f.reset = reason, reset
		close(f.done)
		f.mu.Lock()
		conns, onClose := f.conns, f.onClose
		f.mu.Unlock()
		for _, c := range conns {
			if l, ok := c.(interface{ SetLinger(int) error }); ok && reset {
				l.SetLinger(0)
			}
			c.Close()
		}
		if onClose != nil {
			onClose()
		}
	})
}

// closed reports whether close was called, and why.
func (f *flow) closed() (string, bool) {
	select {
	case <-f.done:
		return f.reason, true
	default:
		return "", false
	}
}

// wasCut reports whether cut ended the flow.
func (f *flow) wasCut() bool {
	select {
	case <-f.done:
		return f.reset
	default:
		return false
	}
}

// flowTable holds the live flows for the API, for closing them on demand
// and at shutdown.
type flowTable struct {
	mu   sync.Mutex
	m    map[uint64]*flow
	next uint64
}

func newFlowTable() *flowTable { return &flowTable{m: make(map[uint64]*flow)} }

func (t *flowTable) add(f *flow) {
	t.mu.Lock()
	t.next++
	f.id = t.next
	t.m[f.id] = f
	t.mu.Unlock()
}

func (t *flowTable) remove(f *flow) {
	t.mu.Lock()
	delete(t.m, f.id)
	t.mu.Unlock()
}

// list returns the flows matching keep (all when keep is nil).
func (t *flowTable) list(keep func(*flow) bool) []*flow {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*flow, 0, len(t.m))
	for _, f := range t.m {
		if keep == nil || keep(f) {
			out = append(out, f)
		}
	}
	return out
}

func (t *flowTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
