package catalog

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for PoolConfig.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// pfx parses a prefix; "" is the invalid prefix (no pool).
func pfx(s string) netip.Prefix {
	if s == "" {
		return netip.Prefix{}
	}
	return netip.MustParsePrefix(s)
}

// ip parses an address; "" is the invalid address (automatic).
func ip(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(s)
}

// req builds a request with optional IPv4 and IPv6 pins ("" = automatic).
func req(service string, pins ...string) Request {
	r := Request{Service: service}
	if len(pins) > 0 {
		r.VIP = ip(pins[0])
	}
	if len(pins) > 1 {
		r.VIP6 = ip(pins[1])
	}
	return r
}

func mustOpen(t *testing.T, cfg PoolConfig) *Pool {
	t.Helper()
	p, warnings, err := OpenPool(cfg)
	if err != nil {
		t.Fatalf("OpenPool: %v", err)
	}
	if len(warnings) > 0 {
		t.Fatalf("OpenPool warnings: %q", warnings)
	}
	return p
}

// errAny, as a wanted error, matches any non-nil error.
var errAny = errors.New("any error")

// readFile returns the contents of a file.
func readFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// checkErr fails unless err matches every sentinel in want and its text
// contains every string in text; with no sentinels, err must be nil.
func checkErr(t *testing.T, err error, want []error, text []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want %v", want)
	}
	for _, w := range want {
		if w != errAny && !errors.Is(err, w) {
			t.Errorf("error %q does not match %v", err, w)
		}
	}
	for _, s := range text {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

// checkVIPs fails unless each service in want has that IPv4 VIP ("" = not
// allocated).
func checkVIPs(t *testing.T, p *Pool, want map[string]string) {
	t.Helper()
	for s, w := range want {
		a, ok := p.Lookup(s)
		switch {
		case w == "" && ok:
			t.Errorf("%s: allocated %s, want none", s, a.VIP)
		case w != "" && a.VIP != ip(w):
			t.Errorf("%s: VIP %v (allocated %v), want %s", s, a.VIP, ok, w)
		}
	}
}

// checkConsistent fails unless every allocation is owned by its service,
// inside the pool, and no address is given twice.
func checkConsistent(t *testing.T, p *Pool) {
	t.Helper()
	seen := map[netip.Addr]string{}
	for _, a := range p.Allocations() {
		for f, v := range []netip.Addr{a.VIP, a.VIP6} {
			if !v.IsValid() {
				continue
			}
			if !p.spaces[f].usable(v) {
				t.Errorf("%s: %s is not usable in the pool", a.Service, v)
			}
			if o, ok := p.Owner(v); !ok || o != a.Service {
				t.Errorf("%s: Owner(%s) = %q, %v", a.Service, v, o, ok)
			}
			if other, dup := seen[v]; dup {
				t.Errorf("%s given to %s and %s", v, other, a.Service)
			}
			seen[v] = a.Service
		}
	}
}
