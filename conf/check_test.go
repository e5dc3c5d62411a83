package conf

import (
	"errors"
	"io/fs"
	"path/filepath"
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
		{"relay", insecureRelay, RoleRelay, `x.toml:5: relay.cert: "/dev/null" holds no PEM data, not a PEM certificate`},
		{"agent", "[agent]\nname = \"a\"\n[tunnel]\nserver = \"r:1\"\ninsecure_allow_unauthenticated = true\n", RoleAgent, ""},
		{"invalid agent", "[agent]\nname = \"a\"\n", RoleAgent, "x.toml: tunnel.server: required"},
		{"invalid gateway", "[gateway]\nnme = \"gw\"\n", RoleGateway, "x.toml:2: gateway.nme: unknown key"},
		{"tun alone", "[tun]\nmtu = 1500\n", "", "x.toml: cannot tell the role of the file (top-level keys: tun): add a [gateway], [relay] or [agent] table"},
		{"empty", "", "", "x.toml: cannot tell the role of the file (the file is empty)"},
		{"two roles", "[relay]\n[agent]\n", "", "x.toml: the file has [relay] and [agent] tables: a file configures one role"},
		{"syntax error", "[relay\n", "", "x.toml:2:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"x.toml": tc.toml})
			role, _, err := Check(filepath.Join(dir, "x.toml"))
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
	if _, _, err := Check(filepath.Join(t.TempDir(), "missing.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Check(missing) = %v, want fs.ErrNotExist", err)
	}
}
