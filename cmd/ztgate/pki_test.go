package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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
// when it replaces an existing file (a renewal, `ztgate pki issue -force`,
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
			args := []string{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "office", "-name", name}
			if tc.before != 0 {
				args = append(args, "-force")
				if err := os.WriteFile(strings.TrimSuffix(key, ".key")+".crt", []byte("old certificate\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if code := run(args, &stdout, &stderr); code != 0 {
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

// pkiRun runs ztgate with args and returns its exit code and output.
func pkiRun(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// newPKIDir makes a CA in a new directory and returns the directory.
func newPKIDir(t *testing.T, args ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if code, _, stderr := pkiRun(append([]string{"pki", "init", "-dir", dir}, args...)...); code != 0 {
		t.Fatalf("pki init: exit %d: %s", code, stderr)
	}
	return dir
}

// readFiles returns the contents of paths ("" for a missing one).
func readFiles(paths ...string) []string {
	var out []string
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		out = append(out, string(b))
	}
	return out
}

// TestPKIInitKeepsTheCA: `pki init` never replaces a CA, nor half of one
// (a ca.key left by an init that failed half-way), and says which file is
// in the way. It has no -force: a new CA orphans every certificate.
func TestPKIInitKeepsTheCA(t *testing.T) {
	dir := newPKIDir(t)
	crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	before := readFiles(crt, key)
	code, _, stderr := pkiRun("pki", "init", "-dir", dir)
	if code != 1 || !strings.Contains(stderr, crt) || !strings.Contains(stderr, "operations.md") {
		t.Errorf("init over a CA: exit %d, %q: want 1 naming %s and the rotation's doc", code, stderr, crt)
	}
	if after := readFiles(crt, key); !slices.Equal(before, after) {
		t.Error("init over a CA changed it")
	}
	if err := os.Remove(crt); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = pkiRun("pki", "init", "-dir", dir)
	if code != 1 || !strings.Contains(stderr, key) {
		t.Errorf("init over a lone ca.key: exit %d, %q: want 1 naming %s", code, stderr, key)
	}
	if b, _ := os.ReadFile(key); string(b) != before[1] {
		t.Error("init over a lone ca.key replaced it")
	}
}

// TestPKIIssueRefusesToReplace: issuing a second time to the same files
// (the same -name, or -out) refused silently writing over the first key
// and certificate: only -force, a renewal, replaces them.
func TestPKIIssueRefusesToReplace(t *testing.T) {
	dir := newPKIDir(t)
	crt, key := filepath.Join(dir, "laptop.crt"), filepath.Join(dir, "laptop.key")
	issue := []string{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "office", "-name", "laptop"}
	if code, _, stderr := pkiRun(issue...); code != 0 {
		t.Fatalf("first issue: exit %d: %s", code, stderr)
	}
	first := readFiles(crt, key)
	for _, args := range [][]string{
		issue,
		{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "acme", "-name", "laptop"},
		{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "acme", "-name", "other", "-out", filepath.Join(dir, "laptop")},
	} {
		code, stdout, stderr := pkiRun(args...)
		if code != 1 || !strings.Contains(stderr, "-force") || !strings.Contains(stderr, "laptop.") || stdout != "" {
			t.Errorf("%v: exit %d, %q, %q: want 1, naming the file and -force", args[1:], code, stdout, stderr)
		}
		if !slices.Equal(readFiles(crt, key), first) {
			t.Fatalf("%v replaced the first certificate or key", args[1:])
		}
	}
	// Half a pair in the way is refused too, and left alone.
	if err := os.Remove(crt); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := pkiRun(issue...); code != 1 || !strings.Contains(stderr, key) {
		t.Errorf("issue over a lone key: exit %d, %q", code, stderr)
	}
	if _, err := os.Stat(crt); err == nil {
		t.Error("issue over a lone key wrote the certificate")
	}
	if code, _, stderr := pkiRun(append(issue, "-force")...); code != 0 {
		t.Fatalf("issue -force: exit %d: %s", code, stderr)
	}
	second := readFiles(crt, key)
	if second[0] == "" || second[1] == first[1] {
		t.Error("issue -force did not write a new certificate and key")
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

// TestPKIRoundTrip: every certificate `pki issue` writes loads as the
// credentials of its role, carries exactly the identity asked for, chains
// to the CA for what its role does, and a relay's serves a handshake with
// an agent that verifies it by the name given.
func TestPKIRoundTrip(t *testing.T) {
	dir := newPKIDir(t)
	caFile := filepath.Join(dir, "ca.crt")
	roots := x509.NewCertPool()
	if ca, err := tunnel.LoadCA(caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	} else {
		roots.AddCert(ca.Certificate())
	}
	creds := map[string]*tunnel.Credentials{}
	for _, tc := range []struct {
		args               []string
		tenant, role, name string
		servers            []string // names a client verifies it for
		client             bool
	}{
		{[]string{"-role", "relay", "-tenant", "infra", "-name", "relay1", "-dns", "relay.example.net", "-ip", "203.0.113.1,2001:db8::1"},
			"infra", "relay", "relay1", []string{"relay.example.net", "203.0.113.1", "2001:db8::1"}, true},
		{[]string{"-role", "gateway", "-tenant", "infra", "-name", "gw-east"}, "infra", "gateway", "gw-east", nil, true},
		{[]string{"-role", "gateway", "-tenant", "infra", "-name", "gw-lan", "-dns", "gw.lan.example"},
			"infra", "gateway", "gw-lan", []string{"gw.lan.example"}, true},
		{[]string{"-role", "agent", "-tenant", "office", "-name", "laptop"}, "office", "agent", "laptop", nil, true},
		{[]string{"-role", "Agent", "-tenant", "Office", "-name", "Host-2.Example"}, "office", "agent", "host-2.example", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := pkiRun(append([]string{"pki", "issue", "-dir", dir}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			prefix := filepath.Join(dir, tc.name)
			want := "created " + prefix + ".crt and " + prefix + ".key for ztna://" + tc.tenant + "/" + tc.role + "/" + tc.name
			if !strings.Contains(stdout, want) {
				t.Errorf("stdout %q lacks %q", stdout, want)
			}
			c, err := tunnel.NewCredentials(tunnel.CredentialsConfig{CertFile: prefix + ".crt", KeyFile: prefix + ".key", CAFile: caFile, Role: tc.role}, nil)
			if err != nil {
				t.Fatal(err)
			}
			creds[tc.name] = c
			leaf := c.Certificate()
			id, err := tunnel.IdentityFromCert(leaf)
			if err != nil || id.Tenant != tc.tenant || id.Role != tc.role || id.Name != tc.name || id.Legacy || id.Services != nil {
				t.Errorf("identity %#v, %v", id, err)
			}
			verify := func(usage x509.ExtKeyUsage, name string) error {
				_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
				return err
			}
			if err := verify(x509.ExtKeyUsageClientAuth, ""); (err == nil) != tc.client {
				t.Errorf("as a client: %v", err)
			}
			for _, name := range tc.servers {
				if err := verify(x509.ExtKeyUsageServerAuth, name); err != nil {
					t.Errorf("as the server %s: %v", name, err)
				}
			}
			if err := verify(x509.ExtKeyUsageServerAuth, "elsewhere.example.net"); err == nil {
				t.Error("a server for any name")
			}
			if tc.role == "agent" && verify(x509.ExtKeyUsageServerAuth, "") == nil {
				t.Error("an agent's certificate is fit for a server")
			}
			if now := time.Now(); !leaf.NotBefore.Before(now.Add(-time.Minute)) || leaf.NotAfter.Sub(leaf.NotBefore) != 90*24*time.Hour {
				t.Errorf("validity %v to %v: want backdated for clock skew, 90 days", leaf.NotBefore, leaf.NotAfter)
			}
		})
	}
	// The agent verifies the relay by the name it dials, in memory.
	if creds["relay1"] == nil || creds["laptop"] == nil {
		t.Fatal("no credentials for the handshake")
	}
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	server := tls.Server(sc, creds["relay1"].ServerConfig("test"))
	done := make(chan error, 1)
	go func() { done <- server.Handshake() }()
	if err := tls.Client(cc, creds["laptop"].ClientConfig("relay.example.net", "test")).Handshake(); err != nil {
		t.Errorf("the agent's handshake with the relay: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("the relay's handshake with the agent: %v", err)
	}
}

// TestPKIIssueServerNames: a relay's certificate without the names its
// clients dial fails every handshake, so it is refused, saying what to
// pass; -dns and -ip say what is wrong with a value and where it belongs;
// a gateway without names is told what that means.
func TestPKIIssueServerNames(t *testing.T) {
	dir := newPKIDir(t)
	issue := func(role, name string, extra ...string) []string {
		return append([]string{"pki", "issue", "-dir", dir, "-role", role, "-tenant", "infra", "-name", name}, extra...)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{issue("relay", "r1"), []string{"-dns", "-ip", "relay.example.net"}},
		{issue("relay", "r2", "-dns", " , "), []string{"-dns", "-ip"}},
		{issue("relay", "r3", "-dns", "203.0.113.1"), []string{"IP address", "-ip 203.0.113.1"}},
		{issue("relay", "r4", "-dns", "relay.example.net:4433"), []string{"port", "-dns relay.example.net"}},
		{issue("relay", "r5", "-dns", "relay example"), []string{"-dns", "not a DNS name"}},
		{issue("relay", "r6", "-ip", "relay.example.net"), []string{"-ip", "not an IP address", "-dns relay.example.net"}},
		{issue("relay", "r7", "-ip", "203.0.113.1:4433"), []string{"-ip", "port", "-ip 203.0.113.1"}},
		{issue("relay", "r8", "-ip", "fe80::1%eth0"), []string{"-ip", "zone"}},
		{issue("agent", "a1", "-dns", "laptop.example.net"), []string{"agent", "-dns"}},
	} {
		code, stdout, stderr := pkiRun(tc.args...)
		if code != 2 || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q: want exit 2", tc.args[5:], code, stdout, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: %q does not say %q", tc.args[5:], stderr, w)
			}
		}
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "[ra][0-9]*")); len(files) > 0 {
		t.Errorf("refused requests wrote %v", files)
	}
	code, stdout, stderr := pkiRun(issue("gateway", "gw1")...)
	// The direct path needs no names (the agent knows the gateway by
	// identity); it said "enough ... for the direct path; a gateway with
	// a [tunnel] listen needs the names", which the direct path has too.
	if code != 0 || !strings.Contains(stdout, "[tunnel] listen as their tunnel.server") || !strings.Contains(stdout, "direct and forwarded paths") {
		t.Errorf("gateway without names: exit %d, stdout %q, stderr %q: want a note on what it can do", code, stdout, stderr)
	}
	code, stdout, _ = pkiRun(issue("relay", "relay9", "-dns", "Relay.Example.NET.", "-ip", "::ffff:203.0.113.1")...)
	if code != 0 || !strings.Contains(stdout, "relay.example.net") || !strings.Contains(stdout, "203.0.113.1") {
		t.Errorf("relay with names: exit %d, stdout %q: want the names it verifies for", code, stdout)
	}
}

// TestPKIIssueChecksArgumentsFirst: a tenant or name that no identity can
// carry is refused before the CA is looked at, saying what is allowed;
// before, a missing CA hid it, and a name with a character that
// strings.ToLower folds (the Kelvin sign) gave another identity.
func TestPKIIssueChecksArgumentsFirst(t *testing.T) {
	nowhere := filepath.Join(t.TempDir(), "no-ca")
	for _, tc := range []struct {
		tenant, name, role string
		want               string
	}{
		{"ac me", "x", "agent", "a-z, 0-9"},
		{"\u212acme", "x", "agent", "tenant"},
		{"acme", "my/laptop", "agent", "name"},
		{"acme", "x", "admin", "agent, gateway or relay"},
	} {
		code, _, stderr := pkiRun("pki", "issue", "-dir", nowhere, "-role", tc.role, "-tenant", tc.tenant, "-name", tc.name)
		if code != 2 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "pki init") {
			t.Errorf("%q %q %q: exit %d, %q: want 2 saying %q", tc.tenant, tc.role, tc.name, code, stderr, tc.want)
		}
	}
	for _, out := range []string{filepath.Join(t.TempDir(), "sub") + string(filepath.Separator), "laptop.crt", "laptop.key"} {
		code, _, stderr := pkiRun("pki", "issue", "-dir", nowhere, "-role", "agent", "-tenant", "acme", "-name", "laptop", "-out", out)
		if code != 2 || !strings.Contains(stderr, "-out") {
			t.Errorf("-out %s: exit %d, %q: want 2 explaining -out", out, code, stderr)
		}
	}
}

// TestPKIIssueWithinTheCA: a certificate never outlives the CA that signs
// it (peers refuse it from the CA's end on), and an expired CA signs
// nothing; both said with what to do.
func TestPKIIssueWithinTheCA(t *testing.T) {
	dir := newPKIDir(t, "-days", "30")
	issue := []string{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "acme", "-name", "laptop"}
	code, _, stderr := pkiRun(issue...) // 90 days by default
	if code != 1 || !strings.Contains(stderr, "-days 30") || !strings.Contains(stderr, "expires") {
		t.Errorf("90 days from a CA of 30: exit %d, %q: want 1 suggesting -days 30", code, stderr)
	}
	if code, _, stderr := pkiRun(append(issue, "-days", "30")...); code != 0 {
		t.Errorf("30 days from a CA of 30: exit %d: %s", code, stderr)
	}

	// An expired CA, made by hand.
	expired := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "old CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(expired, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(expired, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = pkiRun("pki", "issue", "-dir", expired, "-role", "agent", "-tenant", "acme", "-name", "laptop")
	if code != 1 || !strings.Contains(stderr, "expired") {
		t.Errorf("an expired CA: exit %d, %q: want 1 saying it expired", code, stderr)
	}
}

// TestPKICAFileErrors: a CA key that does not load is named, with why.
func TestPKICAFileErrors(t *testing.T) {
	dir := newPKIDir(t)
	key := filepath.Join(dir, "ca.key")
	if err := os.WriteFile(key, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := pkiRun("pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "acme", "-name", "laptop")
	if code != 1 || !strings.Contains(stderr, key) || !strings.Contains(stderr, "encrypted") || strings.Contains(stderr, "pki init") {
		t.Errorf("encrypted CA key: exit %d, %q: want 1 naming %s as encrypted", code, stderr, key)
	}
}
