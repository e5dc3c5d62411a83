//go:build !unix

package catalog

import (
	"os"
)

// lockStateDir creates dir if needed; without flock there is no lock.
func lockStateDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, stateDirError("create state directory", err)
	}
	return nil, nil
}

// probeStateDir: without flock there is no lock to find held.
func probeStateDir(string) error { return nil }
