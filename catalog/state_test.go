package catalog

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// stateCfg is the pool the testdata/state files were written for.
func stateCfg(dir string, clock *fakeClock) PoolConfig {
	return PoolConfig{Prefix: pfx("10.100.0.0/24"), Prefix6: pfx("fd00:ab::/120"), StateDir: dir, HoldDown: time.Minute, Now: clock.Now}
}

// stateDirWith returns a state directory holding testdata/state/name as its state file.
func stateDirWith(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "state", name))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, StateFileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestStateLoadValid(t *testing.T) {
	p := mustOpen(t, stateCfg(stateDirWith(t, "valid.json"), newFakeClock()))
	want := []Allocation{
		{Service: "db", VIP: ip("10.100.0.24"), VIP6: ip("fd00:ab::24")},
		{Service: "web", VIP: ip("10.100.0.23"), VIP6: ip("fd00:ab::23")},
	}
	if got := p.Allocations(); !slices.Equal(got, want) {
		t.Errorf("Allocations = %v, want %v", got, want)
	}
	for _, tc := range []struct{ addr, owner string }{{"10.100.0.40", "old"}, {"fd00:ab::40", "old"}, {"10.100.0.41", "web"}} {
		if o, ok := p.Owner(ip(tc.addr)); !ok || o != tc.owner {
			t.Errorf("Owner(%s) = %q, %v; want %q", tc.addr, o, ok, tc.owner)
		}
	}
}

func TestStateCorrupt(t *testing.T) {
	tests := []struct {
		file string
		want string
	}{
		{"truncated.json", "truncated JSON"},
		{"empty.json", "truncated JSON (0 bytes)"},
		{"garbage.bin", "invalid JSON"},
		{"wrong-version.json", "version 2 is not supported"},
		{"no-version.json", "version 0 is not supported"},
		{"duplicate-address.json", `10.100.0.23 is in both allocations[0] ("db") and allocations[1] ("web")`},
		{"held-by-two.json", `10.100.0.24 is in both allocations[0] ("db") and held[1] ("web")`},
		{"duplicate-service.json", `service "web" is allocated twice`},
		{"empty-service.json", "held[0]: no service name"},
		{"unknown-field.json", `unknown field "colour"`},
		{"not-ipv4.json", "fd00:ab::99 is not an IPv4 VIP"},
		{"bad-address.json", "10.100.0.999"},
		{"trailing.json", "unexpected data after the JSON object"},
		// A hold of unknown age: freed at the next change, its VIP would go to
		// another service while clients still have it cached.
		{"no-released-at.json", `held[0] ("old"): no released_at`},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			dir := stateDirWith(t, tc.file)
			before := readFile(t, filepath.Join(dir, StateFileName))
			_, _, err := OpenPool(stateCfg(dir, newFakeClock()))
			checkErr(t, err, []error{ErrCorruptState}, []string{filepath.Join(dir, StateFileName), tc.want, "to recover"})
			if readFile(t, filepath.Join(dir, StateFileName)) != before {
				t.Error("the corrupt file was changed")
			}
		})
	}
}

func TestStateUnreadable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, StateFileName)
	if err := os.Mkdir(path, 0o700); err != nil { // reading a directory fails, even for root
		t.Fatal(err)
	}
	_, _, err := OpenPool(stateCfg(dir, newFakeClock()))
	checkErr(t, err, []error{errAny}, []string{path})
	if errors.Is(err, ErrCorruptState) {
		t.Errorf("unreadable reported as corrupt: %v", err)
	}
}

func TestStateChangedPool(t *testing.T) {
	dir := stateDirWith(t, "changed-pool.json")
	cfg := stateCfg(dir, newFakeClock())
	cfg.Prefix = pfx("10.100.0.0/25")
	p, warnings, err := OpenPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"saved with the IPv4 pool 10.100.0.0/24", `service "far": 10.100.0.200`, `held for "edge": 10.100.0.127`, `held for "gone": 10.100.0.201`} {
		if !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, want) && strings.Contains(w, p.Path()) }) {
			t.Errorf("no warning with %q in %q", want, warnings)
		}
	}
	if len(warnings) != 4 {
		t.Errorf("%d warnings, want 4: %q", len(warnings), warnings)
	}
	res, err := p.Reconcile([]Request{req("web"), req("far")})
	if err != nil {
		t.Fatal(err)
	}
	if res["web"].VIP != ip("10.100.0.23") || res["far"].VIP6 != ip("fd00:ab::20") || !pfx("10.100.0.0/25").Contains(res["far"].VIP) {
		t.Errorf("after the pool change: %v", res)
	}
	content := readFile(t, p.Path())
	for _, gone := range []string{"10.100.0.200", "10.100.0.201", "10.100.0.127", "10.100.0.0/24"} {
		if strings.Contains(content, gone) {
			t.Errorf("saved state still has %s:\n%s", gone, content)
		}
	}
	mustOpen(t, cfg) // no warnings any more
}

