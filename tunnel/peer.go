package tunnel

import (
	"crypto/x509"

	"github.com/quic-go/quic-go"
)

// clientIdentity returns the identity of a client that passed the server's
// handshake. With strict credentials the handshake verified the chain and
// the identity. With Insecure credentials nothing was verified, so the
// chain is checked here: an unverified certificate gives no identity (a
// self-made certificate must not claim another tenant), and the caller
// decides what an anonymous client may do.
func (c *Credentials) clientIdentity(certs []*x509.Certificate) Identity {
	if len(certs) == 0 {
		return Identity{}
	}
	if c.cfg.Insecure {
		if c.active.Load().trust.verifyChain(certs, c.now(), x509.ExtKeyUsageClientAuth, "") != nil {
			return Identity{}
		}
	}
	id, err := IdentityFromCert(certs[0])
	if err != nil {
		return Identity{}
	}
	return id
}

// serverIdentity returns the identity a server's certificate carries, or
// zero. The handshake verified the chain.
func serverIdentity(conn *quic.Conn) Identity {
	certs := conn.ConnectionState().TLS.PeerCertificates
	if len(certs) == 0 {
		return Identity{}
	}
	id, err := IdentityFromCert(certs[0])
	if err != nil {
		return Identity{}
	}
	return id
}
