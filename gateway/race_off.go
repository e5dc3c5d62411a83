//go:build !race

package gateway

// raceBuild: built with the race detector (race_on.go).
const raceBuild = false
