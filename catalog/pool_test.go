package catalog

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestPoolPins(t *testing.T) {
	tests := []struct {
		name     string
		pool6    string
		setup    []Request // reconciled first
		reqs     []Request
		want     map[string]string
		wantErrs []error
		wantText []string
	}{
		{
			name: "pins honoured",
			reqs: []Request{req("web", "10.100.0.10"), req("db")},
			want: map[string]string{"web": "10.100.0.10"},
		},
		{
			name:     "two services pin one VIP",
			reqs:     []Request{req("alpha", "10.100.0.10"), req("beta", "10.100.0.10")},
			wantErrs: []error{ErrPinConflict},
			wantText: []string{`"alpha"`, `"beta"`, "10.100.0.10"},
		},
		{
			name:     "pin on the network address",
			reqs:     []Request{req("web", "10.100.0.0")},
			wantErrs: []error{ErrReserved},
			wantText: []string{`"web"`, "network address"},
		},
		{
			name:     "pin on the gateway address",
			reqs:     []Request{req("web", "10.100.0.1")},
			wantErrs: []error{ErrReserved},
			wantText: []string{"gateway address"},
		},
		{
			name:     "pin on the broadcast address",
			reqs:     []Request{req("web", "10.100.0.255")},
			wantErrs: []error{ErrReserved},
			wantText: []string{"broadcast address"},
		},
		{
			name:     "pin outside the pool",
			reqs:     []Request{req("web", "10.101.0.5")},
			wantErrs: []error{ErrPinOutsidePool},
			wantText: []string{"10.101.0.5", "10.100.0.0/24"},
		},
		{
			name:     "IPv6 address as the IPv4 pin",
			reqs:     []Request{req("web", "fd00::5")},
			wantErrs: []error{ErrPinOutsidePool},
			wantText: []string{"not an IPv4 address"},
		},
		{
			name:     "IPv6 pin without an IPv6 pool",
			reqs:     []Request{req("web", "", "fd00::5")},
			wantErrs: []error{ErrPinOutsidePool},
			wantText: []string{"no IPv6 pool"},
		},
		{
			name:     "IPv6 pin on the subnet-router anycast address",
			pool6:    "fd00:ab::/120",
			reqs:     []Request{req("web", "", "fd00:ab::")},
			wantErrs: []error{ErrReserved},
			wantText: []string{"subnet-router anycast"},
		},
		{
			name:     "IPv6 pin on the first host",
			pool6:    "fd00:ab::/120",
			reqs:     []Request{req("web", "", "fd00:ab::1")},
			wantErrs: []error{ErrReserved},
			wantText: []string{"gateway address"},
		},
		{
			name:     "pin on another service's allocation",
			setup:    []Request{req("alpha", "10.100.0.20")},
			reqs:     []Request{req("alpha"), req("beta", "10.100.0.20")},
			wantErrs: []error{ErrPinConflict},
			wantText: []string{`"beta"`, `allocated to "alpha"`},
		},
		{
			name:     "pin on an address held for a removed service",
			setup:    []Request{req("old", "10.100.0.30")},
			reqs:     []Request{req("new", "10.100.0.30")},
			wantErrs: []error{ErrPinConflict},
			wantText: []string{`held for the released service "old" until 2025-01-02T03:04:35Z`},
		},
		{
			name:     "two services swap pins",
			setup:    []Request{req("alpha", "10.100.0.20"), req("beta", "10.100.0.21")},
			reqs:     []Request{req("alpha", "10.100.0.21"), req("beta", "10.100.0.20")},
			wantErrs: []error{ErrPinConflict},
			wantText: []string{`"alpha" pins 10.100.0.21, which is allocated to "beta"`, `"beta" pins 10.100.0.20, which is allocated to "alpha"`},
		},
		{
			// alpha's old VIP is held for it: clients may still have it cached.
			name:     "a service pins the VIP another one's pin moves away from",
			setup:    []Request{req("alpha", "10.100.0.20"), req("beta")},
			reqs:     []Request{req("alpha", "10.100.0.22"), req("beta", "10.100.0.20")},
			wantErrs: []error{ErrPinConflict},
			wantText: []string{`"beta" pins 10.100.0.20, which is held for "alpha" (its VIP before its current one) until 2025-01-02T03:04:35Z`},
		},
		{
			name:  "a new pin moves the service and holds its old VIP for it",
			setup: []Request{req("web", "10.100.0.10")},
			reqs:  []Request{req("web", "10.100.0.11")},
			want:  map[string]string{"web": "10.100.0.11"},
		},
		{
			name:  "dropping a pin keeps the VIP",
			setup: []Request{req("web", "10.100.0.10")},
			reqs:  []Request{req("web")},
			want:  map[string]string{"web": "10.100.0.10"},
		},
		{
			name:     "every problem at once",
			reqs:     []Request{req("a", "10.100.0.9"), req("b", "10.100.0.9"), req("c", "10.100.0.1"), req("d", "192.0.2.1"), req(""), req("a")},
			wantErrs: []error{ErrPinConflict, ErrReserved, ErrPinOutsidePool, ErrInvalidRequest},
			wantText: []string{`"a" and "b"`, `"c"`, `"d"`, "no service name", `"a" is requested twice`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/24"), Prefix6: pfx(tc.pool6), HoldDown: 30 * time.Second, Now: clock.Now})
			if _, err := p.Reconcile(tc.setup); err != nil {
				t.Fatalf("setup: %v", err)
			}
			_, err := p.Reconcile(tc.reqs)
			checkErr(t, err, tc.wantErrs, tc.wantText)
			checkVIPs(t, p, tc.want)
			checkConsistent(t, p)
		})
	}
}

