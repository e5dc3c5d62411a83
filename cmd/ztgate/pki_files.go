package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ztgate/ztgate/catalog"
)

// writeNewPair writes a new key (0600) and its certificate (0644), each
// whole or not at all, and never over an existing file: a key is never
// silently replaced. When the certificate cannot be written, the key just
// written is removed again.
func writeNewPair(crt, key string, crtPEM, keyPEM []byte) error {
	if err := os.MkdirAll(filepath.Dir(key), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(crt), 0o755); err != nil {
		return err
	}
	if err := createFile(key, keyPEM, 0o600); err != nil {
		return err
	}
	if err := createFile(crt, crtPEM, 0o644); err != nil {
		_ = os.Remove(key)
		return err
	}
	return nil
}

// createFile writes data to a new file at path with mode perm: a
// temporary file (0600 from its creation on), synced, is linked to path,
// so that path never holds part of data and an existing file is never
// replaced (the error is then fs.ErrExist). Where the file system has no
// hard links, path is created exclusively and written instead.
func createFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // the link, if made, keeps the file
	if err := catalog.WriteSynced(f, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	switch err := os.Link(tmp, path); {
	case errors.Is(err, fs.ErrExist):
		return &fs.PathError{Op: "create", Path: path, Err: fs.ErrExist}
	case err != nil:
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if err := catalog.WriteSynced(f, data, perm); err != nil {
			_ = os.Remove(path)
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return catalog.SyncDir(dir)
}

// writePair replaces a certificate (0644) and its key (0600): the renewal
// of -force. Each file is replaced atomically, so that a crash never
// leaves half a key, and a key written over an existing one is never
// readable by others, whatever that file's mode was (os.WriteFile keeps
// it). What a renewal in place keeps, from a key others could not read,
// is the group's read access and the group: the systemd units read their
// keys through the ztgate group (getting-started.md).
func writePair(dir, crt, key string, crtPEM, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	mode, gid := os.FileMode(0o600), -1
	if fi, err := os.Stat(key); err == nil && fi.Mode().Perm()&0o007 == 0 { // one others could read was a mistake: 0600
		mode |= fi.Mode().Perm() & 0o040
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			gid = int(st.Gid)
		}
	}
	if _, err := catalog.WriteFileAtomic(key, keyPEM, mode); err != nil {
		return err
	}
	if gid >= 0 {
		if err := os.Chown(key, -1, gid); err != nil && mode&0o040 != 0 {
			return fmt.Errorf("%s: keeping its group for the key's readers: %w", key, err)
		}
	}
	_, err := catalog.WriteFileAtomic(crt, crtPEM, 0o644)
	return err
}

// sameFile reports whether a and b name the same file: the same path, or
// two existing paths of one file (a link, a case-insensitive file system).
func sameFile(a, b string) bool {
	if absA, errA := filepath.Abs(a); errA == nil {
		if absB, errB := filepath.Abs(b); errB == nil && absA == absB {
			return true
		}
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// exists reports whether something is at path, a dangling link included.
func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
