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

// rewatchInterval is how often Watch looks for a directory it lost or could
// not watch yet.
const rewatchInterval = time.Second

// Watch calls onChange after the file at path changes, once per burst of
// changes: debounce after the last change (DefaultDebounce when ≤ 0), and no
// later than ten times that after the first. It watches the file's
// directory, not the file, because editors replace files (write a temporary
// file, rename it over) and Kubernetes ConfigMaps swap symlinks; a change is
// an event naming the file, or any event after which the file resolves to
// another file or its size or modification time differ.
//
// When path is a symbolic link, Watch also watches the directories of the
// links it resolves through (at most eight) and of the file they lead to,
// and follows them when a link is re-pointed: an edit of the target, a file
// renamed over it, a re-pointed link and a ConfigMap's ..data swap are each a
// change. A watched directory that goes away (the directory itself, or one
// the links lead to) is looked for every rewatchInterval until it is back.
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
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("conf: watch %s: %w", path, err)
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("conf: watch %s: %w", path, err)
	}
	defer fw.Close()
	if err := fw.Add(filepath.Dir(abs)); err != nil {
		return fmt.Errorf("conf: watch %s: %w", path, err)
	}
	w := newFileWatch(abs, log)
	w.fw = fw
	w.follow()
	if ready != nil {
		ready()
	}
	return w.run(ctx, newDebouncer(debounce), onChange)
}

// fileWatch tells the events of the watched directories that change one
// file, and keeps the directories its links lead to watched.
type fileWatch struct {
	path, dir string // the file, absolute, and its directory as given
	log       *slog.Logger
	fw        *fsnotify.Watcher // nil in tests of changed

	last  fingerprint
	chain linkChain       // how path resolved at the last event
	names map[string]bool // path, its links and its file, as events name them

	dirGone bool            // dir was removed: its watch went with it
	extra   map[string]bool // directories watched besides dir, for the links
	missing bool            // a directory of the links could not be watched

	tooManyLinks bool // logged once per loop
}

func newFileWatch(path string, log *slog.Logger) *fileWatch {
	w := &fileWatch{path: path, dir: filepath.Dir(path), log: log, last: fingerprintOf(path), extra: map[string]bool{}}
	w.resolve()
	return w
}

// run is Watch's loop: events feed the debouncer, whose timer calls onChange.
func (w *fileWatch) run(ctx context.Context, deb *debouncer, onChange func()) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var rewatch *time.Ticker // while a directory is gone or not watched yet
	defer func() {
		if rewatch != nil {
			rewatch.Stop()
		}
	}()
	for {
		var retry <-chan time.Time
		switch lost := w.dirGone || w.missing; {
		case lost && rewatch == nil:
			rewatch = time.NewTicker(rewatchInterval)
		case !lost && rewatch != nil:
			rewatch.Stop()
			rewatch = nil
		}
		if rewatch != nil {
			retry = rewatch.C
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.fw.Events:
			if !ok {
				return fmt.Errorf("conf: watch %s: event channel closed", w.path)
			}
			w.lose(ev)
			if w.changed(ev) {
				timer.Reset(deb.change(time.Now()))
			}
			w.follow()
		case <-retry:
			if w.dirGone {
				if err := w.fw.Add(w.dir); err != nil {
					continue
				}
				w.log.Info("conf: the configuration's directory is back; watching it again", "dir", w.dir)
				w.dirGone = false
				w.last = fingerprint{} // whatever it holds now is a change
			}
			if w.changed(fsnotify.Event{}) {
				timer.Reset(deb.change(time.Now()))
			}
			w.follow()
		case err, ok := <-w.fw.Errors:
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

// lose notes a watched directory that went away (rm -r, a rename): its
// watch went with it.
func (w *fileWatch) lose(ev fsnotify.Event) {
	if !ev.Has(fsnotify.Remove | fsnotify.Rename) {
		return
	}
	name := filepath.Clean(ev.Name)
	if name == w.dir && !w.dirGone {
		w.log.Warn("conf: the configuration's directory is gone; watching for it to come back", "dir", w.dir)
		w.dirGone = true
	}
	if w.extra[name] {
		// fsnotify may have dropped the watch already; if not, drop it now,
		// before a directory made again under the name can be watched.
		_ = w.fw.Remove(name)
		delete(w.extra, name)
	}
}

// changed reports whether an event of a watched directory changes the file,
// and takes in how the path resolves now. The zero event is a look without
// an event.
func (w *fileWatch) changed(ev fsnotify.Event) bool {
	named := w.names[filepath.Clean(ev.Name)] && !ev.Has(fsnotify.Chmod)
	fp := fingerprintOf(w.path)
	moved := fp != w.last
	w.last = fp
	w.resolve()
	return named || moved
}

// resolve takes in how the path resolves now.
func (w *fileWatch) resolve() {
	w.chain = resolveChain(w.path)
	w.names = w.chain.names(w.dir)
	w.names[w.path] = true
}

// follow watches the directories the path resolves through now, and no
// longer the ones it left. A directory that cannot be watched (it is
// missing) is tried again every rewatchInterval.
func (w *fileWatch) follow() {
	if loop := errors.Is(w.chain.err, errTooManyLinks); loop != w.tooManyLinks {
		w.tooManyLinks = loop
		if loop {
			w.log.Warn("conf: the configuration's path has too many symbolic links (or a loop); watching the first ones only", "path", w.path, "links", w.chain.links)
		}
	}
	want := w.chain.dirs()
	for d := range w.extra {
		if !want[d] {
			_ = w.fw.Remove(d) // an error: the watch is gone already
			delete(w.extra, d)
			w.log.Debug("conf: no longer watching a directory the configuration left", "dir", d)
		}
	}
	w.missing = false
	for d := range want {
		if w.extra[d] {
			continue
		}
		if err := w.fw.Add(d); err != nil {
			w.missing = true
			continue
		}
		w.extra[d] = true
		w.log.Debug("conf: watching a directory the configuration's links lead to", "dir", d)
	}
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
