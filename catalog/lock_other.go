//go:build !unix

package catalog

import (
	"fmt"
	"os"
)

// lockStateDir creates dir if needed; without flock there is no lock.
func lockStateDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("catalog: create state directory (state_dir): %w: make it a directory this user can write, or set state_dir to one", err)
	}
	return nil, nil
}

// probeStateDir: without flock there is no lock to find held.
func probeStateDir(string) error { return nil }
