package conf

import (
	"os"
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
