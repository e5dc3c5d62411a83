package gateway

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ztgate/ztgate/conf"
)

// TestAPIStoreSweepsLitter: the temporary files of a save a crash cut
// short are removed when the store is loaded; other files stay.
func TestAPIStoreSweepsLitter(t *testing.T) {
	dir := t.TempDir()
	litter := filepath.Join(dir, "."+apiServicesFile+".tmp-123")
	other := filepath.Join(dir, "keep.txt")
	for _, p := range []string{litter, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := newAPIStore(dir).load(conf.ServiceContext{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(litter); !os.IsNotExist(err) {
		t.Errorf("the interrupted save's file is still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another file went: %v", err)
	}
}
