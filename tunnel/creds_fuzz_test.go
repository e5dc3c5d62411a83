package tunnel

import (
	"bytes"
	"log/slog"
	"testing"
	"time"
)

// FuzzLoadCredentials feeds arbitrary certificate, key and CA files (and
// a CA key for the CA a `ztgate pki` command loads) to what a relay,
// gateway or agent parses and checks at start and at each reload, as
// Credentials.load and LoadCA do after reading the files. Whatever the
// bytes, each either fails with an error or yields credentials with a
// leaf certificate, a key and at least one CA; none panics or hangs (the
// chain checks are bounded by maxSignatureChecks).
func FuzzLoadCredentials(f *testing.F) {
	ca, err := NewCA("fuzz CA", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	crt, key, err := ca.Issue(IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
	if err != nil {
		f.Fatal(err)
	}
	other, err := NewCA("other CA", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	bundle := append(append([]byte(nil), ca.CertPEM()...), other.CertPEM()...)
	f.Add(crt, key, ca.CertPEM(), ca.KeyPEM())
	f.Add(crt, key, bundle, other.KeyPEM())
	f.Add(append(crt, ca.CertPEM()...), key, bundle, ca.KeyPEM())
	f.Add(crt[:len(crt)/2], key, ca.CertPEM()[:len(ca.CertPEM())-3], key)
	f.Add(ca.CertPEM(), ca.KeyPEM(), ca.CertPEM(), crt)
	f.Add(key, crt, []byte("# comment\n"), []byte{})
	files := Files{Cert: "cert.pem", Key: "key.pem", CA: "ca.pem"}
	f.Fuzz(func(t *testing.T, certPEM, keyPEM, caPEM, caKeyPEM []byte) {
		trust, terr := parseTrust(caPEM)
		if terr == nil && len(trust.roots) == 0 {
			t.Fatal("a CA file loaded without a CA")
		}
		pair, perr := keyPair(certPEM, keyPEM)
		if perr == nil && terr == nil {
			for _, role := range []string{"", RoleAgent, RoleRelay} {
				c := &Credentials{cfg: CredentialsConfig{Role: role}, log: slog.New(slog.DiscardHandler)}
				st, err := c.checked(files, pair, trust)
				if err != nil {
					continue
				}
				if st.cert.Leaf == nil || st.cert.PrivateKey == nil {
					t.Fatalf("role %q: credentials loaded without a leaf or a key", role)
				}
				if !bytes.Contains(certPEM, []byte("CERTIFICATE")) {
					t.Fatalf("role %q: credentials loaded from a certificate file without a CERTIFICATE block", role)
				}
			}
		}
		if key, err := parseKey(caKeyPEM); err == nil {
			if loaded, err := caOfKey(caPEM, key, caKeyPEM); err == nil && loaded.Certificate() == nil {
				t.Fatal("a CA loaded without its certificate")
			}
		}
	})
}
