package conf

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestKeyLines checks the line keyLines finds for each kind of key: tables
// and arrays of tables (nested ones count per element of their parent),
// dotted and quoted keys, inline tables, array elements, and values whose
// strings hold what looks like TOML.
func TestKeyLines(t *testing.T) {
	text := `# a comment with [brackets] and key = value
[gateway]
name = "gw1"   # trailing comment
"odd key" = 1
a.'b c'.d = true

[[service]]
name = "web"
note = """
[not.a.table]
x = "y" \"""
"""
lit = '''
[[nor.this]]
'''
backends = [
  "192.0.2.1",  # one
  # a comment between elements
  "192.0.2.2",
]
  [[service.port]]
  port = 80
  [[service.port]]
  port = 443
  [service.health]
  interval = "5s"

[[service]]
name = "db"
health = { type = "tcp", port = 5432 }
port = [{ protocol = "tcp", port = 5432 }, { protocol = "udp",
  port = 53 }]
[ tun ]
mtu = 1420
`
	want := map[string]int{
		"gateway":                    2,
		"gateway.name":               3,
		`gateway."odd key"`:          4,
		"gateway.a":                  5,
		`gateway.a."b c".d`:          5,
		"service":                    7,
		"service[0]":                 7,
		"service[0].name":            8,
		"service[0].note":            9,
		"service[0].lit":             13,
		"service[0].backends":        16,
		"service[0].backends[0]":     17,
		"service[0].backends[1]":     19,
		"service[0].port[0]":         21,
		"service[0].port[0].port":    22,
		"service[0].port[1].port":    24,
		"service[0].health":          25,
		"service[0].health.interval": 26,
		"service[1]":                 28,
		"service[1].name":            29,
		"service[1].health.port":     30,
		"service[1].port[0].port":    31,
		"service[1].port[1]":         31,
		"service[1].port[1].port":    32,
		"tun":                        33,
		"tun.mtu":                    34,
	}
	got := keyLines(text)
	if !got.complete {
		t.Error("the scanner did not follow the whole text")
	}
	for path, line := range want {
		if got.at[path] != line {
			t.Errorf("line of %s = %d, want %d", path, got.at[path], line)
		}
	}
	for _, path := range []string{"not", "not.a.table", "nor", "x"} {
		if _, ok := got.at[path]; ok {
			t.Errorf("%s, inside a string, has a line", path)
		}
	}
}

// TestKeyLinesEveryKey checks that every key path of the example
// configurations has a line, as errors about any of them would name.
func TestKeyLinesEveryKey(t *testing.T) {
	files, err := filepath.Glob("../examples/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := parseTOML(f, data)
		if err != nil {
			t.Fatal(err)
		}
		var walk func(path string, v any)
		walk = func(path string, v any) {
			if path != "" && doc.lines.at[path] == 0 {
				t.Errorf("%s: %s has no line", f, path)
			}
			if m, ok := v.(map[string]any); ok {
				for k, e := range m {
					walk(join(path, quoteKey(k)), e)
				}
				return
			}
			if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice {
				for i := range rv.Len() {
					walk(index(path, i), rv.Index(i).Interface())
				}
			}
		}
		walk("", doc.tree)
	}
}

// TestDecodeErrorsTellTheLine: an unknown key or a value of the wrong type
// is named with the line it is on, in the second element of an array of
// tables too.
func TestDecodeErrorsTellTheLine(t *testing.T) {
	text := strings.Join([]string{
		`[gateway]`,          // 1
		`name = "gw1"`,       // 2
		`[tun]`,              // 3
		`mtu = "1420"`,       // 4
		`[[service]]`,        // 5
		`name = "a"`,         // 6
		`[[service]]`,        // 7
		`name = "b"`,         // 8
		`  [[service.port]]`, // 9
		`  protocol = "tcp"`, // 10
		`  prot = 80`,        // 11
		`  [service.health]`, // 12
		`  tymeout = "1s"`,   // 13
	}, "\n")
	_, err := ParseGateway("gw.toml", []byte(text))
	got := strings.Join(errorLines(t, err), "\n")
	for _, want := range []string{
		"gw.toml:4: tun.mtu: expected an integer, got string \"1420\"",
		"gw.toml:11: service[1].port[0].prot: unknown key",
		"gw.toml:13: service[1].health.tymeout: unknown key",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors lack %q:\n%s", want, got)
		}
	}
}

// TestLineOf checks which line an error about a path is told: the path's
// own, else that of the nearest table above it in the file, never the line
// of an array for an element it lacks, and only the path's own when the
// scanner did not follow the whole text.
func TestLineOf(t *testing.T) {
	text := strings.Join([]string{
		`[gateway]`,           // 1
		`name = "gw1"`,        // 2
		`[[service]]`,         // 3
		`name = "a"`,          // 4
		`  [service.health]`,  // 5
		`  type = "udp"`,      // 6
		`[[service]]`,         // 7
		`name = "b"`,          // 8
		`health.type = "udp"`, // 9
	}, "\n")
	m := keyLines(text)
	for path, want := range map[string]int{
		"gateway.name":           2,
		"gateway.state_dir":      1, // absent: its table
		"service[0].health.port": 5,
		"service[0].port":        3,
		"service[0].port[0].x":   0, // an element the file lacks is not its array
		"service[1].health.port": 9, // a table of dotted keys
		"service[2].name":        0,
		"tun.mtu":                0, // no [tun]
		"tun":                    0,
	} {
		if got := m.lineOf(path); got != want {
			t.Errorf("lineOf(%s) = %d, want %d", path, got, want)
		}
	}
	m.complete = false // a key past where the scanner stopped may be in the file
	if got := m.lineOf("gateway.state_dir"); got != 0 {
		t.Errorf("lineOf(gateway.state_dir) of a partial scan = %d, want 0", got)
	}
	if got := m.lineOf("gateway.name"); got != 2 {
		t.Errorf("lineOf(gateway.name) of a partial scan = %d, want 2", got)
	}
	var none *keyLineMap // JSON
	if got := none.lineOf("service.name"); got != 0 {
		t.Errorf("lineOf without lines = %d, want 0", got)
	}
}
