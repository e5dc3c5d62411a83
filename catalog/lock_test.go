//go:build unix

package catalog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestExclusiveStateDir: a second exclusive pool on a state directory is
// refused before it touches the state file (flock conflicts between two
// opens of the lock file, in one process as between two), and the
// directory is free again once the first is closed.
func TestExclusiveStateDir(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	cfg := stateCfg(dir, clk)
	cfg.Exclusive = true
	first := mustOpen(t, cfg)
	if _, err := first.Acquire(req("web")); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := OpenPool(cfg); !errors.Is(err, ErrStateDirInUse) {
		t.Fatalf("a second pool on the directory: %v, want ErrStateDirInUse", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, StateFileName)); string(after) != string(before) {
		t.Error("the refused pool changed the state file")
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again := mustOpen(t, cfg)
	defer again.Close()
	if a, ok := again.Lookup("web"); !ok || !a.VIP.IsValid() {
		t.Errorf("the allocation after reopening: %+v %v", a, ok)
	}
	if err := (*Pool)(nil).Close(); err != nil {
		t.Errorf("Close of a nil pool: %v", err)
	}
}

// TestProbeStateDir: ProbeStateDir finds a state directory (moved to from
// another) whose lock
// another open of the lock file holds (flock conflicts between two opens,
// in one process as between two), naming the directory and, on Linux,
// the holder; it leaves the lock free, and a directory not there, or free,
// passes without anything being created.
func TestProbeStateDir(t *testing.T) {
	cur, dir := t.TempDir(), t.TempDir()
	held, err := LockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = ProbeStateDir(cur, dir)
	if !errors.Is(err, ErrStateDirInUse) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("probe of a held directory: %v, want ErrStateDirInUse naming %s", err, dir)
	}
	if pid := fmt.Sprintf("process %d", os.Getpid()); runtime.GOOS == "linux" && !strings.Contains(err.Error(), pid) {
		t.Errorf("probe of a held directory: %v, want the holder (%s) named", err, pid)
	}
	if err := held.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ProbeStateDir(cur, dir); err != nil {
		t.Fatalf("probe of a free directory: %v", err)
	}
	lock, err := LockStateDir(dir) // the probe released what it took
	if err != nil {
		t.Fatalf("lock after the probe: %v", err)
	}
	defer lock.Close()
	if err := ProbeStateDir(dir, dir); err != nil {
		t.Errorf("probe of the directory in use itself: %v", err)
	}
	if err := ProbeStateDir(dir, dir+"/."); err != nil {
		t.Errorf("probe of the directory in use, spelt otherwise: %v", err)
	}
	absent := filepath.Join(t.TempDir(), "absent", "state")
	if err := ProbeStateDir(cur, absent); err != nil {
		t.Fatalf("probe of a directory not there: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(absent)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the probe created %s: %v", filepath.Dir(absent), err)
	}
}

// TestProbeStateDirFIFO: a lock file that is a FIFO (nothing ztgate
// makes, but a state_dir may hold anything) does not hang the probe, and
// with it the reload that holds the role's reload lock: opening a FIFO
// read-only waits for a writer. The start opens it read-write, which does
// not wait, and takes the lock; the probe finds it free likewise.
func TestProbeStateDirFIFO(t *testing.T) {
	cur, dir := t.TempDir(), t.TempDir()
	fifo := filepath.Join(dir, LockFileName)
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- ProbeStateDir(cur, dir) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("probe of a directory whose lock file is a FIFO: %v, want nil (free)", err)
		}
	case <-time.After(2 * time.Second):
		// Let the probe's open return before the test ends.
		if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		t.Fatal("the probe hangs on a FIFO lock file")
	}
}

// TestStateDirNotCreatable: a state directory that cannot be made (a path
// through a file; as root, permissions cannot be tested) is an error that
// names the key and what to do, for the lock and for the pool's state
// file, besides the mkdir error (which getting-started.md quotes).
func TestStateDirNotCreatable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "state")
	_, lockErr := LockStateDir(dir)
	_, _, _, loadErr := loadState(filepath.Join(dir, StateFileName), [families]addrSpace{}, time.Unix(0, 0))
	for what, err := range map[string]error{"lock": lockErr, "state file": loadErr} {
		if err == nil || !strings.Contains(err.Error(), "(state_dir): mkdir "+file+": not a directory: make it a directory this user can write, or set state_dir to one") {
			t.Errorf("%s: %v", what, err)
		}
	}
}
