package main

import (
	"bytes"
	"os"
	"path/filepath"
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

// TestPKIIssueKeyMode: an issued key is readable by its owner only, also
// when it replaces an existing file (a renewal, `ztgate pki issue` again,
// over a key that a copy left world-readable).
func TestPKIIssueKeyMode(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"pki", "init", "-dir", dir}, &stdout, &stderr); code != 0 {
		t.Fatalf("pki init: exit %d: %s", code, stderr.String())
	}
	key := filepath.Join(dir, "laptop.key")
	if err := os.WriteFile(key, []byte("old key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(key, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if code := run([]string{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "office", "-name", "laptop"}, &stdout, &stderr); code != 0 {
		t.Fatalf("pki issue: exit %d: %s", code, stderr.String())
	}
	fi, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("the new private key %s has mode %#o, want 0600", key, mode)
	}
}
