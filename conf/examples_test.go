package conf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// exampleFile is an example configuration and the files of examples/pki/ it
// names; `make pki` creates them.
type exampleFile struct {
	file string
	role Role
	pki  []string
}

var exampleFiles = []exampleFile{
	{"gateway.toml", RoleGateway, nil},
	{"gateway-relay.toml", RoleGateway, []string{"gateway.crt", "gateway.key", "ca.crt"}},
	{"relay.toml", RoleRelay, []string{"relay.crt", "relay.key", "ca.crt"}},
	{"agent.toml", RoleAgent, []string{"agent.crt", "agent.key", "ca.crt"}},
}

// TestExamples checks every example configuration in a copy of examples/:
// with a PKI in its pki/ directory (what `make pki` makes) each passes Check
// without any error; without one, each missing file is named with its path.
func TestExamples(t *testing.T) {
	src, err := filepath.Abs("../examples")
	if err != nil {
		t.Fatal(err)
	}
	tomls, err := filepath.Glob(filepath.Join(src, "*.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range tomls {
		if !slices.ContainsFunc(exampleFiles, func(e exampleFile) bool { return e.file == filepath.Base(p) }) {
			t.Errorf("examples/%s is not in exampleFiles: add it with its role and PKI files", filepath.Base(p))
		}
	}
	bare := copyExamples(t, src)
	withPKI := copyExamples(t, src)
	writeExamplePKI(t, filepath.Join(withPKI, "pki"), "relay", "gateway", "agent")

	for _, tc := range exampleFiles {
		t.Run(tc.file+" with its PKI", func(t *testing.T) {
			role, _, err := Check(filepath.Join(withPKI, tc.file))
			if role != tc.role {
				t.Errorf("role = %q, want %q", role, tc.role)
			}
			if err != nil {
				t.Errorf("Check: %v", err)
			}
		})
		t.Run(tc.file+" without its PKI", func(t *testing.T) {
			_, _, err := Check(filepath.Join(bare, tc.file))
			var errs Errors
			errors.As(err, &errs)
			if len(errs) != len(tc.pki) {
				t.Errorf("%d errors, want one per missing PKI file (%d):\n%v", len(errs), len(tc.pki), err)
			}
			for _, f := range tc.pki {
				p := filepath.Join(bare, "pki", f)
				if !slices.ContainsFunc(errs, func(e error) bool {
					return errors.Is(e, fs.ErrNotExist) && strings.Contains(e.Error(), "("+p+")")
				}) {
					t.Errorf("the missing %s is not reported clearly; errors:\n%v", p, err)
				}
			}
		})
	}
}

// copyExamples copies the example configurations into a new directory.
func copyExamples(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, e := range exampleFiles {
		data, err := os.ReadFile(filepath.Join(src, e.file))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.file), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// writeExamplePKI makes a CA (ca.crt) and, for each name, a key and a
// certificate it signed (NAME.key, NAME.crt), as `ztgate pki` lays them out.
func writeExamplePKI(t *testing.T, dir string, names ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	caKey := newTestKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "example CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "ca.crt"), "CERTIFICATE", caDER)
	for i, name := range names {
		key := newTestKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: name},
			NotBefore: caTmpl.NotBefore, NotAfter: caTmpl.NotAfter,
			URIs:        []*url.URL{{Scheme: "ztna", Host: "example", Path: "/" + name + "/" + name}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, filepath.Join(dir, name+".crt"), "CERTIFICATE", der)
		writePEM(t, filepath.Join(dir, name+".key"), "PRIVATE KEY", keyDER)
	}
}

func newTestKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
