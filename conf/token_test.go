package conf

import (
	"path/filepath"
	"testing"
)

// TestTokenFileEmpty: configuration.md says of api.token_file "The file must
// be readable and not empty", and the API refuses to start with an empty
// one (adminapi.readToken); `ztgate check` must say so instead of calling
// the file valid. Every role's [api] takes the key.
func TestTokenFileEmpty(t *testing.T) {
	dir := writeFiles(t, map[string]string{"empty": "", "blank": " \n\t\n", "token": "s3cret\n", "c": "c", "k": "k", "ca": "a"})
	for _, tc := range []struct {
		name, role, token string
		wantErr           bool
	}{
		{"gateway empty", "gateway", "empty", true},
		{"gateway white space only", "gateway", "blank", true},
		{"gateway token", "gateway", "token", false},
		{"relay empty", "relay", "empty", true},
		{"agent empty", "agent", "empty", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := "[api]\ntoken_file = \"" + tc.token + "\"\n"
			name := filepath.Join(dir, tc.role+".toml")
			var err error
			switch tc.role {
			case "gateway":
				_, err = ParseGateway(name, []byte("[gateway]\nname = \"gw1\"\n"+api))
			case "relay":
				_, err = ParseRelay(name, []byte("[relay]\nname = \"r1\"\ncert = \"c\"\nkey = \"k\"\nca = \"ca\"\n"+api))
			case "agent":
				_, err = ParseAgent(name, []byte("[agent]\nname = \"a1\"\n[tunnel]\nserver = \"relay.example.net:4433\"\ncert = \"c\"\nkey = \"k\"\nca = \"ca\"\n"+api))
			}
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			wantErrors(t, err, []string{"api.token_file: "})
		})
	}
}
