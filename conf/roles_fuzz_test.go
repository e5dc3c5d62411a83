package conf

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseRelay and FuzzParseAgent check that parsing a relay's or an
// agent's configuration never panics, reports failures as Errors, and
// that what parses is a configuration the role can start from.

func FuzzParseRelay(f *testing.F) {
	dir := fuzzPKI(f)
	addExample(f, "relay.toml")
	f.Add([]byte("[relay]\nlisten = \"[::]:4433\"\npool = \"10.100.0.0/29\"\npool6 = \"fd00::/120\"\ncert = \"pki/relay.crt\"\nkey = \"pki/relay.key\"\nca = \"pki/ca.crt\"\n[[pin]]\nservice = \"web\"\nvip = \"10.100.0.2\"\n"))
	f.Add([]byte("[relay]\ninsecure_allow_unauthenticated = true\n[api]\nlisten = \"off\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRelay(filepath.Join(dir, "relay.toml"), data)
		if err != nil {
			checkErrors(t, err)
			return
		}
		if r.Listen == "" || !r.Pool.IsValid() || r.Zone == "" || (r.CA == "" && !r.Insecure) {
			t.Fatalf("parsed relay lacks a listener, pool, zone or CA: %+v", r)
		}
	})
}

func FuzzParseAgent(f *testing.F) {
	dir := fuzzPKI(f)
	addExample(f, "agent.toml")
	f.Add([]byte("[tunnel]\nserver = \"[2001:db8::1]:4433\"\ninsecure_allow_unauthenticated = true\n[tun]\naddress = \"100.64.0.9\"\nmtu = 576\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ParseAgent(filepath.Join(dir, "agent.toml"), data)
		if err != nil {
			checkErrors(t, err)
			return
		}
		if a.Tunnel.Server == "" || !a.TUN.Address.Is4() || a.TUN.MTU < 576 {
			t.Fatalf("parsed agent lacks a server, an IPv4 inner address or a usable MTU: %+v", a)
		}
	})
}

// fuzzPKI returns a directory holding the credential files the examples
// and the seeds name: pki/ca.crt and pki/<role>.crt and .key. The parsers
// only check that these files can be read; without them no configuration
// that needs credentials would parse, and the checks on what parses would
// never run.
func fuzzPKI(f *testing.F) string {
	files := map[string]string{"pki/ca.crt": "ca"}
	for _, role := range []string{"gateway", "relay", "agent"} {
		files["pki/"+role+".crt"], files["pki/"+role+".key"] = "cert", "key"
	}
	return writeFiles(f, files)
}

// addExample seeds a fuzz target with a configuration of examples/.
func addExample(f *testing.F, name string) {
	data, err := os.ReadFile(filepath.Join("..", "examples", name))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
}

// checkErrors fails unless err is a non-empty Errors.
func checkErrors(t *testing.T, err error) {
	t.Helper()
	var errs Errors
	if !errors.As(err, &errs) || len(errs) == 0 {
		t.Fatalf("error %T %v is not a list of Errors", err, err)
	}
}
