package conf

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestConfigurationDocumented keeps docs/configuration.md true to the
// schema: under each role's heading, the reference tables name every key of
// that role's raw structs (the only list of known keys) by its path, and no
// key that does not exist.
func TestConfigurationDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	sections := docSections(string(doc))
	for _, tc := range []struct {
		heading string
		raw     any
	}{
		{"Gateway", rawGatewayFile{}},
		{"Relay", rawRelayFile{}},
		{"Agent", rawAgentFile{}},
	} {
		t.Run(tc.heading, func(t *testing.T) {
			text, ok := sections[tc.heading]
			if !ok {
				t.Fatalf("docs/configuration.md has no \"## %s\" section", tc.heading)
			}
			keys := schemaKeys(reflect.TypeOf(tc.raw), "")
			documented := docKeys(text)
			for _, k := range keys {
				if !slices.Contains(documented, k) {
					t.Errorf("key %s is not documented under ## %s", k, tc.heading)
				}
			}
			for _, k := range documented {
				if !slices.Contains(keys, k) {
					t.Errorf("## %s documents %s, which is not a key", tc.heading, k)
				}
			}
		})
	}
}

// schemaKeys lists the dotted key paths of a raw struct: tables and arrays
// of tables are prefixes, everything else is a key.
func schemaKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := prefix + name
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			keys = append(keys, schemaKeys(ft, path+".")...)
			continue
		}
		keys = append(keys, path)
	}
	return keys
}

// docSections splits a Markdown document at its "## " headings.
func docSections(doc string) map[string]string {
	out := map[string]string{}
	var heading string
	var b strings.Builder
	for line := range strings.Lines(doc) {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			if heading != "" {
				out[heading] = b.String()
			}
			heading = strings.TrimSpace(h)
			b.Reset()
			continue
		}
		b.WriteString(line)
	}
	if heading != "" {
		out[heading] = b.String()
	}
	return out
}

// docKeyRow matches a reference table row and captures its key.
var docKeyRow = regexp.MustCompile("(?m)^\\| `([a-z0-9_.]+)` \\|")

// docKeys lists the keys the reference tables of a section name.
func docKeys(section string) []string {
	var keys []string
	for _, m := range docKeyRow.FindAllStringSubmatch(section, -1) {
		keys = append(keys, m[1])
	}
	return keys
}

// nonKeySpans are code spans of the docs that look like dotted keys and
// are not: host names of the examples.
var nonKeySpans = []string{"relay.example.net"}

// docTableRef and docDottedRef match a code span that names a key or table
// the way the docs do: "[section] key", "[[section]] key = value",
// "[section]", or the dotted "section.key".
var (
	docTableRef  = regexp.MustCompile("`\\[\\[?([a-z0-9_.]+)\\]\\]?(?: ([a-z0-9_]+))?(?: = [^`]*)?`")
	docDottedRef = regexp.MustCompile("`([a-z][a-z0-9_]*(?:\\.[a-z][a-z0-9_]*)+)`")
)

// TestDocsNameRealKeys keeps every page that quotes configuration keys
// true to the schema: a key or table named as "[tunnel] listen",
// "[[service.port]]" or "tunnel.relay" exists in one of the roles' raw
// structs. Users copy these into their files, where an unknown key is an
// error.
func TestDocsNameRealKeys(t *testing.T) {
	keys, tables := map[string]bool{}, map[string]bool{}
	for _, raw := range []any{rawGatewayFile{}, rawRelayFile{}, rawAgentFile{}} {
		for _, k := range schemaKeys(reflect.TypeOf(raw), "") {
			keys[k] = true
			for i := range k {
				if k[i] == '.' {
					tables[k[:i]] = true
				}
			}
		}
	}
	pages, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, "../README.md")
	checked := 0
	for _, page := range pages {
		doc, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		text := string(doc)
		line := func(at int) int { return strings.Count(text[:at], "\n") + 1 }
		for _, m := range docTableRef.FindAllStringSubmatchIndex(text, -1) {
			table := text[m[2]:m[3]]
			switch {
			case m[4] >= 0 && !keys[table+"."+text[m[4]:m[5]]]:
				t.Errorf("%s:%d: %s names no key (%s.%s)", page, line(m[0]), text[m[0]:m[1]], table, text[m[4]:m[5]])
			case m[4] < 0 && !tables[table]:
				t.Errorf("%s:%d: %s names no table", page, line(m[0]), text[m[0]:m[1]])
			}
			checked++
		}
		for _, m := range docDottedRef.FindAllStringSubmatchIndex(text, -1) {
			ref := text[m[2]:m[3]]
			first, _, _ := strings.Cut(ref, ".")
			if !tables[first] || slices.Contains(nonKeySpans, ref) {
				continue
			}
			if !keys[ref] && !tables[ref] {
				t.Errorf("%s:%d: `%s` names no key", page, line(m[0]), ref)
			}
			checked++
		}
	}
	if checked < 100 {
		t.Errorf("checked %d key references in the docs; the patterns miss them", checked)
	}
}