func TestPoolMovedPinHoldsOldVIP(t *testing.T) {
	p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/24"), HoldDown: time.Minute, Now: newFakeClock().Now})
	for _, r := range []Request{req("web", "10.100.0.10"), req("web", "10.100.0.11")} {
		if _, err := p.Acquire(r); err != nil {
			t.Fatal(err)
		}
	}
	if o, ok := p.Owner(ip("10.100.0.10")); !ok || o != "web" {
		t.Errorf("old VIP owner = %q, %v; want held for web", o, ok)
	}
	if _, err := p.Acquire(req("other", "10.100.0.10")); !errors.Is(err, ErrPinConflict) {
		t.Errorf("pin on the moved-from VIP: %v, want ErrPinConflict", err)
	}
	// Pinning it again takes it back out of its hold.
	if a, err := p.Acquire(req("web", "10.100.0.10")); err != nil || a.VIP != ip("10.100.0.10") {
		t.Fatalf("re-pin: %v %v", a, err)
	}
	if used, held, _ := p.Usage(); used != 1 || held != 1 {
		t.Errorf("Usage = %d used, %d held; want 1, 1", used, held)
	}
}

// collidingNames returns two names with the same home slot in s.
func collidingNames(t *testing.T, s addrSpace) (string, string) {
	t.Helper()
	first := map[uint64]string{}
	for i := range 1000 {
		name := fmt.Sprintf("svc%d", i)
		h := s.home(name)
		if other, ok := first[h]; ok {
			return other, name
		}
		first[h] = name
	}
	t.Fatal("no colliding names among 1000")
	return "", ""
}

