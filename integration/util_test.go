package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
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

// gatewayEnv prefixes the gateway's command with `env` settings taken from
// ZTGATE_GATEWAY_ENV (performance experiments, e.g. GOMAXPROCS=1).
func gatewayEnv() []string {
	v := os.Getenv("ZTGATE_GATEWAY_ENV")
	if v == "" {
		return nil
	}
	return append([]string{"env"}, strings.Fields(v)...)
}

// profiled prefixes a role's command so that it serves Go's profiles on
// 127.0.0.1:6060 of its namespace when ZTGATE_BENCH_PROFILE is set.
func profiled(args ...string) []string {
	if os.Getenv("ZTGATE_BENCH_PROFILE") == "" {
		return args
	}
	return append([]string{"env", "ZTGATE_PPROF=127.0.0.1:6060"}, args...)
}
