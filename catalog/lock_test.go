//go:build unix

package catalog

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
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
