package conf

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// maxLinks bounds the symbolic links Watch follows from the configuration's
// path. A link into a ConfigMap volume takes three (the file, the volume's
// file, its ..data); eight leave room for a deployment tool's own link and
// end a loop at once.
const maxLinks = 8

// errTooManyLinks: a path resolves through more than maxLinks links, or
// loops.
var errTooManyLinks = fmt.Errorf("more than %d symbolic links", maxLinks)

// linkChain is how a path resolves, one name at a time: the symbolic links
// met on the way, in order, and the name they lead to. Every path in it is
// absolute, with a directory free of links, so that it names a directory
// fsnotify can watch and the names its events carry.
type linkChain struct {
	dir   string   // the path's directory, resolved; "" when it is missing
	links []string // the links met, in order
	file  string   // the file the path leads to, or the first missing name
	err   error    // why resolution stopped short of a file, if it did
}

// resolveChain resolves path as the kernel would, but records each link.
// Links in the path's own directory are resolved without being recorded:
// Watch watches that directory by name.
func resolveChain(path string) linkChain {
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return linkChain{err: err}
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return linkChain{err: err}
	}
	c := linkChain{dir: dir}
	const sep = string(filepath.Separator)
	cur, rest := dir, filepath.Base(path)
	for rest != "" {
		var name string
		name, rest, _ = strings.Cut(rest, sep)
		switch name {
		case "", ".":
			continue
		case "..": // cur has no links: its parent is its lexical parent
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(next)
		if err != nil {
			c.file, c.err = next, err
			return c
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if len(c.links) == maxLinks {
			c.file, c.err = next, errTooManyLinks
			return c
		}
		target, err := os.Readlink(next)
		if err != nil {
			c.file, c.err = next, err
			return c
		}
		c.links = append(c.links, next)
		if filepath.IsAbs(target) {
			cur = sep
		}
		if rest != "" {
			target += sep + rest
		}
		rest = target
	}
	c.file = cur
	return c
}

// dirs returns the directories whose entries decide where the path leads,
// besides the path's own directory: those of the links and of the file.
func (c linkChain) dirs() map[string]bool {
	dirs := make(map[string]bool, len(c.links)+1)
	for _, l := range c.links {
		dirs[filepath.Dir(l)] = true
	}
	if c.file != "" {
		dirs[filepath.Dir(c.file)] = true
	}
	delete(dirs, c.dir)
	return dirs
}

// names returns the links and the file as fsnotify names them: a name in the
// path's directory is under dir, the directory as Watch was given it (which
// may differ from c.dir by links).
func (c linkChain) names(dir string) map[string]bool {
	names := make(map[string]bool, len(c.links)+1)
	add := func(p string) {
		if filepath.Dir(p) == c.dir {
			p = filepath.Join(dir, filepath.Base(p))
		}
		names[p] = true
	}
	for _, l := range c.links {
		add(l)
	}
	if c.file != "" {
		add(c.file)
	}
	return names
}
