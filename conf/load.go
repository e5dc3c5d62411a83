package conf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"syscall"

	"github.com/BurntSushi/toml"
)

// tomlDoc is a parsed TOML file: its generic tree, as toml.Decode makes it,
// and the line of each key path (keyLines), for the messages.
type tomlDoc struct {
	tree  map[string]any
	lines *keyLineMap
	// tlsContent makes the validation look inside the TLS files (Check).
	tlsContent bool
}

// readTOML reads a file and parses it into a generic tree.
func readTOML(path string) (*tomlDoc, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, syscall.EISDIR) {
		// "read DIR: is a directory" says neither what was wanted nor
		// what to do.
		return nil, Errors{fmt.Errorf("conf: %s: %w: name the configuration file itself, not its directory", path, syscall.EISDIR)}
	}
	if err != nil {
		return nil, Errors{fmt.Errorf("conf: %w", err)}
	}
	return parseTOML(path, data)
}

// parseTOML parses TOML text into a generic tree. A syntax error is returned
// as Errors with one element, "file:line:column: message".
func parseTOML(name string, data []byte) (*tomlDoc, error) {
	var tree map[string]any
	if _, err := toml.Decode(string(data), &tree); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, Errors{fmt.Errorf("%s:%d:%d: %s", fileLabel(name), pe.Position.Line, pe.Position.Col, pe.Message)}
		}
		return nil, Errors{fmt.Errorf("%s: %w", fileLabel(name), err)}
	}
	return &tomlDoc{tree: tree, lines: keyLines(string(data))}, nil
}

// decodeFile walks a parsed file into the raw struct pointed to by raw and
// returns the validator for the validation pass; name is the file's path.
func decodeFile(name string, doc *tomlDoc, raw any) *validator {
	el := newErrList(fileLabel(name))
	el.lines = doc.lines
	d := treeDecoder{errs: el, table: "table"}
	d.decode("", doc.tree, reflect.ValueOf(raw).Elem())
	return &validator{errList: el, dir: filepath.Dir(name), tlsContent: doc.tlsContent}
}

// load reads and parses a file with parse and sets its path on success.
func load[T any](path string, parse func(string, *tomlDoc) (*T, error), setPath func(*T)) (*T, error) {
	doc, err := readTOML(path)
	if err != nil {
		return nil, err
	}
	c, err := parse(path, doc)
	if err != nil {
		return nil, err
	}
	setPath(c)
	return c, nil
}

// parse parses TOML text and validates it with fromTree.
func parse[T any](name string, data []byte, fromTree func(string, *tomlDoc) (*T, error)) (*T, error) {
	doc, err := parseTOML(name, data)
	if err != nil {
		return nil, err
	}
	return fromTree(name, doc)
}

// fileLabel is how messages name a configuration file: its base name, or
// "config" when it has no name.
func fileLabel(name string) string {
	if name == "" {
		return "config"
	}
	return filepath.Base(name)
}
