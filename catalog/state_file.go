package catalog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// StateFileName is the name of the VIP state file in the state directory.
const StateFileName = "vip-state.json"

// StateRecovery is the recovery procedure for a corrupt VIP state file; the
// error of OpenPool ends with it.
//
// ztgate never renumbers silently: a state file it cannot trust stops it.
// To recover, stop ztgate and keep a copy of the file for inspection. Then
// either restore a good copy (from a backup) or repair it by hand (the
// error lists every problem), or move it away: ztgate then starts with an
// empty state, honours the pins and gives every other service the VIP its
// name hashes to, so VIPs may change and clients must resolve names again.
const StateRecovery = "to recover: stop ztgate, keep a copy of the file, then restore a good copy or fix the problems listed, " +
	"or move it away to start afresh (pins are kept, other VIPs may change and clients must resolve names again)"

// tempPattern is the name pattern of the temporary files a save writes
// before renaming one over the state file.
const tempPattern = "." + StateFileName + ".tmp-*"

// loadState reads the state file at path, creating its directory if
// needed and removing temporary files a crash left behind. A missing file
// is an empty state. It also returns the bytes read, so that an unchanged
// state is not written again.
func loadState(path string, spaces [families]addrSpace, now time.Time) (*table, []byte, []string, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, stateDirError("create state directory", err)
	}
	RemoveTempFiles(path) // litter from an interrupted save
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return newTable(), nil, nil, nil
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("catalog: read VIP state file: %w", err)
	}
	t, warnings, err := decodeState(data, spaces, now)
	if err != nil {
		detail := strings.ReplaceAll(err.Error(), "\n", "; ")
		return nil, nil, nil, problem(ErrCorruptState, "VIP state file %s is corrupt: %s; %s", path, detail, StateRecovery)
	}
	for i, w := range warnings {
		warnings[i] = fmt.Sprintf("catalog: VIP state file %s: %s", path, w)
	}
	return t, data, warnings, nil
}

// writeState replaces the state file at path with data, atomically (see
// WriteFileAtomic).
func writeState(path string, data []byte) (replaced bool, err error) {
	replaced, err = WriteFileAtomic(path, data, 0o600)
	if err != nil {
		return replaced, fmt.Errorf("catalog: save VIP state: %w", err)
	}
	return replaced, nil
}
