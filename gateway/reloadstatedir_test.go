package gateway

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/catalog"
)

// TestReloadRefusesHeldStateDir: a reload that moves gateway.state_dir (a
// restart-only key) to a directory whose lock another process holds fails
// as an invalid configuration naming the key and the directory, with its
// own pool as attached to a relay: the next start would refuse it. The
// same directory under another spelling (this gateway's own lock), a
// directory not there yet and, attached to a relay, one that cannot be
// created pass, named for the restart. Before, the reload passed and the
// restart failed on the lock.
func TestReloadRefusesHeldStateDir(t *testing.T) {
	held := t.TempDir()
	lock, err := catalog.LockStateDir(held) // another process's, as flock sees it
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	stateDir := func(config, dir string) string {
		return strings.Replace(config, `"STATE"`, strconv.Quote(dir), 1)
	}
	check := func(t *testing.T, config string, passing ...string) {
		h := newFileHarness(t, config)
		h.write(t, stateDir(config, held))
		if d, err := h.gw.Reload(); !errors.Is(err, ErrInvalidConfig) ||
			!strings.Contains(err.Error(), "gateway.state_dir: the gateway would not start with it") ||
			!strings.Contains(err.Error(), "state directory in use: "+held) {
			t.Fatalf("reload to a held state_dir: %+v, %v; want an invalid configuration naming the key and %s", d, err, held)
		}
		link := filepath.Join(t.TempDir(), "state")
		if err := os.Symlink(filepath.Join(h.dir, "state"), link); err != nil {
			t.Fatal(err)
		}
		for _, dir := range append([]string{link, filepath.Join(t.TempDir(), "new", "state")}, passing...) {
			h.write(t, stateDir(config, dir))
			d, err := h.gw.Reload()
			if err != nil {
				t.Fatalf("reload to state_dir %s: %v", dir, err)
			}
			if !slices.Equal(d.RestartRequired, []string{"gateway.state_dir"}) {
				t.Errorf("reload to state_dir %s: restart_required %q", dir, d.RestartRequired)
			}
		}
	}
	t.Run("own pool", func(t *testing.T) {
		check(t, quietGateway+twoTenants)
	})
	t.Run("attached to a relay", func(t *testing.T) {
		// As /var/lib/ztgate is to a user: the start goes on without the
		// lock (TestRelayGatewayUnwritableStateDir).
		check(t, quietGateway+twoTenants+fakeRelaySection(t), "/proc/self/ztgate-absent/state")
	})
}
