package conf

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestCheckRole(t *testing.T) {
	tests := []struct {
		name, toml string
		role       Role
		wantErr    string // "" = valid
	}{
		{"gateway table", "[gateway]\nname = \"gw\"\n", RoleGateway, ""},
		{"services only", webService + "[[tenant]]\nname = \"acme\"\nsources = [\"198.51.100.0/24\"]\n", RoleGateway, ""},
		{"tun and tenants", "[tun]\nmtu = 1500\n[[tenant]]\nname = \"acme\"\nsources = [\"198.51.100.0/24\"]\n", RoleGateway, ""},
		{"relay", insecureRelay, RoleRelay, ""},
		{"agent", "[agent]\nname = \"a\"\n[tunnel]\nserver = \"r:1\"\ninsecure_allow_unauthenticated = true\n", RoleAgent, ""},
		{"invalid agent", "[agent]\nname = \"a\"\n", RoleAgent, "x.toml: tunnel.server: required"},
		{"invalid gateway", "[gateway]\nnme = \"gw\"\n", RoleGateway, "x.toml: gateway.nme: unknown key"},
		{"tun alone", "[tun]\nmtu = 1500\n", "", "x.toml: cannot tell the role of the file (top-level keys: tun): add a [gateway], [relay] or [agent] table"},
		{"empty", "", "", "x.toml: cannot tell the role of the file (the file is empty)"},
		{"two roles", "[relay]\n[agent]\n", "", "x.toml: the file has [relay] and [agent] tables: a file configures one role"},
		{"syntax error", "[relay\n", "", "x.toml:2:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"x.toml": tc.toml})
			role, err := Check(filepath.Join(dir, "x.toml"))
			if role != tc.role {
				t.Errorf("role = %q, want %q", role, tc.role)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("error %v", err)
			case tc.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want it to start with %q", err, tc.wantErr)
			}
		})
	}
	if _, err := Check(filepath.Join(t.TempDir(), "missing.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Check(missing) = %v, want fs.ErrNotExist", err)
	}
}

// examplesPKIPending says the certificates of the examples (examples/pki/)
// are not generated yet, so a missing file there is the one error a tunnel
// example may have. Set it to false once they exist: then every example must
// pass Check without any error.
const examplesPKIPending = true

func TestExamples(t *testing.T) {
	tests := []struct {
		file string
		role Role
		pki  []string // the PKI files the example names
	}{
		{"gateway.toml", RoleGateway, nil},
		{"gateway-relay.toml", RoleGateway, []string{"gateway.crt", "gateway.key", "ca.crt"}},
		{"relay.toml", RoleRelay, []string{"relay.crt", "relay.key", "ca.crt"}},
		{"agent.toml", RoleAgent, []string{"agent.crt", "agent.key", "ca.crt"}},
	}
	examples, err := filepath.Abs("../examples")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			role, err := Check(filepath.Join(examples, tc.file))
			if role != tc.role {
				t.Errorf("role = %q, want %q", role, tc.role)
			}
			pki := filepath.Join(examples, "pki")
			var pkiErrs []string
			var errs Errors
			errors.As(err, &errs)
			for _, e := range errs {
				if examplesPKIPending && errors.Is(e, fs.ErrNotExist) && strings.Contains(e.Error(), pki+"/") {
					pkiErrs = append(pkiErrs, e.Error())
					continue
				}
				t.Errorf("unexpected error: %v", e)
			}
			for _, f := range tc.pki {
				p := filepath.Join(pki, f)
				if _, statErr := os.Stat(p); statErr == nil {
					continue
				}
				if !slices.ContainsFunc(pkiErrs, func(s string) bool { return strings.Contains(s, "("+p+")") }) {
					t.Errorf("the missing %s is not reported clearly; errors:\n%v", p, err)
				}
			}
		})
	}
}