func TestPoolDeterministicSlot(t *testing.T) {
	space29, err := newAddrSpace(pfx("10.100.0.0/29"), fam4)
	if err != nil {
		t.Fatal(err)
	}
	a, b := collidingNames(t, space29)
	first, second := min(a, b), max(a, b) // Reconcile allocates in name order
	home := space29.addr(space29.home(first))
	next := space29.addr((space29.home(first) + 1) % space29.slots)

	tests := []struct {
		name  string
		pool  string
		order [][]Request // each applied with Reconcile to a fresh pool; results must agree
		want  map[string]string
	}{
		{
			name:  "same name same VIP on fresh state, any order",
			pool:  "10.100.0.0/16",
			order: [][]Request{{req("web"), req("db"), req("mail")}, {req("mail"), req("web")}, {req("db"), req("mail"), req("web")}},
		},
		{
			name:  "two names on one slot probe to distinct VIPs",
			pool:  "10.100.0.0/29",
			order: [][]Request{{req(first), req(second)}, {req(second), req(first)}},
			want:  map[string]string{first: home.String(), second: next.String()},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]netip.Addr{}
			for _, reqs := range tc.order {
				p := mustOpen(t, PoolConfig{Prefix: pfx(tc.pool)})
				res, err := p.Reconcile(reqs)
				if err != nil {
					t.Fatal(err)
				}
				for s, a := range res {
					if prev, ok := got[s]; ok && prev != a.VIP {
						t.Errorf("%s: %s in one pool, %s in another", s, prev, a.VIP)
					}
					got[s] = a.VIP
				}
				checkVIPs(t, p, tc.want)
			}
		})
	}
}

func TestPoolHomeSlot(t *testing.T) {
	// Without collisions a service gets exactly its home address, whether
	// allocated by Reconcile or Acquire.
	p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/16")})
	for _, name := range []string{"web", "db", "mail"} {
		a, err := p.Acquire(req(name))
		if err != nil {
			t.Fatal(err)
		}
		s := p.spaces[fam4]
		if want := s.addr(s.home(name)); a.VIP != want {
			t.Errorf("%s: %s, want home %s", name, a.VIP, want)
		}
	}
}

func TestPoolExhaustion(t *testing.T) {
	names := func(prefix string, n int) []Request {
		var rs []Request
		for i := range n {
			rs = append(rs, req(fmt.Sprintf("%s%d", prefix, i)))
		}
		return rs
	}
	tests := []struct {
		name     string
		pool6    string
		setup    []Request
		reqs     []Request
		wantErrs []error
		wantText []string
	}{
		{name: "five services fit a /29", reqs: names("s", 5)},
		{
			name:     "six services do not fit a /29",
			reqs:     names("s", 6),
			wantErrs: []error{ErrPoolExhausted},
			wantText: []string{"10.100.0.0/29", "6 services need VIPs", "room for 5"},
		},
		{
			name:     "held addresses count",
			setup:    names("old", 3),
			reqs:     names("new", 3),
			wantErrs: []error{ErrPoolExhausted},
			wantText: []string{"3 services need VIPs and 3 addresses are held back", "room for 5"},
		},
		{
			name:     "IPv6 pool exhausted",
			pool6:    "fd00:ab::/126",
			reqs:     names("s", 3),
			wantErrs: []error{ErrPoolExhausted},
			wantText: []string{"IPv6 pool fd00:ab::/126", "3 services need VIPs", "room for 2"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/29"), Prefix6: pfx(tc.pool6), HoldDown: time.Minute, Now: newFakeClock().Now})
			if _, err := p.Reconcile(tc.setup); err != nil {
				t.Fatalf("setup: %v", err)
			}
			_, err := p.Reconcile(tc.reqs)
			checkErr(t, err, tc.wantErrs, tc.wantText)
			if err != nil {
				return
			}
			checkConsistent(t, p)
			if used, _, capacity := p.Usage(); used != len(tc.reqs) || capacity != 5 {
				t.Errorf("Usage = %d used of %d", used, capacity)
			}
		})
	}
}

func TestPoolAcquireExhausted(t *testing.T) {
	p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/29")})
	for i := range 5 {
		if _, err := p.Acquire(req(fmt.Sprint("s", i))); err != nil {
			t.Fatal(err)
		}
	}
	_, err := p.Acquire(req("one-too-many"))
	checkErr(t, err, []error{ErrPoolExhausted}, []string{"6 services need VIPs", "room for 5"})
	// Re-acquiring an allocated service needs no room.
	if _, err := p.Acquire(req("s0")); err != nil {
		t.Errorf("re-acquire: %v", err)
	}
}

