package catalog

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// LockFileName is the file in a state directory that the process using it
// holds locked (flock), so that no second ztgate shares the directory.
const LockFileName = ".lock"

// ErrStateDirInUse: another process holds the state directory's lock.
var ErrStateDirInUse = errors.New("state directory in use")

// LockStateDir creates dir if needed and takes its lock without waiting,
// as OpenPool does with Exclusive, for a process that keeps state in dir
// without a pool there (a gateway attached to a relay keeps its API
// services). Close releases it.
func LockStateDir(dir string) (io.Closer, error) {
	f, err := lockStateDir(dir)
	if err != nil {
		return nil, err
	}
	if f == nil {
		return noLock{}, nil // no flock on this system
	}
	return f, nil
}

// stateDirError is err, a failure to create or open what the state
// directory holds (what: "create state directory", "state directory
// lock"), naming the key and what to do about it.
func stateDirError(what string, err error) error {
	return fmt.Errorf("catalog: %s (state_dir): %w: make it a directory this user can write, or set state_dir to one", what, err)
}

// noLock is the lock of a system without flock.
type noLock struct{}

func (noLock) Close() error { return nil }

// ProbeStateDir reports whether another process holds the lock of next, a
// state directory a reload moves to from cur (state_dir is restart-only),
// as the next start on it would find it: the reload refuses what the start
// would. It takes the lock and releases it at once, creating nothing. The
// error matches ErrStateDirInUse and names next and, where the system
// tells, the holder's process ID. The same directory (next == cur, or
// another spelling of it: os.SameFile) is the one this process holds. A
// directory or lock file that is not there is held by no one, and any
// other failure (no permission to open the lock file) is not a holder
// either: those are nil, for the start to judge.
func ProbeStateDir(cur, next string) error {
	if next == cur {
		return nil
	}
	if a, err := os.Stat(cur); err == nil {
		if b, err := os.Stat(next); err == nil && os.SameFile(a, b) {
			return nil
		}
	}
	return probeStateDir(next)
}
