package conf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// gatewayHead is a valid start of a gateway file that services may follow.
const gatewayHead = `
[gateway]
name = "gw1"

[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]

[[tenant]]
name = "globex"
sources = ["203.0.113.0/24"]
`

// webService is a minimal valid service.
const webService = `
[[service]]
name = "web"
tenants = ["acme"]
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "tcp"
  port = 80
`

// errorLines returns the lines of an Errors value; it fails the test when
// err is not one.
func errorLines(t *testing.T, err error) []string {
	t.Helper()
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %v (%T) is not an Errors", err, err)
	}
	lines := make([]string, len(errs))
	for i, e := range errs {
		lines[i] = e.Error()
	}
	return lines
}

// wantErrors checks that err has exactly one line per want, in order, each
// containing its want.
func wantErrors(t *testing.T, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %q", want)
	}
	got := errorLines(t, err)
	if len(got) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%s\nwant:\n%s", len(got), len(want), strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("error %d = %q, want it to contain %q", i, got[i], want[i])
		}
	}
}

// writeFiles creates files (name → content) in a new temporary directory
// and returns the directory.
func writeFiles(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
