package conf

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// credentials resolves and checks the TLS files of a QUIC peer. needCertKey
// and needCA say which of them must be named; every named file must be
// readable.
func (v *validator) credentials(path, cert, key, ca string, needCertKey, needCA bool) (string, string, string) {
	files := []struct {
		key, val string
		need     bool
	}{{"cert", cert, needCertKey}, {"key", key, needCertKey}, {"ca", ca, needCA}}
	for _, f := range files {
		if f.val == "" && f.need {
			hint := ""
			if f.key == "ca" {
				hint = " (or set insecure_allow_unauthenticated = true for development)"
			}
			v.addf(join(path, f.key), "required%s", hint)
		}
	}
	errs := len(v.errs)
	certAbs, keyAbs, caAbs := v.file(join(path, "cert"), cert), v.file(join(path, "key"), key), v.file(join(path, "ca"), ca)
	if v.tlsContent && len(v.errs) == errs { // every named file is readable: look inside
		v.tlsFiles(path, cert, key, ca, certAbs, keyAbs, caAbs)
	}
	return certAbs, keyAbs, caAbs
}

// tlsFiles checks what the TLS files hold, as the role would load them at
// start: a certificate and the private key of it, and CA certificates. The
// messages name the files as configured; the validity dates are not checked
// here (the role warns at start: a certificate renewed later must not make
// a reload of the rest fail).
func (v *validator) tlsFiles(path, cert, key, ca, certAbs, keyAbs, caAbs string) {
	if certAbs != "" && keyAbs != "" {
		certPEM, err1 := os.ReadFile(certAbs)
		keyPEM, err2 := os.ReadFile(keyAbs)
		if err1 == nil && err2 == nil {
			v.keyPair(path, cert, key, certPEM, keyPEM)
		}
	}
	if caAbs != "" {
		if caPEM, err := os.ReadFile(caAbs); err == nil {
			if what, ok := pemCertificates(caPEM); !ok {
				v.addf(join(path, "ca"), "%q holds %s, not the CA's PEM certificates", ca, what)
			}
		}
	}
}

// keyPair checks that certPEM holds a certificate and keyPEM its key.
func (v *validator) keyPair(path, cert, key string, certPEM, keyPEM []byte) {
	what, ok := pemCertificates(certPEM)
	if !ok {
		hint := ""
		if what == "a private key" {
			hint = " (are cert and key swapped?)"
		}
		v.addf(join(path, "cert"), "%q holds %s, not a PEM certificate%s", cert, what, hint)
		return
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		switch what := pemHolds(keyPEM); {
		case what != "a private key":
			v.addf(join(path, "key"), "%q holds %s, not a PEM private key", key, what)
		case strings.Contains(err.Error(), "does not match"):
			v.addf(join(path, "key"), "%q is not the private key of the certificate in %q (%s)", key, cert, join(path, "cert"))
		default:
			v.addf(join(path, "key"), "%q: %v", key, strings.TrimPrefix(err.Error(), "tls: "))
		}
	}
}

// pemCertificates reports whether data holds PEM certificates, all of them
// parseable, and else what it holds.
func pemCertificates(data []byte) (string, bool) {
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Sprintf("a certificate that does not parse (%v)", err), false
		}
		n++
	}
	if n == 0 {
		return pemHolds(data), false
	}
	return "", true
}

// pemHolds names what PEM data holds, for a message.
func pemHolds(data []byte) string {
	b, _ := pem.Decode(data)
	switch {
	case b == nil:
		return "no PEM data"
	case b.Type == "CERTIFICATE":
		return "a certificate"
	case strings.HasSuffix(b.Type, "PRIVATE KEY"):
		return "a private key"
	}
	return fmt.Sprintf("a PEM %q block", b.Type)
}

// serverName returns the TLS name to verify: the configured one, else the
// host part of the peer address.
func (v *validator) serverName(path, name, host string) string {
	if name == "" {
		return host
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return name
	}
	if err := checkHostName(name); err != nil {
		v.add(path, err)
	}
	return name
}

// gatewayTunnel validates a gateway's [tunnel] section.
func (v *validator) gatewayTunnel(r *rawTunnel) Tunnel {
	if r == nil {
		return Tunnel{}
	}
	t := Tunnel{Listen: r.Listen, Relay: r.Relay, Insecure: r.Insecure}
	if r.Listen != "" {
		v.hostPort("tunnel.listen", r.Listen, true)
	}
	var host string
	if r.Relay != "" {
		host, _ = v.hostPort("tunnel.relay", r.Relay, false)
	}
	t.ServerName = v.serverName("tunnel.server_name", r.ServerName, host)
	active := r.Listen != "" || r.Relay != ""
	t.Cert, t.Key, t.CA = v.credentials("tunnel", r.Cert, r.Key, r.CA, active, active && !r.Insecure)
	return t
}

// agentTunnel validates an agent's [tunnel] section. With
// insecure_allow_unauthenticated the agent may connect without a client
// certificate and without verifying the server, so no file is required.
func (v *validator) agentTunnel(r *rawAgentTunnel) Tunnel {
	if r == nil {
		r = &rawAgentTunnel{}
	}
	t := Tunnel{Server: r.Server, Insecure: r.Insecure}
	var host string
	if r.Server == "" {
		v.addf("tunnel.server", "required: the relay or gateway to connect to, host:port")
	} else {
		host, _ = v.hostPort("tunnel.server", r.Server, false)
	}
	t.ServerName = v.serverName("tunnel.server_name", r.ServerName, host)
	t.Cert, t.Key, t.CA = v.credentials("tunnel", r.Cert, r.Key, r.CA, !r.Insecure, !r.Insecure)
	return t
}
