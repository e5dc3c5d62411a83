package conf

import (
	"fmt"
	"strings"
)

// Errors is what every Load, Parse and Check function returns on failure:
// every problem found, in file order where it matters. Each element's text is
// self-contained (it names the file and the key path).
type Errors []error

// Error returns the elements' texts, one a line.
func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, err := range e {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the elements, so that errors.Is and errors.As look at each.
func (e Errors) Unwrap() []error { return e }

// fieldError is one problem at a key path of a file.
type fieldError struct {
	file string // base name of the file; empty for JSON from the API
	line int    // line of the key in the file; 0 when not told
	path string // key path such as service[2].health.interval; may be empty
	err  error
}

func (e *fieldError) Error() string {
	var b strings.Builder
	if e.file != "" {
		b.WriteString(e.file)
		if e.line > 0 {
			fmt.Fprintf(&b, ":%d", e.line)
		}
		b.WriteString(": ")
	}
	if e.path != "" {
		b.WriteString(e.path)
		b.WriteString(": ")
	}
	b.WriteString(e.err.Error())
	return b.String()
}

func (e *fieldError) Unwrap() error { return e.err }

// errList collects the errors of one parse. Once a path has a decoding error
// (unknown key, wrong type), later errors about that path or a path below it
// are dropped: they would only restate the first one. Every error is told
// the line of its path here (lineOf), decoding and validation errors alike.
type errList struct {
	file  string
	lines *keyLineMap // the lines of the file's key paths; nil for JSON
	errs  Errors
	bad   map[string]bool
}

func newErrList(file string) *errList {
	return &errList{file: file, bad: make(map[string]bool)}
}

// decodeErr records a decoding error at path and marks the path bad. The
// key is in the file (it is unknown, or its value has the wrong type): the
// error tells its line, for the operator to find the typo.
func (l *errList) decodeErr(path, format string, args ...any) {
	l.bad[path] = true
	l.record(path, fmt.Errorf(format, args...))
}

// addf records a semantic error at path unless the path is already bad.
func (l *errList) addf(path, format string, args ...any) {
	l.add(path, fmt.Errorf(format, args...))
}

// add records err at path unless the path is already bad.
func (l *errList) add(path string, err error) {
	if l.isBad(path) {
		return
	}
	l.record(path, err)
}

// record appends err at path, with the line of path in the file.
func (l *errList) record(path string, err error) {
	l.errs = append(l.errs, &fieldError{file: l.file, line: l.lines.lineOf(path), path: path, err: err})
}

// isBad reports whether path or one of its ancestors had a decoding error.
func (l *errList) isBad(path string) bool {
	for p := path; p != ""; p = parentPath(p) {
		if l.bad[p] {
			return true
		}
	}
	return false
}

// err returns the collected errors, or nil when there are none.
func (l *errList) err() error {
	if len(l.errs) == 0 {
		return nil
	}
	return l.errs
}

// parentPath strips the last element (".key" or "[i]") from a key path.
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// join appends key to a key path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// index appends an array index to a key path.
func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }
