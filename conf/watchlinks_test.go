package conf

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestResolveChain(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	must(t, err)
	p := func(name string) string { return filepath.Join(root, name) }
	for _, d := range []string{"etc", "srv", "cm", "cm/..v1"} {
		must(t, os.Mkdir(p(d), 0o755))
	}
	write(t, p("etc/plain.toml"), "x")
	write(t, p("srv/gw.toml"), "x")
	write(t, p("cm/..v1/gw.toml"), "x")
	must(t, os.Symlink("../srv/gw.toml", p("etc/rel.toml")))
	must(t, os.Symlink(p("srv/gw.toml"), p("etc/abs.toml")))
	must(t, os.Symlink("..v1", p("cm/..data")))
	must(t, os.Symlink("..data/gw.toml", p("cm/gw.toml")))
	must(t, os.Symlink(p("cm/gw.toml"), p("etc/cm.toml")))
	must(t, os.Symlink(p("srv/none.toml"), p("etc/dangling.toml")))
	must(t, os.Symlink("loop-b", p("etc/loop-a")))
	must(t, os.Symlink("loop-a", p("etc/loop-b")))

	tests := []struct {
		name      string
		path      string
		wantLinks []string
		wantFile  string
		wantErr   error
		wantDirs  []string
	}{
		{"a file", "etc/plain.toml", nil, "etc/plain.toml", nil, nil},
		{"a relative link", "etc/rel.toml", []string{"etc/rel.toml"}, "srv/gw.toml", nil, []string{"srv"}},
		{"an absolute link", "etc/abs.toml", []string{"etc/abs.toml"}, "srv/gw.toml", nil, []string{"srv"}},
		{"a link into a ConfigMap volume", "etc/cm.toml",
			[]string{"etc/cm.toml", "cm/gw.toml", "cm/..data"}, "cm/..v1/gw.toml", nil, []string{"cm", "cm/..v1"}},
		{"a dangling link", "etc/dangling.toml", []string{"etc/dangling.toml"}, "srv/none.toml", fs.ErrNotExist, []string{"srv"}},
		{"a missing file", "etc/none.toml", nil, "etc/none.toml", fs.ErrNotExist, nil},
		{"a loop", "etc/loop-a", nil, "", errTooManyLinks, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := resolveChain(p(tc.path))
			if !errors.Is(c.err, tc.wantErr) || (tc.wantErr == nil) != (c.err == nil) {
				t.Fatalf("err = %v, want %v", c.err, tc.wantErr)
			}
			if c.dir != p("etc") {
				t.Errorf("dir = %s, want %s", c.dir, p("etc"))
			}
			if errors.Is(tc.wantErr, errTooManyLinks) {
				if len(c.links) != maxLinks {
					t.Errorf("followed %d links of a loop, want %d", len(c.links), maxLinks)
				}
				return
			}
			var links []string
			for _, l := range tc.wantLinks {
				links = append(links, p(l))
			}
			if !slices.Equal(c.links, links) {
				t.Errorf("links = %q, want %q", c.links, links)
			}
			if c.file != p(tc.wantFile) {
				t.Errorf("file = %s, want %s", c.file, p(tc.wantFile))
			}
			var dirs []string
			for d := range c.dirs() {
				dirs = append(dirs, d)
			}
			slices.Sort(dirs)
			var want []string
			for _, d := range tc.wantDirs {
				want = append(want, p(d))
			}
			if !slices.Equal(dirs, want) {
				t.Errorf("dirs = %q, want %q", dirs, want)
			}
		})
	}
}

// wantCalls waits for n calls of onChange, then for a quiet time well past
// the test debounce's longest wait, and fails on any further call.
func wantCalls(t *testing.T, calls <-chan struct{}, n int) {
	t.Helper()
	for range n {
		waitCall(t, calls)
	}
	time.Sleep(300 * time.Millisecond) // the test debounce's max wait is 200ms
	if extra := len(calls); extra > 0 {
		t.Fatalf("onChange called %d times, want %d", n+extra, n)
	}
}

