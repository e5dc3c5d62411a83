package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/tunnel"
)

// TestPKIIssueKeepsTheCA: a leaf whose output prefix is the CA's own files
// (a peer named "ca", or -out DIR/ca) must not be written over ca.crt and
// ca.key: that destroys the CA key, and every later issue fails.
func TestPKIIssueKeepsTheCA(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra func(dir string) []string
	}{
		{"name ca", func(string) []string { return []string{"-name", "ca"} }},
		{"out DIR/ca", func(dir string) []string { return []string{"-name", "laptop", "-out", filepath.Join(dir, "ca")} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var stdout, stderr bytes.Buffer
			if code := run([]string{"pki", "init", "-dir", dir}, &stdout, &stderr); code != 0 {
				t.Fatalf("pki init: exit %d: %s", code, stderr.String())
			}
			crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
			crtBefore, _ := os.ReadFile(crt)
			keyBefore, _ := os.ReadFile(key)
			args := append([]string{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "office"}, tc.extra(dir)...)
			stdout.Reset()
			stderr.Reset()
			code := run(args, &stdout, &stderr)
			crtAfter, _ := os.ReadFile(crt)
			keyAfter, _ := os.ReadFile(key)
			if !bytes.Equal(crtBefore, crtAfter) || !bytes.Equal(keyBefore, keyAfter) {
				t.Errorf("pki issue %v (exit %d) replaced the CA's ca.crt/ca.key", tc.extra(dir), code)
			}
			if code == 0 {
				t.Errorf("pki issue %v wrote over the CA and exited 0: %s", tc.extra(dir), stdout.String())
			}
			if _, err := tunnel.LoadCA(crt, key); err != nil {
				t.Errorf("the CA no longer loads: %v", err)
			}
		})
	}
}

// TestPKIIssueKeyMode: an issued key is never readable by others, also
// when it replaces an existing file (a renewal, `ztgate pki issue` again,
// over a key that a copy left world-readable); a renewal in place keeps
// the group's read access of a key that only its group could read (the
// systemd units read their keys through their group).
func TestPKIIssueKeyMode(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"pki", "init", "-dir", dir}, &stdout, &stderr); code != 0 {
		t.Fatalf("pki init: exit %d: %s", code, stderr.String())
	}
	for _, tc := range []struct {
		name   string
		before os.FileMode // 0: no file before
		want   os.FileMode
	}{
		{"new", 0, 0o600},
		{"over a world-readable key", 0o644, 0o600},
		{"over a key of its group", 0o640, 0o640},
		{"over a key of its owner", 0o600, 0o600},
		{"over a group-writable key", 0o660, 0o640},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-")
			key := filepath.Join(dir, name+".key")
			if tc.before != 0 {
				if err := os.WriteFile(key, []byte("old key\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(key, tc.before); err != nil { // whatever the umask
					t.Fatal(err)
				}
			}
			if code := run([]string{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "office", "-name", name}, &stdout, &stderr); code != 0 {
				t.Fatalf("pki issue: exit %d: %s", code, stderr.String())
			}
			fi, err := os.Stat(key)
			if err != nil {
				t.Fatal(err)
			}
			if mode := fi.Mode().Perm(); mode != tc.want {
				t.Errorf("the new private key has mode %#o, want %#o", mode, tc.want)
			}
			if b, _ := os.ReadFile(key); bytes.Contains(b, []byte("old key")) {
				t.Error("the old key is still there")
			}
		})
	}
}

// TestPKIDays: -days must be a validity a certificate can have. Beyond
// about 106,000 days the validity overflowed a time.Duration and made a
// CA valid for minutes, reported as created.
func TestPKIDays(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"pki", "init", "-dir", dir}, &stdout, &stderr); code != 0 {
		t.Fatalf("pki init: exit %d: %s", code, stderr.String())
	}
	issue := []string{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "office", "-name", "laptop"}
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"pki", "init", "-dir", t.TempDir(), "-days", "213504"}, 2},
		{[]string{"pki", "init", "-dir", t.TempDir(), "-days", "0"}, 2},
		{[]string{"pki", "init", "-dir", t.TempDir(), "-days", "36500"}, 0},
		{append(issue, "-days", "-1"), 2},
		{append(issue, "-days", "36501"), 2},
		{append(issue, "-days", "1"), 0},
	} {
		stdout.Reset()
		stderr.Reset()
		if code := run(tc.args, &stdout, &stderr); code != tc.code {
			t.Errorf("%v: exit %d, want %d: %s", tc.args[1:], code, tc.code, stderr.String())
		} else if code == 2 && !bytes.Contains(stderr.Bytes(), []byte("1 to 36500 days")) {
			t.Errorf("%v: %q does not say the range", tc.args[1:], stderr.String())
		}
	}
}
