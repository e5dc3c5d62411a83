package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// pool describes backends for a balancing case: per backend its state
// ('u' unknown, 'U' up, 'D' down, 'd' draining and up) and live flows.
type pool struct {
	states string
	active []int64
}

func (p pool) build() *backendSet {
	set := &backendSet{}
	for i, s := range p.states {
		b := &backend{addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})}
		switch s {
		case 'U':
			b.state = stateUp
		case 'D':
			b.state = stateDown
		case 'd':
			b.state, b.draining = stateUp, true
		}
		if i < len(p.active) {
			b.active.Store(p.active[i])
		}
		set.list = append(set.list, b)
	}
	return set
}

// picks runs n picks from one client and counts them per backend index;
// -1 counts nil.
func picks(set *backendSet, policy catalog.Balance, client netip.Addr, skip []int, n int) map[int]int {
	var p picker
	var sk []*backend
	for _, i := range skip {
		sk = append(sk, set.list[i])
	}
	got := map[int]int{}
	for range n {
		b := p.pick(set, policy, client, sk)
		idx := -1
		for i, x := range set.list {
			if x == b {
				idx = i
			}
		}
		got[idx]++
	}
	return got
}

func TestPick(t *testing.T) {
	client := netip.MustParseAddr("198.51.100.10")
	cases := []struct {
		name   string
		policy catalog.Balance
		pool   pool
		skip   []int
		want   map[int]int // picks per backend index over 6 picks; -1: none
	}{
		{"round robin shares evenly", catalog.RoundRobin, pool{states: "UUU"}, nil, map[int]int{0: 2, 1: 2, 2: 2}},
		{"round robin takes unknown backends", catalog.RoundRobin, pool{states: "uu"}, nil, map[int]int{0: 3, 1: 3}},
		{"round robin skips a down backend", catalog.RoundRobin, pool{states: "UDU"}, nil, map[int]int{0: 3, 2: 3}},
		{"round robin skips a draining backend", catalog.RoundRobin, pool{states: "dUU"}, nil, map[int]int{1: 3, 2: 3}},
		{"round robin skips tried backends", catalog.RoundRobin, pool{states: "UUU"}, []int{1}, map[int]int{0: 3, 2: 3}},
		{"least conn takes the least loaded", catalog.LeastConn, pool{states: "UUU", active: []int64{5, 1, 3}}, nil, map[int]int{1: 6}},
		{"least conn skips a down backend", catalog.LeastConn, pool{states: "UDU", active: []int64{5, 1, 3}}, nil, map[int]int{2: 6}},
		{"least conn skips a draining backend", catalog.LeastConn, pool{states: "UdU", active: []int64{5, 0, 3}}, nil, map[int]int{2: 6}},
		{"least conn spreads ties", catalog.LeastConn, pool{states: "UUU", active: []int64{2, 2, 2}}, nil, map[int]int{0: 2, 1: 2, 2: 2}},
		{"least conn spreads ties among the least", catalog.LeastConn, pool{states: "UUU", active: []int64{0, 9, 0}}, nil, map[int]int{0: 3, 2: 3}},
		{"source hash is stable", catalog.SourceHash, pool{states: "UUU"}, nil, nil},
		{"no usable backend: all down", catalog.RoundRobin, pool{states: "DD"}, nil, map[int]int{-1: 6}},
		{"no usable backend: down and draining", catalog.LeastConn, pool{states: "Dd"}, nil, map[int]int{-1: 6}},
		{"no usable backend: source hash", catalog.SourceHash, pool{states: "dD"}, nil, map[int]int{-1: 6}},
		{"no usable backend: all tried", catalog.RoundRobin, pool{states: "UU"}, []int{0, 1}, map[int]int{-1: 6}},
		{"no backend at all", catalog.LeastConn, pool{}, nil, map[int]int{-1: 6}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := picks(tc.pool.build(), tc.policy, client, tc.skip, 6)
			if tc.want == nil { // one backend takes every pick
				if len(got) != 1 || got[-1] != 0 {
					t.Fatalf("picks %v, want one backend for all", got)
				}
				return
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("picks %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSourceHash checks the properties source_hash promises: clients spread
// over the backends, each keeps its backend, and when a backend leaves
// rotation only its clients move — and they come back with it.
func TestSourceHash(t *testing.T) {
	const clients = 3000
	for _, n := range []int{2, 3, 5} {
		t.Run(fmt.Sprintf("%d backends", n), func(t *testing.T) {
			set := pool{states: "UUUUU"[:n]}.build()
			var p picker
			client := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}) }
			before := make([]*backend, clients)
			count := map[*backend]int{}
			for i := range clients {
				before[i] = p.pick(set, catalog.SourceHash, client(i), nil)
				count[before[i]]++
				if again := p.pick(set, catalog.SourceHash, client(i), nil); again != before[i] {
					t.Fatalf("client %d moved without a change", i)
				}
			}
			for _, b := range set.list {
				if share := float64(count[b]) / clients; share < 0.6/float64(n) || share > 1.4/float64(n) {
					t.Errorf("backend %s takes %.0f%% of clients, want about %.0f%%", b.addr, 100*share, 100/float64(n))
				}
			}
			gone := set.list[0]
			gone.state = stateDown
			for i := range clients {
				b := p.pick(set, catalog.SourceHash, client(i), nil)
				if b == gone || (before[i] != gone && b != before[i]) {
					t.Fatalf("client %d: %s → %s after %s went down", i, before[i].addr, b.addr, gone.addr)
				}
			}
			gone.state = stateUp
			for i := range clients {
				if b := p.pick(set, catalog.SourceHash, client(i), nil); b != before[i] {
					t.Fatalf("client %d did not come back to %s", i, before[i].addr)
				}
			}
		})
	}
}

// BenchmarkPick measures a pick on the flow-setup path; it must not
// allocate.
func BenchmarkPick(b *testing.B) {
	set := pool{states: "UDUdU", active: []int64{3, 0, 1, 0, 1}}.build()
	client := netip.MustParseAddr("198.51.100.10")
	for _, policy := range []catalog.Balance{catalog.RoundRobin, catalog.LeastConn, catalog.SourceHash} {
		b.Run(policy.String(), func(b *testing.B) {
			var p picker
			b.ReportAllocs()
			for b.Loop() {
				if p.pick(set, policy, client, nil) == nil {
					b.Fatal("no backend")
				}
			}
		})
	}
}

// TestWeightedRoundRobin: round_robin among SRV backends of one tier
// follows their weights (each weight w gets a share of w+1, RFC 2782's
// small share for weight 0); a lower tier and unusable backends get none.
func TestWeightedRoundRobin(t *testing.T) {
	const n = 20000
	cases := []struct {
		name     string
		states   string
		priority []uint16
		weights  []uint16
		want     []float64 // expected share of picks per backend
	}{
		{"one to three", "UU", []uint16{10, 10}, []uint16{99, 299}, []float64{0.25, 0.75}},
		{"one to one to two", "UUU", []uint16{10, 10, 10}, []uint16{9, 9, 19}, []float64{0.25, 0.25, 0.5}},
		{"weight 0 gets a small share", "UU", []uint16{10, 10}, []uint16{0, 99}, []float64{0.01, 0.99}},
		{"a down backend's weight is not used", "UDU", []uint16{10, 10, 10}, []uint16{99, 999, 299}, []float64{0.25, 0, 0.75}},
		{"the next tier waits", "UUU", []uint16{10, 10, 20}, []uint16{99, 299, 999}, []float64{0.25, 0.75, 0}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			set := pool{states: tc.states}.build()
			for i, b := range set.list {
				b.setSRV(tc.priority[i], tc.weights[i])
			}
			got := picks(set, catalog.RoundRobin, netip.MustParseAddr("198.51.100.10"), nil, n)
			for i, want := range tc.want {
				share := float64(got[i]) / n
				// 20000 picks: the standard deviation of a share is at
				// most 0.36%; 2 points is far outside chance.
				if share < want-0.02 || share > want+0.02 || (want == 0) != (got[i] == 0) {
					t.Errorf("backend %d (weight %d) took %.3f of the picks, want %.3f: %v", i, tc.weights[i], share, want, got)
				}
			}
		})
	}
}

// TestLeastConnCountsDialsInProgress: least_conn counts a TCP flow from
// the moment it picks its backend, not once its dial has succeeded. Four
// flows arrive while backend 0 is idle and backend 1 holds 2 flows; each
// dial is held in progress. Counted only once connected, all four went to
// backend 0 (4 against 2); counted from the pick, they even the load. A
// dial that fails leaves no count behind.
func TestLeastConnCountsDialsInProgress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	g, _ := newUnitGateway(t)
	g.opts.DialTimeout = 5 * time.Second
	calls, release := make(chan string), make(chan struct{})
	g.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		calls <- addr
		<-release
		var d net.Dialer
		return d.DialContext(ctx, network, l.Addr().String()) // every backend is the loopback listener
	}
	st := g.state("web")
	st.setBackends([]backendAddr{{addr: netip.MustParseAddr("192.0.2.10")}, {addr: netip.MustParseAddr("192.0.2.11")}}, false)
	bs := st.backends.Load().list
	bs[1].active.Store(2)
	d := decision{svc: &service{spec: catalog.Service{Name: "web", Balance: catalog.LeastConn}, st: st},
		port: catalog.Port{Protocol: catalog.TCP, Port: 80, Target: 80}, set: st.backends.Load()}

	var (
		wg    sync.WaitGroup
		conns = make(chan *net.TCPConn, 4)
		load  = map[string]int64{"192.0.2.10:80": bs[0].active.Load(), "192.0.2.11:80": bs[1].active.Load()}
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, _ := g.dialTCP(d, netip.MustParseAddr("198.51.100.10"))
			conns <- c
		}()
		load[<-calls]++ // its dial is in progress, held
	}
	close(release)
	wg.Wait()
	close(conns)
	for c := range conns {
		if c == nil {
			t.Fatal("a dial failed")
		}
		c.Close()
	}
	if a, b := load["192.0.2.10:80"], load["192.0.2.11:80"]; a-b > 1 || b-a > 1 {
		t.Errorf("flows per backend (live and dialling) %d and %d: least_conn did not count dials in progress", a, b)
	}
	for _, b := range bs {
		b.dialing.Store(0) // the flows above were not bound: HandleTCP would end their counts
	}

	// Dials that fail, on both backends in turn.
	g.dial = func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("connection refused") }
	if c, _, _ := g.dialTCP(d, netip.MustParseAddr("198.51.100.10")); c != nil {
		t.Fatal("a failing dial returned a connection")
	}
	for i, b := range bs {
		if n := b.dialing.Load(); n != 0 {
			t.Errorf("backend %d: %d dials counted in progress after they failed", i, n)
		}
	}
}
