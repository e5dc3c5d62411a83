package conf

import (
	"strconv"
	"strings"
)

// keyLineMap holds the line of each key path of a TOML text, as errors
// name them (service[2].health.interval, tenant[0].sources[1]): a key's
// line is the line of its key, a table's its header, an array element's the
// line where the element starts.
type keyLineMap struct {
	at map[string]int
	// complete: the scanner followed the whole text, so a path without a
	// line is not in the file.
	complete bool
}

// keyLines maps the key paths of a TOML text to their lines. The text must
// already have parsed (toml.Decode): keyLines does not check the syntax, and
// on anything it does not follow it stops and keeps what it found, so that
// a message merely goes without its line.
func keyLines(text string) *keyLineMap {
	s := &lineScanner{text: text, line: 1, lines: make(map[string]int), arrays: make(map[string]int)}
	s.document()
	return &keyLineMap{at: s.lines, complete: !s.failed}
}

// lineOf returns the line an error about path is told: the line of the key,
// or, for a key absent from the file (a default, a missing required key),
// the line of the nearest table above it that the file has (an element of
// an array of tables counts: its header). An array element is never taken
// for its array, whose line is its first element's. When the scanner did
// not follow the whole text, an absent path may only be one it did not
// reach: then only the path's own line is told. 0 is no line.
func (m *keyLineMap) lineOf(path string) int {
	if m == nil {
		return 0
	}
	if n := m.at[path]; n > 0 || !m.complete {
		return n
	}
	for p := path; p != "" && !strings.HasSuffix(p, "]"); {
		p = parentPath(p)
		if n := m.at[p]; n > 0 {
			return n
		}
	}
	return 0
}

// lineScanner walks a TOML text for keyLines.
type lineScanner struct {
	text   string
	pos    int
	line   int
	lines  map[string]int
	arrays map[string]int // arrays of tables (path with indexes) → elements so far
	table  string         // the path of the current table
	failed bool
}

func (s *lineScanner) peek(off int) byte {
	if s.pos+off < len(s.text) {
		return s.text[s.pos+off]
	}
	return 0
}

func (s *lineScanner) advance() {
	if s.pos < len(s.text) {
		if s.text[s.pos] == '\n' {
			s.line++
		}
		s.pos++
	}
}

func (s *lineScanner) fail() { s.failed = true; s.pos = len(s.text) }

// record notes the line of path unless an earlier line defines it.
func (s *lineScanner) record(path string, line int) {
	if _, ok := s.lines[path]; !ok && path != "" {
		s.lines[path] = line
	}
}

// space skips blanks; with newlines, also line breaks and comments.
func (s *lineScanner) space(newlines bool) {
	for s.pos < len(s.text) {
		switch c := s.peek(0); {
		case c == ' ' || c == '\t' || c == '\r':
			s.advance()
		case c == '#' && newlines:
			for s.pos < len(s.text) && s.peek(0) != '\n' {
				s.advance()
			}
		case c == '\n' && newlines:
			s.advance()
		default:
			return
		}
	}
}

func (s *lineScanner) document() {
	for !s.failed {
		s.space(true)
		if s.pos >= len(s.text) {
			return
		}
		line := s.line
		if s.peek(0) == '[' {
			array := s.peek(1) == '['
			s.advance()
			if array {
				s.advance()
			}
			keys := s.keys()
			s.space(false)
			closing := 1
			if array {
				closing = 2
			}
			for range closing {
				if s.peek(0) != ']' {
					s.fail()
					return
				}
				s.advance()
			}
			if len(keys) == 0 {
				s.fail()
				return
			}
			parent := s.resolve("", keys[:len(keys)-1])
			s.table = join(parent, quoteKey(keys[len(keys)-1]))
			if array {
				n := s.arrays[s.table]
				s.arrays[s.table] = n + 1
				s.record(s.table, line)
				s.table = index(s.table, n)
			}
			s.record(s.table, line)
			continue
		}
		s.keyValue(s.table)
	}
}

// resolve appends keys to base, each array of tables standing for its last
// element, as in a table header.
func (s *lineScanner) resolve(base string, keys []string) string {
	p := base
	for _, k := range keys {
		p = join(p, quoteKey(k))
		if n, ok := s.arrays[p]; ok && n > 0 {
			p = index(p, n-1)
		}
	}
	return p
}