// holdStep is one step of a hold-down scenario.
type holdStep struct {
	advance  time.Duration
	inUse    bool   // what InUse answers from this step on
	release  string // Release this service, else Acquire req
	req      Request
	want     map[string]string
	wantErrs []error
	wantText []string
}

func TestPoolHoldDown(t *testing.T) {
	// "ret" pins .50 at first, so that getting .50 back later is the hold
	// at work, not its name's home slot.
	const held = "10.100.0.50"
	tests := []struct {
		name  string
		steps []holdStep
	}{
		{
			name: "released VIP not reused until expiry",
			steps: []holdStep{
				{req: req("ret", held)},
				{release: "ret", want: map[string]string{"ret": ""}},
				{advance: 29 * time.Second, req: req("other", held), wantErrs: []error{ErrPinConflict}, wantText: []string{`held for the released service "ret"`}},
				{advance: time.Second, req: req("other", held), want: map[string]string{"other": held}},
			},
		},
		{
			name: "the same service returning gets it back",
			steps: []holdStep{
				{req: req("ret", held)},
				{release: "ret"},
				{advance: 20 * time.Second, req: req("x")},
				{req: req("ret"), want: map[string]string{"ret": held}},
			},
		},
		{
			name: "a service returning after expiry gets its home slot", // FNV-1a("ret") % 253 + 2 = .151
			steps: []holdStep{
				{req: req("ret", held)},
				{release: "ret"},
				{advance: 31 * time.Second, req: req("ret"), want: map[string]string{"ret": "10.100.0.151"}},
			},
		},
		{
			name: "InUse extends the hold",
			steps: []holdStep{
				{req: req("ret", held)},
				{inUse: true, release: "ret"},
				{inUse: true, advance: time.Hour, req: req("other", held), wantErrs: []error{ErrPinConflict}, wantText: []string{"while flows to it are alive"}},
				{req: req("other", held), want: map[string]string{"other": held}},
			},
		},
		{
			name: "InUse extends the hold of a VIP a pin moved away from",
			steps: []holdStep{
				{req: req("ret", held)},
				{inUse: true, req: req("ret", "10.100.0.51")},
				{inUse: true, advance: time.Hour, req: req("other", held), wantErrs: []error{ErrPinConflict},
					wantText: []string{`held for "ret" (its VIP before its current one) while flows to it are alive`}},
				{req: req("other", held), want: map[string]string{"other": held, "ret": "10.100.0.51"}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			var mu sync.Mutex
			inUse := false
			p := mustOpen(t, PoolConfig{
				Prefix: pfx("10.100.0.0/24"), HoldDown: 30 * time.Second, Now: clock.Now,
				InUse: func(netip.Addr) bool { mu.Lock(); defer mu.Unlock(); return inUse },
			})
			for i, st := range tc.steps {
				clock.Advance(st.advance)
				mu.Lock()
				inUse = st.inUse
				mu.Unlock()
				var err error
				if st.release != "" {
					err = p.Release(st.release)
				} else {
					_, err = p.Acquire(st.req)
				}
				t.Logf("step %d: %v", i, err)
				checkErr(t, err, st.wantErrs, st.wantText)
				checkVIPs(t, p, st.want)
				checkConsistent(t, p)
			}
		})
	}
}

func TestPoolIPv6(t *testing.T) {
	tests := []struct {
		name  string
		pool6 string
		reqs  []Request
		want6 map[string]string
	}{
		{name: "small pool", pool6: "fd00:ab::/120", reqs: []Request{req("web"), req("db")}},
		{name: "a /64", pool6: "fd00:ab::/64", reqs: []Request{req("web"), req("db")}},
		{name: "a /48 allocates in its first /64", pool6: "fd00:ab::/48", reqs: []Request{req("web"), req("db")}},
		{
			name:  "pins",
			pool6: "fd00:ab::/64",
			reqs:  []Request{req("web", "", "fd00:ab::80"), req("db", "10.100.0.9", "fd00:ab::5432")},
			want6: map[string]string{"web": "fd00:ab::80", "db": "fd00:ab::5432"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/24"), Prefix6: pfx(tc.pool6)})
			res, err := p.Reconcile(tc.reqs)
			if err != nil {
				t.Fatal(err)
			}
			first64 := netip.PrefixFrom(pfx(tc.pool6).Addr(), max(64, pfx(tc.pool6).Bits()))
			for s, a := range res {
				if !a.VIP.Is4() || !a.VIP6.Is6() || !first64.Contains(a.VIP6) {
					t.Errorf("%s: %s %s", s, a.VIP, a.VIP6)
				}
				if w, ok := tc.want6[s]; ok && a.VIP6 != ip(w) {
					t.Errorf("%s: VIP6 %s, want %s", s, a.VIP6, w)
				}
			}
			checkConsistent(t, p)
			again, err := p.Reconcile(reversed(tc.reqs))
			if err != nil || !maps.Equal(res, again) {
				t.Errorf("reconcile again: %v\n%v\n%v", err, res, again)
			}
		})
	}
}

func TestPoolReconcileStability(t *testing.T) {
	var base []Request
	for i := range 40 {
		base = append(base, req(fmt.Sprintf("svc-%02d", i)))
	}
	base[3].VIP = ip("10.100.0.3")
	shuffled := slices.Clone(base)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	tests := []struct {
		name string
		next []Request
	}{
		{name: "same set", next: base},
		{name: "reversed", next: reversed(base)},
		{name: "shuffled", next: shuffled},
		{name: "one added", next: append(slices.Clone(base), req("newcomer"))},
		{name: "one removed", next: base[1:]},
		{name: "pin dropped", next: append(slices.Clone(base[:3]), append([]Request{req("svc-03")}, base[4:]...)...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/24"), Prefix6: pfx("fd00:ab::/112")})
			before, err := p.Reconcile(base)
			if err != nil {
				t.Fatal(err)
			}
			after, err := p.Reconcile(tc.next)
			if err != nil {
				t.Fatal(err)
			}
			for s, a := range after {
				if b, ok := before[s]; ok && a != b {
					t.Errorf("%s moved from %v to %v", s, b, a)
				}
			}
			if len(after) != len(tc.next) {
				t.Errorf("%d allocations for %d requests", len(after), len(tc.next))
			}
			checkConsistent(t, p)
		})
	}
}

func TestPoolAllOrNothing(t *testing.T) {
	tests := []struct {
		name    string
		acquire bool
		reqs    []Request
		wantErr error
	}{
		{name: "conflict among otherwise valid changes", reqs: []Request{req("a"), req("b", "10.100.0.5"), req("c", "10.100.0.5"), req("new")}, wantErr: ErrPinConflict},
		{name: "exhausted", reqs: []Request{req("a"), req("n1"), req("n2"), req("n3"), req("n4"), req("n5")}, wantErr: ErrPoolExhausted},
		{name: "pin on a held address", reqs: []Request{req("a"), req("b"), req("c", "10.100.0.3")}, wantErr: ErrPinConflict},
		{name: "acquire conflicting pin", acquire: true, reqs: []Request{req("x", "10.100.0.3")}, wantErr: ErrPinConflict},
		{name: "acquire reserved", acquire: true, reqs: []Request{req("a", "10.100.0.7")}, wantErr: ErrReserved},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clock := newFakeClock()
			p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/29"), StateDir: dir, HoldDown: time.Minute, Now: clock.Now})
			// a has .6, b has .4, and .3 is held for b.
			if _, err := p.Reconcile([]Request{req("a", "10.100.0.6"), req("b", "10.100.0.3")}); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Reconcile([]Request{req("a"), req("b", "10.100.0.4")}); err != nil {
				t.Fatal(err)
			}
			fileBefore := readFile(t, p.Path())
			allocsBefore := p.Allocations()
			clock.Advance(time.Second)
			var err error
			if tc.acquire {
				_, err = p.Acquire(tc.reqs[0])
			} else {
				_, err = p.Reconcile(tc.reqs)
			}
			checkErr(t, err, []error{tc.wantErr}, nil)
			if got := readFile(t, p.Path()); got != fileBefore {
				t.Errorf("state file changed:\n%s\nto\n%s", fileBefore, got)
			}
			if got := p.Allocations(); !slices.Equal(got, allocsBefore) {
				t.Errorf("allocations changed: %v to %v", allocsBefore, got)
			}
		})
	}
}

