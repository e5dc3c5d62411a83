//go:build unix

package catalog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"syscall"
)

// lockStateDir creates dir if needed and takes its lock without waiting;
// closing the returned file releases it (so does the process's exit).
func lockStateDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, stateDirError("create state directory", err)
	}
	path := filepath.Join(dir, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, stateDirError("state directory lock", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("catalog: %w: %s is locked by another ztgate process (a second gateway or relay on the same state_dir?); give each its own state_dir",
				ErrStateDirInUse, dir)
		}
		return nil, fmt.Errorf("catalog: state directory lock %s: %w", path, err)
	}
	return f, nil
}

// probeStateDir is ProbeStateDir: it opens dir's lock file read-only
// (flock does not need write access), without creating it, and without
// waiting (O_NONBLOCK): a FIFO in its place would make a read-only open
// wait for a writer, and the reload with it.
func probeStateDir(dir string) error {
	path := filepath.Join(dir, LockFileName)
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil // none there, or not ours to open: the start judges
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		return nil // taken (and released by the Close), or no flock there
	}
	holder := "another ztgate process"
	if pid := lockHolder(f); pid > 0 {
		holder = fmt.Sprintf("process %d", pid)
	}
	return fmt.Errorf("catalog: %w: %s is locked by %s (a second gateway or relay on the same state_dir?); give each its own state_dir",
		ErrStateDirInUse, dir, holder)
}
