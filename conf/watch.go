package conf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is the quiet time Watch waits for when given none.
const DefaultDebounce = 300 * time.Millisecond

// rewatchInterval is how often Watch looks for a removed directory.
const rewatchInterval = time.Second

// Watch calls onChange after the file at path changes, once per burst of
// changes: debounce after the last change (DefaultDebounce when ≤ 0), and no
// later than ten times that after the first. It watches the file's
// directory, not the file, because editors replace files (write a temporary
// file, rename it over) and Kubernetes ConfigMaps swap symlinks; a change is
// an event naming the file, or any event after which the file resolves to
// another file or its size or modification time differ.
//
// onChange runs on Watch's goroutine, never concurrently with itself. Watch
// returns nil when ctx is done, or an error when the directory cannot be
// watched; its fsnotify watcher is closed before it returns.
func Watch(ctx context.Context, path string, debounce time.Duration, log *slog.Logger, onChange func()) error {
	return watch(ctx, path, debounce, log, onChange, nil)
}

// watch is Watch; ready, when not nil, is called once the directory is
// watched (tests wait for it before they change the file).
func watch(ctx context.Context, path string, debounce time.Duration, log *slog.Logger, onChange, ready func()) error {
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("conf: watch %s: %w", path, err)
	}
	defer fw.Close()
	if err := fw.Add(filepath.Dir(path)); err != nil {
		return fmt.Errorf("conf: watch %s: %w", path, err)
	}
	w := &fileWatch{path: path, base: filepath.Base(path), log: log, last: fingerprintOf(path)}
	if ready != nil {
		ready()
	}
	return w.run(ctx, fw, newDebouncer(debounce), onChange)
}

// fileWatch tells the events of a directory that change one file.
type fileWatch struct {
	path, base string
	log        *slog.Logger
	last       fingerprint
}

// run is Watch's loop: events feed the debouncer, whose timer calls onChange.
func (w *fileWatch) run(ctx context.Context, fw *fsnotify.Watcher, deb *debouncer, onChange func()) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	dir := filepath.Dir(w.path)
	var rewatch *time.Ticker // while the directory is gone
	defer func() {
		if rewatch != nil {
			rewatch.Stop()
		}
	}()
	for {
		var retry <-chan time.Time
		if rewatch != nil {
			retry = rewatch.C
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return fmt.Errorf("conf: watch %s: event channel closed", w.path)
			}
			if filepath.Clean(ev.Name) == dir && ev.Has(fsnotify.Remove|fsnotify.Rename) && rewatch == nil {
				// The directory itself went (rm -r, a rename): its watch
				// went with it. Watch for it to come back.
				w.log.Warn("conf: the configuration's directory is gone; watching for it to come back", "dir", dir)
				rewatch = time.NewTicker(rewatchInterval)
			}
			if w.changed(ev) {
				timer.Reset(deb.change(time.Now()))
			}
		case <-retry:
			if err := fw.Add(dir); err == nil {
				w.log.Info("conf: the configuration's directory is back; watching it again", "dir", dir)
				rewatch.Stop()
				rewatch = nil
				w.last = fingerprint{} // whatever it holds now is a change
				if w.changed(fsnotify.Event{Name: w.path}) {
					timer.Reset(deb.change(time.Now()))
				}
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return fmt.Errorf("conf: watch %s: error channel closed", w.path)
			}
			w.log.Warn("conf: watching the configuration", "path", w.path, "err", err)
			if errors.Is(err, fsnotify.ErrEventOverflow) { // events were lost: assume a change
				timer.Reset(deb.change(time.Now()))
			}
		case <-timer.C:
			if deb.due(time.Now()) {
				w.log.Debug("conf: configuration changed", "path", w.path)
				onChange()
			}
		}
	}
}

// changed reports whether an event of the directory changes the file.
func (w *fileWatch) changed(ev fsnotify.Event) bool {
	fp := fingerprintOf(w.path)
	moved := fp != w.last
	w.last = fp
	named := filepath.Base(ev.Name) == w.base && !ev.Has(fsnotify.Chmod)
	return named || moved
}

// fingerprint identifies the file a path leads to and its version; the zero
// value stands for a missing file.
type fingerprint struct {
	real    string
	dev     uint64
	ino     uint64
	size    int64
	modTime time.Time
}

func fingerprintOf(path string) fingerprint {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fingerprint{}
	}
	fi, err := os.Stat(real)
	if err != nil {
		return fingerprint{}
	}
	fp := fingerprint{real: real, size: fi.Size(), modTime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		fp.dev, fp.ino = uint64(st.Dev), st.Ino
	}
	return fp
}