func TestStatePersists(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	p := mustOpen(t, stateCfg(filepath.Join(dir, "nested"), clock))
	if _, err := p.Reconcile([]Request{req("web"), req("db", "10.100.0.9"), req("old")}); err != nil {
		t.Fatal(err)
	}
	oldVIP, _ := p.Lookup("old")
	if err := p.Release("old"); err != nil {
		t.Fatal(err)
	}
	want := p.Allocations()
	wantUsed, wantHeld, _ := p.Usage()

	q := mustOpen(t, stateCfg(filepath.Join(dir, "nested"), clock))
	if got := q.Allocations(); !slices.Equal(got, want) {
		t.Errorf("reloaded %v, want %v", got, want)
	}
	if used, held, _ := q.Usage(); used != wantUsed || held != wantHeld {
		t.Errorf("reloaded Usage %d, %d; want %d, %d", used, held, wantUsed, wantHeld)
	}
	if a, err := q.Acquire(req("old")); err != nil || a != oldVIP {
		t.Errorf("returning service after a restart got %v, %v; want %v", a, err, oldVIP)
	}
	info, err := os.Stat(q.Path())
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("state file mode: %v, %v", info, err)
	}
}

// TestStateStaleTempRemoved: a start removes the temporary files an
// interrupted save left in the state directory, and nothing else: not
// other files, and not those of another directory whose name the state
// directory's name would match as a pattern.
func TestStateStaleTempRemoved(t *testing.T) {
	tests := []struct {
		name    string
		dir     string
		sibling string // a directory with litter of its own, to be left alone
	}{
		{name: "plain", dir: "state"},
		{name: "brackets", dir: "gw[1]", sibling: "gw1"},
		{name: "star", dir: "gw*", sibling: "gw-other"},
		{name: "question mark", dir: "gw?", sibling: "gw2"},
		{name: "backslash", dir: `gw\3`, sibling: "gw3"},
		{name: "unclosed bracket", dir: "gw["},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, tc.dir)
			stale := filepath.Join(dir, "."+StateFileName+".tmp-12345")
			other := filepath.Join(dir, "notes.txt")
			keep := []string{other}
			if tc.sibling != "" {
				keep = append(keep, filepath.Join(base, tc.sibling, "."+StateFileName+".tmp-67890"))
			}
			for _, name := range append([]string{stale}, keep...) {
				if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(name, []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			mustOpen(t, stateCfg(dir, newFakeClock()))
			if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("stale temp file: %v", err)
			}
			for _, name := range keep {
				if _, err := os.Stat(name); err != nil {
					t.Errorf("%s removed: %v", name, err)
				}
			}
		})
	}
}

func TestStateSaveFailure(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	p := mustOpen(t, stateCfg(dir, newFakeClock()))
	if _, err := p.Reconcile([]Request{req("web")}); err != nil {
		t.Fatal(err)
	}
	before := p.Allocations()
	// Replace the directory by a file: creating the temporary file fails.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := p.Reconcile([]Request{req("web"), req("db")})
	checkErr(t, err, []error{errAny}, []string{"save VIP state"})
	if got := p.Allocations(); !slices.Equal(got, before) {
		t.Errorf("allocations after a failed save: %v, want %v", got, before)
	}
	if err := p.Release("web"); err == nil {
		t.Error("Release saved into a missing directory")
	}
	if _, ok := p.Lookup("web"); !ok {
		t.Error("a failed Release released")
	}
}

// FuzzStateLoad checks that decoding never panics, that whatever decodes
// is a consistent table, and that a decoded state saves and reloads
// identically.
func FuzzStateLoad(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "state", "*"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	spaces, err := newSpaces(pfx("10.100.0.0/25"), pfx("fd00:ab::/120"))
	if err != nil {
		f.Fatal(err)
	}
	now := newFakeClock().Now()
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, _, err := decodeState(data, spaces, now)
		if err != nil {
			return
		}
		checkTable(t, tab, spaces)
		enc, err := encodeState(tab, spaces)
		if err != nil {
			t.Fatalf("encode a decoded state: %v", err)
		}
		tab2, warnings, err := decodeState(enc, spaces, now)
		if err != nil || len(warnings) > 0 {
			t.Fatalf("reload: %v %q\n%s", err, warnings, enc)
		}
		enc2, err := encodeState(tab2, spaces)
		if err != nil || string(enc2) != string(enc) {
			t.Fatalf("reload differs (%v):\n%s\n%s", err, enc, enc2)
		}
	})
}

// checkTable fails unless the owner index matches the allocations and holds
// exactly and every address is usable.
func checkTable(t *testing.T, tab *table, spaces [families]addrSpace) {
	t.Helper()
	n := 0
	check := func(s string, as addrs) {
		for f, a := range as {
			if !a.IsValid() {
				continue
			}
			n++
			if !spaces[f].usable(a) {
				t.Errorf("%s: %s not usable", s, a)
			}
			if tab.owner[a] != s {
				t.Errorf("%s: owner[%s] = %q", s, a, tab.owner[a])
			}
		}
	}
	for s, rec := range tab.allocs {
		if !rec.addrs[fam4].IsValid() {
			t.Errorf("%s: allocation without an IPv4 VIP", s)
		}
		check(s, rec.addrs)
	}
	for _, h := range tab.holds {
		check(h.service, h.addrs)
	}
	if n != len(tab.owner) {
		t.Errorf("%d addresses, %d owners", n, len(tab.owner))
	}
}
