package tunnel

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/quic-go/quic-go"

	"github.com/ztgate/ztgate/catalog"
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

// ResetKeyFile is the file in the state directory dir that keeps a role's
// listener's stateless-reset key (ListenConfig.ResetKeyFile); "" without
// a state directory.
func ResetKeyFile(dir string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, "stateless-reset.key")
}

// resetKey returns the key of a listener's stateless resets: the one kept
// in file when it is set (made there at the first start), else, or when
// file cannot be used, the one derived from the certificate's key. A key
// derived from the certificate changes when the certificate's key is
// rotated (SIGHUP); a crash after a rotation then left the peers waiting
// for their idle timeout, as their reset tokens came from the key before.
func resetKey(file string, c *Credentials, log *slog.Logger) *quic.StatelessResetKey {
	if file == "" {
		return c.statelessResetKey()
	}
	k, err := loadResetKey(file)
	if err != nil {
		log.Warn("stateless reset key: using one derived from the certificate's key", "file", file, "err", err)
		return c.statelessResetKey()
	}
	return k
}

// loadResetKey reads the 32-byte key in file, or makes one and writes it
// there (owner-only, with catalog.WriteFileAtomic, so that a crash leaves
// no half key) when there is none. A file of another length is made anew.
func loadResetKey(file string) (*quic.StatelessResetKey, error) {
	var k quic.StatelessResetKey
	b, err := os.ReadFile(file)
	if err == nil && len(b) == len(k) {
		copy(k[:], b)
		return &k, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read: %w", err)
	}
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	if _, err := catalog.WriteFileAtomic(file, k[:], 0o600); err != nil {
		return nil, err
	}
	return &k, nil
}
