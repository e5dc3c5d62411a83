package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestArguments: -h of every command answers 0, and an argument a command
// does not take is refused with its name and exit 2 before anything runs:
// `ztgate gateway gw.toml` used to run on /etc/ztgate/gateway.toml, and
// `ztgate pki init mydir` made ./pki.
func TestArguments(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"gateway", "-h"}, 0, "-config"},
		{[]string{"relay", "-h"}, 0, "-config"},
		{[]string{"agent", "-h"}, 0, "-config"},
		{[]string{"check", "-h"}, 0, "usage: ztgate check"},
		{[]string{"status", "-h"}, 0, "-api"},
		{[]string{"reload", "-h"}, 0, "usage: ztgate reload"},
		{[]string{"version", "-h"}, 0, ""},
		{[]string{"pki", "init", "-h"}, 0, "-dir"},
		{[]string{"pki", "issue", "-h"}, 0, "-role"},
		{[]string{"gateway", "gw.toml"}, 2, `ztgate gateway: unexpected argument "gw.toml" (a configuration file is given with -config gw.toml)`},
		{[]string{"relay", "-config", "r.toml", "extra"}, 2, `ztgate relay: unexpected argument "extra"`},
		{[]string{"agent", "a.toml", "-config", "a.toml"}, 2, `ztgate agent: unexpected argument "a.toml"`},
		{[]string{"check", "a.toml", "-v"}, 2, `ztgate check: unexpected argument "-v": flags go before arguments`},
		{[]string{"check", "-config", "a.toml", "b.toml"}, 2, `ztgate check: unexpected argument "b.toml": the file is a.toml (-config)`},
		{[]string{"status", "extra"}, 2, `ztgate status: unexpected argument "extra"`},
		{[]string{"reload", "extra"}, 2, `ztgate reload: unexpected argument "extra"`},
		{[]string{"version", "extra"}, 2, `ztgate version: unexpected argument "extra"`},
		{[]string{"pki", "init", "mydir"}, 2, `ztgate pki init: unexpected argument "mydir"`},
		{[]string{"gateway", "-nope"}, 2, "flag provided but not defined: -nope"},
		{[]string{"gateway", "-log-level", "loud", "-config", "x.toml"}, 2, `-log-level: "loud" is not debug, info, warn or error`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, &stdout, &stderr); code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, stderr.String())
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "pki")); err == nil {
		t.Error("pki init with an argument made ./pki")
	}
}

// TestAPIURL: -api takes the API's URL, or an [api] listen address as the
// configuration writes it; anything else is refused with what is expected,
// not with a Go URL error or a request to a doubled path.
func TestAPIURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:7780":   "http://127.0.0.1:7780",
		"http://127.0.0.1:7780/":  "http://127.0.0.1:7780",
		"https://gw.example:7780": "https://gw.example:7780",
		"127.0.0.1:7781":          "http://127.0.0.1:7781",
		"[::1]:7782":              "http://[::1]:7782",
	} {
		if got, err := apiURL(in); err != nil || got != want {
			t.Errorf("apiURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "ftp://127.0.0.1:7780", "http://127.0.0.1:7780/v1", "http://127.0.0.1:7780?x=1", "http://", "http://u:p@127.0.0.1:7780", "%zz"} {
		_, err := apiURL(in)
		if err == nil || !strings.Contains(err.Error(), "want the URL of the API") {
			t.Errorf("apiURL(%q): %v, want a refusal saying what is expected", in, err)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"status", "-api", "http://127.0.0.1:7780/v1"}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), `ztgate status: -api "http://127.0.0.1:7780/v1": want the URL of the API`) {
		t.Errorf("status -api with a path: exit %d, stderr %q", code, stderr.String())
	}
}
