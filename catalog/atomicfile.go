package catalog

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WriteFileAtomic replaces the file at path with data so that a crash at
// any moment leaves either the old or the new file: it writes a temporary
// file in the same directory (named ".<base>.tmp-*", which readers may
// clean up), syncs it, renames it over the old file and syncs the
// directory. replaced reports whether the rename happened (the new content
// is then the file's, even if the directory sync failed).
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (replaced bool, err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	err = WriteSynced(f, data, perm)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // best effort
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := SyncDir(dir); err != nil {
		return true, fmt.Errorf("write %s: the file is replaced but may not survive a crash: %w", path, err)
	}
	return true, nil
}

// RemoveTempFiles removes the temporary files that interrupted
// WriteFileAtomic calls for path left in its directory, best effort. Names
// in that directory are compared, not matched as a pattern, so that a name
// with pattern characters ([, *, ?, \) cannot make it clean another
// directory or miss its own files.
func RemoveTempFiles(path string) {
	dir, prefix := filepath.Dir(path), "."+filepath.Base(path)+".tmp-"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) && !e.IsDir() {
			_ = os.Remove(filepath.Join(dir, e.Name())) // harmless if it stays
		}
	}
}

// WriteSynced gives f the mode perm, writes data, syncs and closes it.
func WriteSynced(f *os.File, data []byte, perm os.FileMode) error {
	err := f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// SyncDir makes the entries just made in dir (a rename, a link, a new
// file) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
