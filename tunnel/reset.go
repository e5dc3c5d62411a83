package tunnel

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"

	"github.com/quic-go/quic-go"
)

// statelessResetKey derives the key of a listener's stateless resets from
// the private key of its certificate, so that it is the same after a
// crash and a restart: the peers' packets to connections the new process
// never knew are then answered with a stateless reset, and the peers
// redial at once instead of waiting for their idle timeout (a SIGKILLed
// relay would otherwise leave its gateways and agents 30 s in the dark).
// Nil, and no resets, when the key cannot be marshalled.
func (c *Credentials) statelessResetKey() *quic.StatelessResetKey {
	der, err := x509.MarshalPKCS8PrivateKey(c.active.Load().cert.PrivateKey)
	if err != nil {
		return nil
	}
	mac := hmac.New(sha256.New, der)
	mac.Write([]byte("ztgate tunnel stateless reset key v1"))
	var k quic.StatelessResetKey
	copy(k[:], mac.Sum(nil))
	return &k
}
