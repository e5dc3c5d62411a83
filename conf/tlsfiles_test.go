package conf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned returns a PEM certificate and its PEM key.
func selfSigned(t *testing.T) (string, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}))
}

// TestCheckTLSFiles: ztgate check looks inside the TLS files and names
// what the role would fail to load at start (a key of another certificate,
// cert and key swapped, a key for a CA), where it said "valid".
func TestCheckTLSFiles(t *testing.T) {
	crt, key := selfSigned(t)
	otherCrt, otherKey := selfSigned(t)
	files := map[string]string{"a.crt": crt, "a.key": key, "b.crt": otherCrt, "b.key": otherKey, "junk": "not pem\n"}
	relay := func(cert, key, ca string) string {
		return "[relay]\nname = \"r\"\nstate_dir = \"st\"\ncert = \"" + cert + "\"\nkey = \"" + key + "\"\nca = \"" + ca + "\"\n"
	}
	for _, tc := range []struct {
		name, toml, want string // want "" : valid
	}{
		{"valid", relay("a.crt", "a.key", "b.crt"), ""},
		{"a CA file of two certificates", relay("a.crt", "a.key", "cas.crt"), ""},
		{"key of another certificate", relay("a.crt", "b.key", "b.crt"),
			`x.toml:5: relay.key: "b.key" is not the private key of the certificate in "a.crt" (relay.cert)`},
		{"swapped", relay("a.key", "a.crt", "b.crt"),
			`x.toml:4: relay.cert: "a.key" holds a private key, not a PEM certificate (are cert and key swapped?)`},
		{"certificate as key", relay("a.crt", "a.crt", "b.crt"),
			`x.toml:5: relay.key: "a.crt" holds a certificate, not a PEM private key`},
		{"key as CA", relay("a.crt", "a.key", "b.key"),
			`x.toml:6: relay.ca: "b.key" holds a private key, not the CA's PEM certificates`},
		{"junk certificate", relay("junk", "a.key", "b.crt"),
			`x.toml:4: relay.cert: "junk" holds no PEM data, not a PEM certificate`},
		{"agent", "[agent]\n[tunnel]\nserver = \"r:1\"\ncert = \"b.crt\"\nkey = \"a.key\"\nca = \"a.crt\"\n",
			`x.toml:5: tunnel.key: "a.key" is not the private key of the certificate in "b.crt" (tunnel.cert)`},
		{"gateway", "[gateway]\n[tunnel]\nrelay = \"r:1\"\ncert = \"a.crt\"\nkey = \"a.key\"\nca = \"junk\"\n",
			`x.toml:6: tunnel.ca: "junk" holds no PEM data, not the CA's PEM certificates`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := map[string]string{"x.toml": tc.toml, "cas.crt": crt + otherCrt}
			for k, v := range files {
				fs[k] = v
			}
			dir := writeFiles(t, fs)
			_, _, err := Check(filepath.Join(dir, "x.toml"))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("error %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}
