package conf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// resolve makes a path from the configuration absolute: relative paths are
// taken against the directory of the configuration file.
func (v *validator) resolve(p string) string {
	if !filepath.IsAbs(p) {
		p = filepath.Join(v.dir, p)
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return filepath.Clean(p)
}

// file resolves a named file and checks that it can be read; "" stays "".
// The error wraps the os error (fs.ErrNotExist, fs.ErrPermission).
func (v *validator) file(path, p string) string {
	if p == "" {
		return ""
	}
	abs := v.resolve(p)
	if err := readable(abs); err != nil {
		named := ""
		if abs != p {
			named = fmt.Sprintf(" (%s)", abs)
		}
		v.add(path, fmt.Errorf("cannot read file %q%s: %w", p, named, err))
	}
	return abs
}

// readable opens and closes a regular file.
func readable(name string) error {
	f, err := os.Open(name)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return pe.Err
		}
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("is a directory")
	}
	return nil
}

// hostname returns the host name as the default name of a process.
func (v *validator) hostname(path, name string) string {
	if name != "" {
		if err := checkDomain(name); err != nil {
			v.add(path, err)
		}
		return name
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		v.addf(path, "not set and the host name is unknown: %v", err)
	}
	return h
}
