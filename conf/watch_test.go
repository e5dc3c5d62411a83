package conf

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
)

func TestDebouncer(t *testing.T) {
	const delay = 100 * time.Millisecond
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tests := []struct {
		name    string
		changes []int // ms
		polls   []int // ms, in order, after the changes before them
		fires   []bool
	}{
		{"nothing pending", nil, []int{0, 1000}, []bool{false, false}},
		{"one change", []int{0}, []int{50, 99, 100, 101}, []bool{false, false, true, false}},
		{"burst fires once after the last change", []int{0, 30, 60, 90}, []int{100, 189, 190, 300}, []bool{false, false, true, false}},
		{"endless changes fire at max wait", []int{0, 90, 180, 270, 360, 450, 540, 630, 720, 810, 900, 990}, []int{999, 1000}, []bool{false, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDebouncer(delay)
			for _, c := range tc.changes {
				wait := d.change(at(c))
				if wait <= 0 || wait > delay {
					t.Fatalf("change at %dms: wait %s, want 0 < wait ≤ %s", c, wait, delay)
				}
			}
			for i, p := range tc.polls {
				if got := d.due(at(p)); got != tc.fires[i] {
					t.Errorf("due at %dms = %t, want %t", p, got, tc.fires[i])
				}
			}
		})
	}
	t.Run("wait shrinks toward max wait", func(t *testing.T) {
		d := newDebouncer(delay)
		d.change(at(0))
		if got := d.change(at(950)); got != 50*time.Millisecond {
			t.Errorf("wait = %s, want 50ms (max wait 1s from the first change)", got)
		}
	})
}

func TestFileWatchChanged(t *testing.T) {
	dir := writeFiles(t, map[string]string{"gw.toml": "a", "other": "x", "v2/gw.toml": "bb"})
	path := filepath.Join(dir, "gw.toml")
	w := newFileWatch(path, slog.New(slog.DiscardHandler))
	ev := func(name string, op fsnotify.Op) fsnotify.Event {
		return fsnotify.Event{Name: filepath.Join(dir, name), Op: op}
	}
	steps := []struct {
		name   string
		before func()
		ev     fsnotify.Event
		want   bool
	}{
		{"other file", nil, ev("other", fsnotify.Write), false},
		{"chmod of the file", nil, ev("gw.toml", fsnotify.Chmod), false},
		{"write of the file", nil, ev("gw.toml", fsnotify.Write), true},
		{"rename over the file", nil, ev("gw.toml", fsnotify.Create), true},
		{"file becomes a symlink elsewhere", func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(dir, "v2/gw.toml"), path); err != nil {
				t.Fatal(err)
			}
		}, ev("..data", fsnotify.Create), true},
		{"nothing moved since", nil, ev("..data", fsnotify.Create), false},
	}
	for _, s := range steps { // in order: each step depends on the last
		if s.before != nil {
			s.before()
		}
		if got := w.changed(s.ev); got != s.want {
			t.Errorf("%s: changed = %t, want %t", s.name, got, s.want)
		}
	}
}

// startWatch runs watch on path until the test ends and returns the channel
// its onChange calls are sent to.
func startWatch(t *testing.T, path string) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan struct{}, 100)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- watch(ctx, path, 20*time.Millisecond, slog.New(slog.DiscardHandler), func() { calls <- struct{}{} }, func() { close(ready) })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return after cancel")
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Watch: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Watch not ready")
	}
	return calls
}

func waitCall(t *testing.T, calls <-chan struct{}) {
	t.Helper()
	select {
	case <-calls:
	case <-time.After(5 * time.Second):
		t.Fatal("onChange not called within 5s")
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestWatch(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(t *testing.T, dir string) string // returns the watched path
		change func(t *testing.T, dir, path string)
	}{
		{"write in place", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "gw.toml")
			write(t, p, "v1")
			return p
		}, func(t *testing.T, dir, path string) {
			write(t, path, "v2")
		}},
		{"write a temporary file and rename it over", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "gw.toml")
			write(t, p, "v1")
			return p
		}, func(t *testing.T, dir, path string) {
			tmp := filepath.Join(dir, ".gw.toml.swp")
			write(t, tmp, "v2")
			must(t, os.Rename(tmp, path))
		}},
		{"ConfigMap symlink swap", func(t *testing.T, dir string) string {
			must(t, os.Mkdir(filepath.Join(dir, "..v1"), 0o755))
			write(t, filepath.Join(dir, "..v1", "gw.toml"), "v1")
			must(t, os.Symlink("..v1", filepath.Join(dir, "..data")))
			must(t, os.Symlink("..data/gw.toml", filepath.Join(dir, "gw.toml")))
			return filepath.Join(dir, "gw.toml")
		}, func(t *testing.T, dir, path string) {
			must(t, os.Mkdir(filepath.Join(dir, "..v2"), 0o755))
			write(t, filepath.Join(dir, "..v2", "gw.toml"), "v2")
			must(t, os.Symlink("..v2", filepath.Join(dir, "..data_tmp")))
			must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tc.setup(t, dir)
			calls := startWatch(t, path)
			tc.change(t, dir, path)
			waitCall(t, calls)
		})
	}
}

func TestWatchMissingDirectory(t *testing.T) {
	err := Watch(context.Background(), filepath.Join(t.TempDir(), "nope", "gw.toml"), 0, slog.New(slog.DiscardHandler), func() {})
	if err == nil {
		t.Fatal("Watch of a missing directory succeeded")
	}
}

// TestWatchDirectoryReplaced: the configuration's directory removed and
// made again (rm -r, a deployment tool's swap) is watched again: the file
// in it is reloaded, and its later edits too.
func TestWatchDirectoryReplaced(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc")
	must(t, os.Mkdir(dir, 0o755))
	path := filepath.Join(dir, "gw.toml")
	write(t, path, "v1")
	calls := startWatch(t, path)
	must(t, os.RemoveAll(dir))
	waitCall(t, calls) // the file went
	must(t, os.Mkdir(dir, 0o755))
	write(t, path, "v2, in the new directory")
	waitCall(t, calls)
	time.Sleep(100 * time.Millisecond) // the first write's burst is over
	for len(calls) > 0 {
		<-calls
	}
	write(t, path, "v3, edited there")
	waitCall(t, calls)
}
