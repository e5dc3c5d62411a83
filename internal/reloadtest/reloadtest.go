// Package reloadtest runs the reload tests of the roles that apply few of
// their configuration file's keys live (the relay, the agent: the paths of
// their TLS files): each case writes the file, reloads, and checks the
// result, the log and the counters of ztgate_config_reloads_total.
package reloadtest

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// Case is one reload.
type Case struct {
	Name     string
	Text     string   // the file's new text; "" removes the file
	Fails    bool     // the reload must fail (and keep the running configuration)
	Logged   []string // each in the log of this reload
	Unlogged string   // not in it, when set
}

// Run runs cases in order against the file at path: reload reloads, logs
// holds the role's log, reloads(result) reads its counter, and unchanged
// reports whether the running configuration is still the one it started
// with (a reload applies none of the file).
func Run(t *testing.T, path string, cases []Case, reload func() error, logs fmt.Stringer,
	reloads func(result string) float64, unchanged func() bool) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			if tc.Text == "" {
				os.Remove(path)
			} else if err := os.WriteFile(path, []byte(tc.Text), 0o600); err != nil {
				t.Fatal(err)
			}
			ok, bad := reloads("ok"), reloads("error")
			before := len(logs.String())
			err := reload()
			out := logs.String()[before:]
			if (err != nil) != tc.Fails {
				t.Fatalf("Reload: %v, want failure %v\n%s", err, tc.Fails, out)
			}
			for _, s := range tc.Logged {
				if !strings.Contains(out, s) {
					t.Errorf("log without %q:\n%s", s, out)
				}
			}
			if tc.Unlogged != "" && strings.Contains(out, tc.Unlogged) {
				t.Errorf("log with %q:\n%s", tc.Unlogged, out)
			}
			if n := strings.Count(out, "level=WARN"); n > 1 {
				t.Errorf("%d warnings, want one at most:\n%s", n, out)
			}
			wantOK, wantBad := ok+1, bad
			if tc.Fails {
				wantOK, wantBad = ok, bad+1
			}
			if reloads("ok") != wantOK || reloads("error") != wantBad {
				t.Errorf("reloads ok %v error %v, want %v and %v", reloads("ok"), reloads("error"), wantOK, wantBad)
			}
			if !unchanged() {
				t.Fatal("the running configuration changed")
			}
		})
	}
}
