package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"os/exec"
)

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// runLocal runs a command in the root namespace (only for commands that
// send nothing, such as `ztgate pki`).
func runLocal(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