func TestPoolInvalidConfig(t *testing.T) {
	tests := []struct {
		name     string
		cfg      PoolConfig
		wantErrs []error
		wantText []string
	}{
		{name: "a /29 is the smallest IPv4 pool", cfg: PoolConfig{Prefix: pfx("10.100.0.0/29")}},
		{name: "a /126 is the smallest IPv6 pool", cfg: PoolConfig{Prefix: pfx("10.100.0.0/24"), Prefix6: pfx("fd00::/126")}},
		{name: "no pool", wantErrs: []error{ErrInvalidPool}},
		{name: "IPv6 as the IPv4 pool", cfg: PoolConfig{Prefix: pfx("fd00::/64")}, wantErrs: []error{ErrInvalidPool}, wantText: []string{"not an IPv4 prefix"}},
		{name: "IPv4 as the IPv6 pool", cfg: PoolConfig{Prefix: pfx("10.100.0.0/24"), Prefix6: pfx("10.200.0.0/24")}, wantErrs: []error{ErrInvalidPool}, wantText: []string{"not an IPv6 prefix"}},
		{name: "a /30 leaves one address", cfg: PoolConfig{Prefix: pfx("10.100.0.0/30")}, wantErrs: []error{ErrInvalidPool}, wantText: []string{"10.100.0.0/30 is too small"}},
		{name: "a /32", cfg: PoolConfig{Prefix: pfx("10.100.0.1/32")}, wantErrs: []error{ErrInvalidPool}},
		{name: "a /127", cfg: PoolConfig{Prefix: pfx("10.100.0.0/24"), Prefix6: pfx("fd00::/127")}, wantErrs: []error{ErrInvalidPool}, wantText: []string{"too small"}},
		{name: "negative hold-down", cfg: PoolConfig{Prefix: pfx("10.100.0.0/24"), HoldDown: -time.Second}, wantErrs: []error{errAny}, wantText: []string{"negative"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := OpenPool(tc.cfg)
			checkErr(t, err, tc.wantErrs, tc.wantText)
		})
	}
}

