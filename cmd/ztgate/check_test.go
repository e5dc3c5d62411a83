package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// badGateway has one error in each of eight keys.
const badGateway = `
[tun]
pool = "10.100.0.0/30"
mtu = 10

[dns]
ttl = "forever"

[[tenant]]
name = "acme"
sources = ["not-a-prefix"]

[[service]]
name = "web"
tenants = ["nobody"]
backends = []
balance = "random"
`

func TestCheck(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte(badGateway), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout []string // each must appear
		stderr []string // each must appear, once
	}{
		{"valid example", []string{"check", "-config", "../../examples/gateway.toml"}, 0,
			[]string{"valid gateway configuration"}, nil},
		{"path as argument", []string{"check", "../../examples/gateway.toml"}, 0,
			[]string{"valid gateway configuration"}, nil},
		{"every error", []string{"check", "-config", bad}, 1, nil, []string{
			"bad.toml:4: tun.mtu: 10 is out of range",
			"bad.toml:3: tun.pool: 10.100.0.0/30 is too small",
			`bad.toml:7: dns.ttl: invalid duration "forever"`,
			`bad.toml:11: tenant[0].sources[0]: invalid prefix "not-a-prefix"`,
			`bad.toml:15: service[0].tenants[0]: unknown tenant "nobody"`,
			"bad.toml:16: service[0].backends: required",
			"bad.toml:13: service[0].port: required", // absent: the line of its [[service]]
			`bad.toml:17: service[0].balance: "random" is not`,
			bad + ": 8 error(s)",
		}},
		{"missing file", []string{"check", "-config", filepath.Join(t.TempDir(), "none.toml")}, 1, nil, []string{"no such file"}},
		{"no file", []string{"check"}, 2, nil, []string{"usage: ztgate check"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, &stdout, &stderr); code != tc.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tc.code, stderr.String())
			}
			for _, want := range tc.stdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
				}
			}
			for _, want := range tc.stderr {
				if n := strings.Count(stderr.String(), want); n != 1 {
					t.Errorf("stderr has %q %d times, want once:\n%s", want, n, stderr.String())
				}
			}
			if tc.code == 0 && stderr.Len() != 0 {
				t.Errorf("stderr of a valid check: %s", stderr.String())
			}
		})
	}
}

