package tunnel

import (
	"bytes"
	"strings"
	"testing"
)

// cutInLastBlock returns b cut in the middle of its last PEM block, as a
// file read while it is being written: the blocks before are whole.
func cutInLastBlock(b []byte) []byte {
	end := bytes.LastIndex(b, []byte("-----END"))
	start := bytes.LastIndex(b[:end], []byte("-----BEGIN"))
	return b[:start+(end-start)/2]
}

// TestReloadCutPEMFile: a CA bundle or a certificate chain whose last
// block is cut short (a file read while a tool writes it in place) fails
// to load, naming the file, and the credentials in use stay. Before, the
// blocks before the cut loaded without a word: a CA of the bundle, or a
// certificate of the chain, was silently dropped, and its peers refused.
// Found by TestCredsRotationRandom.
func TestReloadCutPEMFile(t *testing.T) {
	f := newTLSFixture(t)
	bundle := append(append([]byte(nil), f.ca.CertPEM()...), f.other.CertPEM()...)
	leafPEM, keyPEM, err := f.ca.Issue(IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "relay-chain",
		DNSNames: []string{serverName}, IPs: loopbackIPs()})
	if err != nil {
		t.Fatal(err)
	}
	chain := append(append([]byte(nil), leafPEM...), f.ca.CertPEM()...)
	garbled := append(append([]byte(nil), cutInLastBlock(f.other.CertPEM())...), f.ca.CertPEM()...)
	tests := []struct {
		name      string
		cert, ca  []byte // the new contents
		faultCert bool   // the error names the certificate file, else the CA file
	}{
		{"CA bundle cut in its last block", leafPEM, cutInLastBlock(bundle), false},
		{"CA block cut short before a whole one", leafPEM, garbled, false},
		{"certificate chain cut in its last block", cutInLastBlock(chain), f.ca.CertPEM(), true},
		{"CA bundle cut in the last block's first line", leafPEM, bundle[:len(f.ca.CertPEM())+len("-----BEG")], false},
		{"certificate chain cut in the last block's first line", chain[:len(leafPEM)+len("-----")], f.ca.CertPEM(), true},
		// Cut after one to four of the marker's dashes (found by
		// TestCredsRotationRandom, seed 3235591810503033328).
		{"CA bundle cut after one dash of the last block", leafPEM, bundle[:len(f.ca.CertPEM())+1], false},
		{"CA bundle cut after four dashes of the last block", leafPEM, bundle[:len(f.ca.CertPEM())+4], false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certFile, keyFile := f.relayFiles("relay1")
			caFile := f.write("ca.crt", f.ca.CertPEM())
			c := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile, Role: RoleRelay})
			before := c.Certificate()
			replace(t, certFile, tc.cert)
			replace(t, keyFile, keyPEM)
			replace(t, caFile, tc.ca)
			fault := caFile
			if tc.faultCert {
				fault = certFile
			}
			err := c.Reload()
			if err == nil || !strings.Contains(err.Error(), fault) || !strings.Contains(err.Error(), "cut short") {
				t.Fatalf("Reload: %v; want an error naming %s, cut short", err, fault)
			}
			if c.Certificate() != before {
				t.Fatal("a failed reload changed the certificate")
			}
			if _, err := NewCredentials(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile, Role: RoleRelay}, nil); err == nil {
				t.Fatal("NewCredentials loaded what Reload refused")
			}
		})
	}
}

// TestPEMCommentsLoad: text that is no PEM marker before, between and
// after the blocks of a CA bundle (the comments some distributions write)
// does not make it read as cut short.
func TestPEMCommentsLoad(t *testing.T) {
	f := newTLSFixture(t)
	bundle := []byte("# ztgate CA\n")
	bundle = append(bundle, f.ca.CertPEM()...)
	bundle = append(bundle, "\n# foreign CA\nSubject: CN=foreign CA\n"...)
	bundle = append(bundle, f.other.CertPEM()...)
	bundle = append(bundle, "\n# end of bundle\n"...)
	certFile, keyFile := f.relayFiles("relay1")
	if _, err := NewCredentials(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: f.write("ca.crt", bundle), Role: RoleRelay}, nil); err != nil {
		t.Fatalf("a bundle with comments: %v", err)
	}
}