func TestPoolUsage(t *testing.T) {
	clock := newFakeClock()
	p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/24"), HoldDown: time.Minute, Now: clock.Now})
	if _, err := p.Reconcile([]Request{req("a"), req("b"), req("c")}); err != nil {
		t.Fatal(err)
	}
	if err := p.Release("b"); err != nil {
		t.Fatal(err)
	}
	if err := p.Release("never-allocated"); err != nil {
		t.Fatal(err)
	}
	if used, held, capacity := p.Usage(); used != 2 || held != 1 || capacity != 253 {
		t.Errorf("Usage = %d, %d, %d; want 2, 1, 253", used, held, capacity)
	}
	clock.Advance(time.Minute)
	if err := p.Release("c"); err != nil { // a change: frees b's expired hold
		t.Fatal(err)
	}
	if used, held, _ := p.Usage(); used != 1 || held != 1 {
		t.Errorf("after expiry Usage = %d, %d; want 1, 1", used, held)
	}
	if p.Path() != "" {
		t.Errorf("in-memory Path() = %q", p.Path())
	}
}

func TestPoolConcurrent(t *testing.T) {
	p := mustOpen(t, PoolConfig{Prefix: pfx("10.100.0.0/24"), StateDir: t.TempDir()})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 25 {
				name := fmt.Sprintf("w%d-%d", w, i%5)
				a, err := p.Acquire(req(name))
				if err != nil {
					t.Error(err)
					return
				}
				if o, ok := p.Owner(a.VIP); !ok || o != name {
					t.Errorf("Owner(%s) = %q", a.VIP, o)
				}
				if i%3 == 0 {
					if err := p.Release(name); err != nil {
						t.Error(err)
					}
				}
				p.Usage()
			}
		})
	}
	wg.Wait()
	checkConsistent(t, p)
}