// swapData does what the kubelet does to update a ConfigMap volume: write
// the files into a new timestamped directory, point ..data at it with a
// rename, remove the old directory.
func swapData(t *testing.T, vol, from, to, content string) {
	t.Helper()
	must(t, os.Mkdir(filepath.Join(vol, to), 0o755))
	write(t, filepath.Join(vol, to, "gw.toml"), content)
	must(t, os.Symlink(to, filepath.Join(vol, "..data_tmp")))
	must(t, os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")))
	must(t, os.RemoveAll(filepath.Join(vol, from)))
}

// TestWatchSymlink: a configuration file that is a link into another
// directory is reloaded once for each edit of its target, each file renamed
// over the target, each re-pointing of a link on the way (a ConfigMap's
// ..data swap too), and watched where a re-pointed link leads.
func TestWatchSymlink(t *testing.T) {
	type step struct {
		name   string
		change func(t *testing.T, root string)
		calls  int
	}
	linkTo := func(target string) func(t *testing.T, root string) {
		return func(t *testing.T, root string) {
			for _, d := range []string{"etc", "srv"} {
				must(t, os.Mkdir(filepath.Join(root, d), 0o755))
			}
			write(t, filepath.Join(root, "srv", "gw.toml"), "v1")
			if !filepath.IsAbs(target) {
				target = filepath.Join(root, target)
			}
			must(t, os.Symlink(target, filepath.Join(root, "etc", "gw.toml")))
		}
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, root string) // etc/gw.toml is watched
		steps []step
	}{
		{"edit the target in place", linkTo("srv/gw.toml"), []step{
			{"edit", func(t *testing.T, root string) { write(t, filepath.Join(root, "srv", "gw.toml"), "v2") }, 1},
			{"edit again", func(t *testing.T, root string) { write(t, filepath.Join(root, "srv", "gw.toml"), "v3") }, 1},
			{"another file there", func(t *testing.T, root string) { write(t, filepath.Join(root, "srv", "other"), "x") }, 0},
		}},
		{"relative link, target replaced", func(t *testing.T, root string) {
			linkTo("srv/gw.toml")(t, root)
			must(t, os.Remove(filepath.Join(root, "etc", "gw.toml")))
			must(t, os.Symlink("../srv/gw.toml", filepath.Join(root, "etc", "gw.toml")))
		}, []step{
			{"rename a new file over the target", func(t *testing.T, root string) {
				write(t, filepath.Join(root, "srv", ".gw.toml.swp"), "v2")
				must(t, os.Rename(filepath.Join(root, "srv", ".gw.toml.swp"), filepath.Join(root, "srv", "gw.toml")))
			}, 1},
			{"edit the new file", func(t *testing.T, root string) { write(t, filepath.Join(root, "srv", "gw.toml"), "v3") }, 1},
		}},
		{"re-point the link to another directory", linkTo("srv/gw.toml"), []step{
			{"re-point", func(t *testing.T, root string) {
				must(t, os.Mkdir(filepath.Join(root, "srv2"), 0o755))
				write(t, filepath.Join(root, "srv2", "gw.toml"), "v2")
				must(t, os.Symlink(filepath.Join(root, "srv2", "gw.toml"), filepath.Join(root, "etc", ".gw.toml.tmp")))
				must(t, os.Rename(filepath.Join(root, "etc", ".gw.toml.tmp"), filepath.Join(root, "etc", "gw.toml")))
			}, 1},
			{"edit the new target", func(t *testing.T, root string) { write(t, filepath.Join(root, "srv2", "gw.toml"), "v3") }, 1},
			{"edit the old target", func(t *testing.T, root string) { write(t, filepath.Join(root, "srv", "gw.toml"), "old") }, 0},
		}},
		{"ConfigMap volume in another directory", func(t *testing.T, root string) {
			vol := filepath.Join(root, "cm")
			must(t, os.Mkdir(filepath.Join(root, "etc"), 0o755))
			must(t, os.MkdirAll(filepath.Join(vol, "..2026_01_01"), 0o755))
			write(t, filepath.Join(vol, "..2026_01_01", "gw.toml"), "v1")
			must(t, os.Symlink("..2026_01_01", filepath.Join(vol, "..data")))
			must(t, os.Symlink("..data/gw.toml", filepath.Join(vol, "gw.toml")))
			must(t, os.Symlink(filepath.Join(vol, "gw.toml"), filepath.Join(root, "etc", "gw.toml")))
		}, []step{
			{"swap ..data", func(t *testing.T, root string) {
				swapData(t, filepath.Join(root, "cm"), "..2026_01_01", "..2026_01_02", "v2")
			}, 1},
			{"edit the new data in place", func(t *testing.T, root string) {
				write(t, filepath.Join(root, "cm", "..2026_01_02", "gw.toml"), "v3")
			}, 1},
			{"swap ..data again", func(t *testing.T, root string) {
				swapData(t, filepath.Join(root, "cm"), "..2026_01_02", "..2026_01_03", "v4")
			}, 1},
		}},
		{"the target's directory removed and made again", linkTo("srv/gw.toml"), []step{
			{"remove it", func(t *testing.T, root string) { must(t, os.RemoveAll(filepath.Join(root, "srv"))) }, 1},
			{"make it again", func(t *testing.T, root string) {
				must(t, os.Mkdir(filepath.Join(root, "srv"), 0o755))
				write(t, filepath.Join(root, "srv", "gw.toml"), "v2")
			}, 1},
			{"edit there", func(t *testing.T, root string) { write(t, filepath.Join(root, "srv", "gw.toml"), "v3") }, 1},
		}},
		{"a loop of links replaced by a file", func(t *testing.T, root string) {
			must(t, os.Mkdir(filepath.Join(root, "etc"), 0o755))
			must(t, os.Symlink("loop", filepath.Join(root, "etc", "gw.toml")))
			must(t, os.Symlink("gw.toml", filepath.Join(root, "etc", "loop")))
		}, []step{
			{"replace it", func(t *testing.T, root string) {
				write(t, filepath.Join(root, "etc", ".gw.toml.swp"), "v1")
				must(t, os.Rename(filepath.Join(root, "etc", ".gw.toml.swp"), filepath.Join(root, "etc", "gw.toml")))
			}, 1},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each case waits out quiet times
			root := t.TempDir()
			tc.setup(t, root)
			calls := startWatch(t, filepath.Join(root, "etc", "gw.toml"))
			for _, s := range tc.steps { // in order: each step depends on the last
				s.change(t, root)
				t.Run(s.name, func(t *testing.T) { wantCalls(t, calls, s.calls) })
			}
		})
	}
}
