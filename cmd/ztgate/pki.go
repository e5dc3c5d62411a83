package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/tunnel"
)

// runPKI makes the certificates of a deployment: a CA, and per peer a key
// and a certificate carrying its ztgate identity.
func runPKI(args []string, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprintln(stderr, `usage:
  ztgate pki init  -dir DIR [-name NAME] [-days N]
      create DIR/ca.crt and DIR/ca.key (the key never leaves DIR)
  ztgate pki issue -dir DIR -role agent|gateway|relay -tenant TENANT -name NAME [-dns NAMES] [-ip ADDRS] [-days N] [-out PREFIX]
      create PREFIX.crt and PREFIX.key (default DIR/NAME) for identity ztna://TENANT/ROLE/NAME;
      relays and gateways that listen need their server names with -dns and/or -ip (comma-separated)`)
	}
	if len(args) == 0 {
		usage()
		return 2
	}
	switch args[0] {
	case "init":
		return pkiInit(args[1:], stdout, stderr)
	case "issue":
		return pkiIssue(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		usage()
		return 0
	}
	usage()
	return 2
}

func pkiInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pki init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "pki", "`directory` for the CA")
	name := fs.String("name", "ztgate CA", "the CA's common name")
	days := fs.Int("days", 3650, "validity in days")
	if code, ok := parseFlags(fs, args, 0); !ok {
		return code
	}
	if !validDays("pki init", *days, stderr) {
		return 2
	}
	crt, key := filepath.Join(*dir, "ca.crt"), filepath.Join(*dir, "ca.key")
	if exists(crt) || exists(key) {
		fmt.Fprintf(stderr, "ztgate pki: %s already holds a CA; remove it first to make a new one\n", *dir)
		return 1
	}
	ca, err := tunnel.NewCA(*name, time.Duration(*days)*24*time.Hour)
	if err == nil {
		err = writePair(*dir, crt, key, ca.CertPEM(), ca.KeyPEM())
	}
	if err != nil {
		fmt.Fprintln(stderr, "ztgate pki:", err)
		return 1
	}
	fmt.Fprintf(stdout, "created %s and %s\n", crt, key)
	return 0
}

func pkiIssue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pki issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "pki", "`directory` of the CA")
	role := fs.String("role", "", "agent, gateway or relay")
	tenant := fs.String("tenant", "", "the tenant of the identity (agents reach the services that list it)")
	name := fs.String("name", "", "the peer's name")
	dns := fs.String("dns", "", "comma-separated DNS server names (relay, gateway listener)")
	ips := fs.String("ip", "", "comma-separated IP server addresses (relay, gateway listener)")
	days := fs.Int("days", 90, "validity in days")
	out := fs.String("out", "", "output `prefix` (default DIR/NAME)")
	if code, ok := parseFlags(fs, args, 0); !ok {
		return code
	}
	if *role == "" || *tenant == "" || *name == "" {
		fmt.Fprintln(stderr, "ztgate pki issue: -role, -tenant and -name are required")
		return 2
	}
	if !validDays("pki issue", *days, stderr) {
		return 2
	}
	req := tunnel.IssueRequest{Tenant: *tenant, Role: *role, Name: *name, Validity: time.Duration(*days) * 24 * time.Hour}
	req.DNSNames = splitList(*dns)
	for _, s := range splitList(*ips) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			fmt.Fprintf(stderr, "ztgate pki issue: -ip: %v\n", err)
			return 2
		}
		req.IPs = append(req.IPs, a)
	}
	prefix := *out
	if prefix == "" {
		prefix = filepath.Join(*dir, *name)
	}
	crt, key := prefix+".crt", prefix+".key"
	caCrt, caKey := filepath.Join(*dir, "ca.crt"), filepath.Join(*dir, "ca.key")
	for _, p := range []string{crt, key} {
		if sameFile(p, caCrt) || sameFile(p, caKey) {
			fmt.Fprintf(stderr, "ztgate pki issue: %s is a file of the CA; choose another -name or -out\n", p)
			return 2
		}
	}
	ca, err := tunnel.LoadCA(caCrt, caKey)
	if err != nil {
		fmt.Fprintf(stderr, "ztgate pki issue: %v (run `ztgate pki init -dir %s` first)\n", err, *dir)
		return 1
	}
	crtPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		fmt.Fprintln(stderr, "ztgate pki issue:", err)
		return 1
	}
	if err := writePair(filepath.Dir(prefix), crt, key, crtPEM, keyPEM); err != nil {
		fmt.Fprintln(stderr, "ztgate pki issue:", err)
		return 1
	}
	// As the certificate carries it: identities are lower case.
	fmt.Fprintf(stdout, "created %s and %s for ztna://%s/%s/%s\n", crt, key,
		strings.ToLower(*tenant), strings.ToLower(*role), strings.ToLower(*name))
	return 0
}

// maxDays bounds -days: 100 years, far below where the validity would
// overflow a time.Duration (about 106,000 days) and wrap to minutes.
const maxDays = 36500

// validDays reports whether -days is a validity a certificate can have,
// saying why not on stderr.
func validDays(cmd string, days int, stderr io.Writer) bool {
	if days < 1 || days > maxDays {
		fmt.Fprintf(stderr, "ztgate %s: -days %d: the validity must be 1 to %d days\n", cmd, days, maxDays)
		return false
	}
	return true
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// writePair writes a certificate (0644) and its key (0600). Each file is
// replaced atomically, so that a crash never leaves half a key, and a key
// written over an existing one is never readable by others, whatever that
// file's mode was (os.WriteFile keeps it). What a renewal in place keeps,
// from a key others could not read, is the group's read access and the
// group: the systemd units read their keys through the ztgate group
// (getting-started.md).
func writePair(dir, crt, key string, crtPEM, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	mode, gid := os.FileMode(0o600), -1
	if fi, err := os.Stat(key); err == nil && fi.Mode().Perm()&0o007 == 0 { // one others could read was a mistake: 0600
		mode |= fi.Mode().Perm() & 0o040
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			gid = int(st.Gid)
		}
	}
	if _, err := catalog.WriteFileAtomic(key, keyPEM, mode); err != nil {
		return err
	}
	if gid >= 0 {
		if err := os.Chown(key, -1, gid); err != nil && mode&0o040 != 0 {
			return fmt.Errorf("%s: keeping its group for the key's readers: %w", key, err)
		}
	}
	_, err := catalog.WriteFileAtomic(crt, crtPEM, 0o644)
	return err
}

// sameFile reports whether a and b name the same file: the same path, or
// two existing paths of one file (a link, a case-insensitive file system).
func sameFile(a, b string) bool {
	if absA, errA := filepath.Abs(a); errA == nil {
		if absB, errB := filepath.Abs(b); errB == nil && absA == absB {
			return true
		}
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