// TestCheckOwnCertificateRole: `ztgate check` loads a role's own TLS
// files as its start does, role included: a relay given an agent's
// certificate is refused by check (it started, and every peer refused it,
// before the start checked the role too), naming the key and what to
// issue; with its own certificate it is valid.
func TestCheckOwnCertificateRole(t *testing.T) {
	dir := t.TempDir()
	ztg := func(args ...string) { mustRun(t, args...) }
	ztg("pki", "init", "-dir", dir)
	ztg("pki", "issue", "-dir", dir, "-role", "relay", "-tenant", "infra", "-name", "relay1", "-ip", "127.0.0.1")
	ztg("pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "acme", "-name", "laptop")
	config := func(cert string) string {
		path := filepath.Join(dir, cert+".toml")
		text := fmt.Sprintf("[relay]\nlisten = \"127.0.0.1:4433\"\nstate_dir = %q\npool = \"10.100.0.0/24\"\ncert = %q\nkey = %q\nca = %q\n",
			filepath.Join(dir, "state"), filepath.Join(dir, cert+".crt"), filepath.Join(dir, cert+".key"), filepath.Join(dir, "ca.crt"))
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check", config("relay1")}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "valid relay configuration") {
		t.Errorf("the relay's own certificate: exit %d, %s%s", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	stderr.Reset()
	code := run([]string{"check", config("laptop")}, &stdout, &stderr)
	// Told as every error of the file is: with the line of the key.
	want := "laptop.toml:5: relay.cert: tunnel: load credentials: " + filepath.Join(dir, "laptop.crt") + " is the certificate of acme/agent/laptop, not of a relay"
	count := config("laptop") + ": 1 error(s)\n"
	if got := stderr.String(); code != 1 || !strings.HasPrefix(got, want) || !strings.HasSuffix(got, count) || strings.Count(got, "\n") != 2 {
		t.Errorf("an agent's certificate for the relay: exit %d, stderr %q; want 1 and %q, then %q", code, got, want, count)
	}
}

// TestCheckWarnsCertificateOfAnotherCA: a gateway whose tunnel.ca is not
// the CA that signed its tunnel.cert starts (with a warning) and every
// relay that trusts only that CA refuses it. check said "valid" and nothing
// else; it now names the key, both files and what to do, and still exits 0.
func TestCheckWarnsCertificateOfAnotherCA(t *testing.T) {
	dir := t.TempDir()
	ztg := func(args ...string) { mustRun(t, args...) }
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	ztg("pki", "init", "-dir", a)
	ztg("pki", "init", "-dir", b)
	ztg("pki", "issue", "-dir", a, "-role", "gateway", "-tenant", "infra", "-name", "gw")
	config := func(ca string) string {
		path := filepath.Join(dir, "gw.toml")
		text := fmt.Sprintf("[gateway]\nname = \"gw\"\nstate_dir = %q\n\n[tunnel]\nrelay = \"127.0.0.1:4433\"\ncert = %q\nkey = %q\nca = %q\n",
			filepath.Join(dir, "state"), filepath.Join(a, "gw.crt"), filepath.Join(a, "gw.key"), filepath.Join(ca, "ca.crt"))
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	var stdout, stderr bytes.Buffer
	path := config(a)
	if code := run([]string{"check", path}, &stdout, &stderr); code != 0 || stdout.String() != path+": valid gateway configuration\n" || stderr.Len() != 0 {
		t.Errorf("its own CA: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	stderr.Reset()
	path = config(b)
	code := run([]string{"check", path}, &stdout, &stderr)
	want := []string{
		"gw.toml:7: tunnel.cert: warning: " + filepath.Join(a, "gw.crt") + " does not verify against the CA of tunnel.ca (" + filepath.Join(b, "ca.crt") + ")",
		"refuse it (unknown_authority)",
		"set tunnel.ca to the ca.crt of the CA that signed it",
	}
	for _, w := range want {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
		}
	}
	if code != 0 || stdout.String() != path+": valid gateway configuration, 1 warning(s)\n" || strings.Count(stderr.String(), "\n") != 1 {
		t.Errorf("another CA: exit %d, stdout %q, stderr %q; want 0, one warning", code, stdout.String(), stderr.String())
	}
}

// TestCheckWarnsLeafAsCA: tunnel.ca set to a peer's certificate (the
// relay's relay1.crt for ca.crt) verifies every peer against that one
// certificate; check said "valid" and nothing else, and now warns at the
// ca key.
func TestCheckWarnsLeafAsCA(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"pki", "init", "-dir", dir},
		{"pki", "issue", "-dir", dir, "-role", "relay", "-tenant", "infra", "-name", "relay1", "-dns", "relay.example.net"},
		{"pki", "issue", "-dir", dir, "-role", "agent", "-tenant", "acme", "-name", "laptop"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr.String())
		}
	}
	path := filepath.Join(dir, "agent.toml")
	text := fmt.Sprintf("[agent]\nname = \"laptop\"\n\n[tunnel]\nserver = \"relay.example.net:4433\"\ncert = %q\nkey = %q\nca = %q\n",
		filepath.Join(dir, "laptop.crt"), filepath.Join(dir, "laptop.key"), filepath.Join(dir, "relay1.crt"))
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"check", path}, &stdout, &stderr)
	want := "agent.toml:8: tunnel.ca: warning: " + filepath.Join(dir, "relay1.crt") + " holds the certificate of infra/relay/relay1, not a CA's"
	if code != 0 || !strings.HasPrefix(stderr.String(), want) || !strings.Contains(stderr.String(), "set it to the ca.crt of `ztgate pki init`") ||
		!strings.HasSuffix(stdout.String(), "valid agent configuration, 1 warning(s)\n") {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0 and %q", code, stdout.String(), stderr.String(), want)
	}
}

// mustRun runs ztgate with args and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, stderr.String())
	}
}
