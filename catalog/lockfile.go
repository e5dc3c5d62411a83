package catalog

import "errors"

// LockFileName is the file in a state directory that the process using it
// holds locked (flock), so that no second ztgate shares the directory.
const LockFileName = ".lock"

// ErrStateDirInUse: another process holds the state directory's lock.
var ErrStateDirInUse = errors.New("state directory in use")