// keyValue reads key = value in the table at base.
func (s *lineScanner) keyValue(base string) {
	line := s.line
	keys := s.keys()
	s.space(false)
	if len(keys) == 0 || s.peek(0) != '=' {
		s.fail()
		return
	}
	s.advance()
	p := base
	for _, k := range keys {
		p = join(p, quoteKey(k))
		s.record(p, line)
	}
	s.space(false)
	s.value(p)
}

// keys reads a dotted key.
func (s *lineScanner) keys() []string {
	var keys []string
	for {
		s.space(false)
		var k string
		switch c := s.peek(0); {
		case c == '"':
			start := s.pos
			s.basicString()
			raw := s.text[start:s.pos]
			uq, err := strconv.Unquote(raw)
			if err != nil {
				uq = strings.Trim(raw, `"`)
			}
			k = uq
		case c == '\'':
			start := s.pos
			s.literalString()
			k = strings.Trim(s.text[start:s.pos], "'")
		default:
			start := s.pos
			for c := s.peek(0); c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'; c = s.peek(0) {
				s.advance()
			}
			if s.pos == start {
				return keys
			}
			k = s.text[start:s.pos]
		}
		keys = append(keys, k)
		s.space(false)
		if s.peek(0) != '.' {
			return keys
		}
		s.advance()
	}
}

// value skips the value of path, noting the lines of its elements.
func (s *lineScanner) value(path string) {
	switch c := s.peek(0); c {
	case '"':
		s.basicString()
	case '\'':
		s.literalString()
	case '[':
		s.advance()
		for i := 0; !s.failed; i++ {
			s.space(true)
			if s.peek(0) == ']' {
				s.advance()
				return
			}
			s.record(index(path, i), s.line)
			s.value(index(path, i))
			s.space(true)
			switch s.peek(0) {
			case ',':
				s.advance()
			case ']':
			default:
				s.fail()
			}
		}
	case '{':
		s.advance()
		for !s.failed { // TOML 1.1 lets an inline table span lines
			s.space(true)
			if s.peek(0) == '}' {
				s.advance()
				return
			}
			s.keyValue(path)
			s.space(true)
			if s.peek(0) == ',' {
				s.advance()
			}
		}
	default: // numbers, booleans, dates: up to a separator
		start := s.pos
		for c := s.peek(0); s.pos < len(s.text) && c != ',' && c != ']' && c != '}' && c != '\n' && c != '#'; c = s.peek(0) {
			s.advance()
		}
		if s.pos == start {
			s.fail()
		}
	}
}

// basicString skips a "string" or a """multi-line string""".
func (s *lineScanner) basicString() {
	multi := strings.HasPrefix(s.text[s.pos:], `"""`)
	if multi {
		s.pos += 3
	} else {
		s.advance()
	}
	for s.pos < len(s.text) {
		switch s.peek(0) {
		case '\\':
			s.advance()
		case '"':
			if !multi {
				s.advance()
				return
			}
			if strings.HasPrefix(s.text[s.pos:], `"""`) {
				// up to two more quotes may belong to the string
				for s.peek(3) == '"' {
					s.advance()
				}
				s.pos += 3
				return
			}
		case '\n':
			if !multi {
				s.fail()
				return
			}
		}
		s.advance()
	}
	s.fail()
}

// literalString skips a 'literal string', on one line or, between three
// single quotes, on several.
func (s *lineScanner) literalString() {
	if strings.HasPrefix(s.text[s.pos:], "'''") {
		s.pos += 3
		end := strings.Index(s.text[s.pos:], "'''")
		if end < 0 {
			s.fail()
			return
		}
		for range end {
			s.advance()
		}
		for s.peek(3) == '\'' {
			s.advance()
		}
		s.pos += 3
		return
	}
	s.advance()
	for s.pos < len(s.text) && s.peek(0) != '\'' && s.peek(0) != '\n' {
		s.advance()
	}
	if s.peek(0) != '\'' {
		s.fail()
		return
	}
	s.advance()
}