func reversed(rs []Request) []Request {
	out := slices.Clone(rs)
	slices.Reverse(out)
	return out
}

// TestPoolHolds: Holds is true while a released service's VIP is held for
// it (within the hold-down, or while flows to it live), false for a
// service that is allocated, never was, or whose hold expired.
func TestPoolHolds(t *testing.T) {
	clock := newFakeClock()
	var mu sync.Mutex
	inUse := false
	setInUse := func(v bool) { mu.Lock(); inUse = v; mu.Unlock() }
	p := mustOpen(t, PoolConfig{
		Prefix: pfx("10.100.0.0/24"), HoldDown: 30 * time.Second, Now: clock.Now,
		InUse: func(netip.Addr) bool { mu.Lock(); defer mu.Unlock(); return inUse },
	})
	if _, err := p.Acquire(req("web")); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name    string
		do      func()
		service string
		want    bool
	}{
		{"allocated", func() {}, "web", false},
		{"never allocated", func() {}, "db", false},
		{"released", func() {
			if err := p.Release("web"); err != nil {
				t.Fatal(err)
			}
		}, "web", true},
		{"within the hold-down", func() { clock.Advance(29 * time.Second) }, "web", true},
		{"flows to it after the hold-down", func() { setInUse(true); clock.Advance(2 * time.Second) }, "web", true},
		{"expired", func() { setInUse(false) }, "web", false},
	}
	for _, s := range steps {
		s.do()
		if got := p.Holds(s.service); got != s.want {
			t.Errorf("%s: Holds(%q) = %v, want %v", s.name, s.service, got, s.want)
		}
	}
}

// TestPoolHeldTieReleaseOrder: of several VIPs held for a service with one
// release time (a coarse clock, or holds the clock going back restarted at
// one instant), a returning service gets back the one it released last,
// not the highest address, in the pool that made the holds and in one
// loaded from its state file.
func TestPoolHeldTieReleaseOrder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first string // the VIP pinned first, then moved away from (held first)
		last  string // the VIP it moved to, then released (held last)
	}{
		{"last released is the lower address", "10.100.0.200", "10.100.0.10"},
		{"last released is the higher address", "10.100.0.10", "10.100.0.200"},
	} {
		for _, restart := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/restart=%v", tc.name, restart), func(t *testing.T) {
				clock := newFakeClock() // never moves: every hold has one release time
				cfg := PoolConfig{Prefix: pfx("10.100.0.0/24"), StateDir: t.TempDir(), HoldDown: time.Minute, Now: clock.Now}
				p := mustOpen(t, cfg)
				for _, r := range []Request{req("web", tc.first), req("web", tc.last)} {
					if _, err := p.Acquire(r); err != nil {
						t.Fatal(err)
					}
				}
				if err := p.Release("web"); err != nil {
					t.Fatal(err)
				}
				if restart {
					p = mustOpen(t, cfg)
				}
				a, err := p.Acquire(req("web"))
				if err != nil || a.VIP != ip(tc.last) {
					t.Fatalf("web came back with %v (%v), want %s, the VIP it released last", a.VIP, err, tc.last)
				}
				if o, ok := p.Owner(ip(tc.first)); !ok || o != "web" {
					t.Errorf("Owner(%s) = %q, %v; want still held for web", tc.first, o, ok)
				}
			})
		}
	}
}
