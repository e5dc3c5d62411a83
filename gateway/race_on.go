//go:build race

package gateway

// raceBuild: built with the race detector, as the tests are. It makes
// sync.Pool drop objects at random, so allocation counts mean nothing, and
// the tunnel link checks checksums (tunnelside.go).
const raceBuild = true
