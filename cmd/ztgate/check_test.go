package main

import (
	"bytes"
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
			"tun.mtu: 10 is out of range",
			"tun.pool: 10.100.0.0/30 is too small",
			`dns.ttl: invalid duration "forever"`,
			`tenant[0].sources[0]: invalid prefix "not-a-prefix"`,
			`service[0].tenants[0]: unknown tenant "nobody"`,
			"service[0].backends: required",
			"service[0].port: required",
			`service[0].balance: "random" is not`,
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
